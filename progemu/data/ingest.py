"""Turn any chest X-ray file (PNG, JPEG, DICOM) into a normalised grayscale array.

``load_image(path, IngestOptions(size=512))`` returns a float32 ``(S, S)`` array in ``[0, 1]`` (0 = black,
i.e. air is dark whatever the source polarity). Models take ``pixel_values`` in ``[-1, 1]``:
``to_pixel_values`` / ``from_pixel_values`` convert.

Resize choice: the long side is scaled to ``size`` and the short side is **padded** (centred, black) by
default, so nothing of the image is lost (costophrenic angles sit near the borders of a chest X-ray).
``resize="crop"`` instead scales the short side to ``size`` and centre-crops the long side.

Intensity: 8-bit sources are divided by 255, 16-bit sources by 65535 (the full dynamic range is kept:
no 8-bit quantisation anywhere). DICOM goes through pydicom's modality LUT (rescale slope/intercept) and
VOI LUT or window, then is mapped to ``[0, 1]`` from the VOI output range (or the image's min/max when the
file has no VOI), and MONOCHROME1 is inverted. ``percentiles=(lo, hi)`` optionally stretches the
``lo``-th..``hi``-th percentiles to ``[0, 1]`` (clipping the rest).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from progemu.errors import IngestError

if TYPE_CHECKING:
    import torch

    from progemu.data.registration import register_affine  # noqa: F401  (re-exported lazily below)

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
# Pillow modes we know how to turn into one gray channel.
_PIL_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBX", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
# pip packages that decode each compressed DICOM transfer syntax pydicom cannot decode by itself.
_DICOM_PLUGINS = {
    "JPEG": "`pip install pylibjpeg pylibjpeg-libjpeg` or `pip install python-gdcm`",
    "JPEG-LS": "`pip install pylibjpeg pylibjpeg-libjpeg`, `pip install pyjpegls` or `pip install python-gdcm`",
    "JPEG 2000": "`pip install pylibjpeg pylibjpeg-openjpeg` or `pip install python-gdcm`",
    "High-Throughput JPEG 2000": "`pip install pylibjpeg pylibjpeg-openjpeg`",
}


@dataclass(frozen=True)
class IngestOptions:
    """How ``load_image`` normalises an image.

    size: output side S (square); ``None`` keeps the native ``(H, W)``.
    resize: ``"pad"`` (default: aspect kept, whole image, black bars) or ``"crop"`` (aspect kept, centre crop).
    out_range: the intensity range of the output (``(0, 1)`` by default).
    percentiles: optional ``(lo, hi)`` percentile stretch, e.g. ``(0.5, 99.5)``; ``(0, 100)`` = min-max.
    max_pixels: refuse images with more pixels than this (decompression bombs); chest X-rays are < 20 MP.
    """

    size: int | None = 512
    resize: Literal["pad", "crop"] = "pad"
    out_range: tuple[float, float] = (0.0, 1.0)
    percentiles: tuple[float, float] | None = None
    max_pixels: int = 64_000_000

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 1:
            raise ValueError(f"IngestOptions.size must be >= 1, got {self.size}")
        if self.resize not in ("pad", "crop"):
            raise ValueError(f"IngestOptions.resize must be 'pad' or 'crop', got {self.resize!r}")
        if self.percentiles is not None and not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(f"IngestOptions.percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")


def is_dicom(path: Path) -> bool:
    """A DICOM file by suffix or by its 'DICM' magic at byte 128."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def load_image(path: str | Path, options: IngestOptions | None = None) -> np.ndarray:
    """Read a PNG/JPEG/DICOM chest X-ray as float32 ``(S, S)`` in ``options.out_range`` (default [0, 1]).

    Raises ``IngestError(path, reason)`` for missing, empty, unreadable, truncated, multi-frame, zero-size,
    over-limit or unsupported-mode files and DICOM without pixel data or without a decoder plugin.
    """
    options = options or IngestOptions()
    path = Path(path)
    if not path.is_file():
        raise IngestError(path, "file not found")
    if path.stat().st_size == 0:
        raise IngestError(path, "empty file (0 bytes)")
    arr = _read_dicom(path, options) if is_dicom(path) else _read_pil(path, options)
    if not np.all(np.isfinite(arr)):
        raise IngestError(path, "pixel values contain NaN or infinity")
    return finish(arr, options)


def finish(arr: np.ndarray, options: IngestOptions) -> np.ndarray:
    """Percentile stretch, resize and range mapping of a gray ``(H, W)`` array already in [0, 1]."""
    arr = arr.astype(np.float32, copy=False)
    if options.percentiles is not None:
        lo, hi = np.percentile(arr, options.percentiles)
        arr = _rescale(arr, float(lo), float(hi))
    if options.size is not None:
        arr = _resize_square(arr, options.size, options.resize)
    lo, hi = options.out_range
    if (lo, hi) != (0.0, 1.0):
        arr = arr * (hi - lo) + lo
    return np.ascontiguousarray(arr, dtype=np.float32)


def _rescale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] to [0, 1] and clip; a constant image becomes 0."""
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _resize_square(arr: np.ndarray, size: int, mode: str) -> np.ndarray:
    h, w = arr.shape
    scale = size / max(h, w) if mode == "pad" else size / min(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        # Pillow's float ("F") resampling antialiases when shrinking; Lanczos overshoot is clipped.
        arr = np.asarray(Image.fromarray(arr, mode="F").resize((nw, nh), Image.Resampling.LANCZOS))
        arr = np.clip(arr, 0.0, 1.0)
    out = np.zeros((size, size), dtype=np.float32)
    if mode == "pad":
        top, left = (size - nh) // 2, (size - nw) // 2
        out[top : top + nh, left : left + nw] = arr
    else:
        top, left = (nh - size) // 2, (nw - size) // 2
        out[:] = arr[top : top + size, left : left + size]
    return out


# ----------------------------------------------------------------------------------------------- PIL
def _read_pil(path: Path, options: IngestOptions) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            im = Image.open(path)
    except Image.DecompressionBombError as err:
        raise IngestError(path, f"image exceeds the pixel limit (decompression bomb?): {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        if (wh := _png_header_size(path)) is not None and 0 in wh:  # Pillow refuses these without saying why
            raise IngestError(path, f"zero-size image ({wh[0]}x{wh[1]})") from err
        raise IngestError(path, f"unreadable image file ({err})") from err
    with im:
        w, h = im.size
        if w == 0 or h == 0:
            raise IngestError(path, f"zero-size image ({w}x{h})")
        if w * h > options.max_pixels:
            raise IngestError(path, f"image has {w}x{h} = {w * h} pixels, above the limit of {options.max_pixels}")
        if getattr(im, "n_frames", 1) > 1:
            raise IngestError(path, f"multi-frame image ({im.n_frames} frames); one 2-D image expected")
        if im.mode not in _PIL_MODES:
            raise IngestError(path, f"unsupported image mode {im.mode!r}")
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise IngestError(path, f"truncated or corrupt image data ({err})") from err
        return _pil_to_gray(im, path)


def _png_header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _pil_to_gray(im: Image.Image, path: Path) -> np.ndarray:
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA")  # the palette may carry transparency
        mode = "RGBA"
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0
    if mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if mode == "I" and a.min() >= 0 and a.max() <= 65535:  # 16-bit data that Pillow widened to int32
            return (a / 65535.0).astype(np.float32)
        if mode == "F" and a.min() >= 0 and a.max() <= 1:
            return a.astype(np.float32)
        return _rescale(a, float(a.min()), float(a.max()))
    a = np.asarray(im).astype(np.float32) / 255.0
    if mode == "L":
        return a
    if mode == "La":  # already premultiplied by alpha
        return a[..., 0]
    if mode == "LA":
        return a[..., 0] * a[..., 1]  # composite over black: transparent = background
    gray = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114  # ITU-R 601 luma, as Pillow's "L"
    if mode == "RGBA":
        gray = gray * a[..., 3]
    return gray.astype(np.float32)


# --------------------------------------------------------------------------------------------- DICOM
def _read_dicom(path: Path, options: IngestOptions) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # a damaged header can surface as almost any exception type
        raise IngestError(path, f"unreadable or truncated DICOM file ({type(err).__name__}: {err})") from err
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise IngestError(path, "DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows == 0 or cols == 0:
        raise IngestError(path, f"zero-size DICOM image ({cols}x{rows})")
    if rows * cols > options.max_pixels:
        raise IngestError(path, f"image has {cols}x{rows} = {rows * cols} pixels, above the limit of {options.max_pixels}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise IngestError(path, f"multi-frame DICOM ({frames} frames); one 2-D image expected")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    supported = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR") + ("YBR_FULL", "YBR_FULL_422")
    if photometric not in supported:
        raise IngestError(path, f"unsupported DICOM photometric interpretation {photometric!r}")
    _check_decoder(ds, path)
    try:
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises many types for bad/truncated pixel data
        raise IngestError(path, f"cannot decode DICOM pixel data, truncated or corrupt ({err})") from err
    if arr.size == 0:
        raise IngestError(path, "zero-size DICOM image")
    if photometric.startswith("MONOCHROME"):
        if arr.ndim != 2:
            raise IngestError(path, f"expected one 2-D grayscale frame, got an array of shape {arr.shape}")
        gray = _dicom_gray(arr, ds, path)
        inverse = str(ds.get("PresentationLUTShape", "IDENTITY")).upper() == "INVERSE"
        # MONOCHROME1: the lowest value is displayed white; flip so 0 = black like MONOCHROME2.
        return 1.0 - gray if (photometric == "MONOCHROME1") != inverse else gray
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise IngestError(path, f"expected one 2-D colour frame, got an array of shape {arr.shape}")
    top = float(2 ** int(ds.get("BitsStored", 8)) - 1) if photometric != "PALETTE COLOR" else float(arr.max() or 1)
    a = arr.astype(np.float32) / max(top, 1.0)
    return np.clip(a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114, 0.0, 1.0)


def _check_decoder(ds, path: Path) -> None:
    """Compressed pixel data without an installed decoder plugin: say which package to install."""
    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsuid is None or not tsuid.is_encapsulated:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError as err:
        raise IngestError(path, f"no pixel-data decoder exists for transfer syntax {tsuid.name} ({tsuid})") from err
    if decoder.is_available:
        return
    name = tsuid.name
    family = next((k for k in ("High-Throughput JPEG 2000", "JPEG 2000", "JPEG-LS", "JPEG") if k in name), None)
    plugins = _DICOM_PLUGINS.get(family or "", "; ".join(decoder.missing_dependencies))
    raise IngestError(path, f"compressed transfer syntax {name} ({tsuid}) needs a decoder plugin that is not "
                            f"installed; install one: {plugins}")


def _dicom_gray(arr: np.ndarray, ds, path: Path) -> np.ndarray:
    """Modality LUT (rescale), then VOI LUT or window, then [0, 1] from the VOI output range."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        values = apply_modality_lut(arr, ds)
        has_lut = bool(ds.get("VOILUTSequence"))
        has_window = "WindowCenter" in ds and "WindowWidth" in ds
        values = apply_voi_lut(values, ds)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise IngestError(path, f"invalid DICOM LUT or window ({err})") from err
    values = np.asarray(values, dtype=np.float64)
    if has_lut:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, float(2**bits - 1)
    elif has_window:
        lo, hi = _window_output_range(ds)
    else:
        lo, hi = float(values.min()), float(values.max())
    if hi < lo:  # a negative rescale slope flips pydicom's window output range; keep "high input = bright"
        return (1.0 - _rescale(values, hi, lo)).astype(np.float32)
    return _rescale(values, lo, hi)


def _window_output_range(ds) -> tuple[float, float]:
    """The output range pydicom's ``apply_windowing`` maps into (PS3.3 C.11.2.1.2)."""
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


# --------------------------------------------------------------------------------------- model space
def to_pixel_values(arr: np.ndarray) -> torch.Tensor:
    """[0, 1] array ``(H, W)`` / ``(B, H, W)`` / ``(B, 1, H, W)`` -> float32 tensor ``(B, 1, H, W)`` in [-1, 1]."""
    import torch

    t = torch.as_tensor(np.asarray(arr, dtype=np.float32))
    if t.ndim == 2:
        t = t[None, None]  # (1, 1, H, W)
    elif t.ndim == 3:
        t = t[:, None]  # (B, 1, H, W)
    elif t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"expected (H, W), (B, H, W) or (B, 1, H, W), got {tuple(t.shape)}")
    return t * 2.0 - 1.0


def from_pixel_values(t: torch.Tensor) -> np.ndarray:
    """Tensor in [-1, 1] -> float32 array in [0, 1]: ``(B, 1, H, W)`` -> ``(B, H, W)``; ``(1, H, W)``/``(H, W)`` -> ``(H, W)``."""
    import torch

    t = torch.as_tensor(t).detach().to("cpu", torch.float32)
    if t.ndim == 4:
        if t.shape[1] != 1:
            raise ValueError(f"expected one channel, got shape {tuple(t.shape)}")
        t = t[:, 0]  # (B, H, W)
    elif t.ndim == 3:
        if t.shape[0] != 1:
            raise ValueError(f"expected (1, H, W), got {tuple(t.shape)}")
        t = t[0]
    elif t.ndim != 2:
        raise ValueError(f"expected (B, 1, H, W), (1, H, W) or (H, W), got {tuple(t.shape)}")
    return ((t.clamp(-1.0, 1.0) + 1.0) / 2.0).numpy()


def __getattr__(name: str):
    # The contract lists register_affine here; it lives in registration.py so OpenCV loads only when used.
    if name == "register_affine":
        from progemu.data.registration import register_affine

        return register_affine
    raise AttributeError(name)
