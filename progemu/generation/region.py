"""Edit masks over the token grid (InstructX2X's region-specific editing, made autoregressive).

True = the code is sampled, False = the prior's code is copied. Sources:

- ``mask``: a user PNG of any size (nonzero = editable), resized to the grid;
- ``anatomy``: the union of the anatomical priors of the findings the prompt changes (``parse_findings``; SynthCXR's
  anatomy, joined with the NIH ChestX-ray14 boxes shipped in the torchxrayvision wheel when that package is
  importable); a prompt that changes no finding (``asks_no_change``) edits nothing;
- ``auto``: guidance map x anatomical prior >= tau (see ``guidance.auto_edit_mask``);
- ``none``: the whole grid.

`paste_prior` then keeps the prior's pixels outside the mask: copied codes still pass through the VQ decoder,
which blurs them (PSNR ~30 dB), so only pasting makes "nothing outside the region changes" hold in pixels.

A cell is editable when any part of it is (``min_coverage=0``): a local change in pixels touches every code
whose patch it overlaps. ``dilate`` widens a mask by whole cells, because the tokenizer's receptive field
spreads a local edit over neighbouring codes (one finding changed ~20 of a grid's 64 codes in a tiny VQ).
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from progemu.errors import IngestError
from progemu.findings import FINDINGS, Mention, asks_change, parse_sentence, parse_text, split_sentences

REGION_SOURCES: tuple[str, ...] = ("none", "mask", "anatomy", "auto")

# NIH ChestX-ray14 box labels standing in for each SynthCXR finding (the wheel has boxes for 8 findings).
NIH_LABELS: dict[str, tuple[str, ...]] = {
    "pleural_effusion": ("Effusion",), "cardiomegaly": ("Cardiomegaly",), "atelectasis": ("Atelectasis",),
    "pneumothorax": ("Pneumothorax",), "nodule": ("Nodule", "Mass"), "consolidation": ("Pneumonia", "Infiltrate"),
    "edema": ("Infiltrate",),
}


def load_user_mask(path: str | Path) -> np.ndarray:
    """A mask image of any size -> bool (H, W), True where a pixel is set; IngestError if it is not a mask."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA", "RGBX", "P", "PA"):
                rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
                if np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]):
                    raise IngestError(path, "mask is a colour image; expected a single-channel (binary) mask")
                arr = rgb[..., 0].astype(np.float32)
            elif im.mode in ("LA", "La"):
                arr = np.asarray(im.getchannel("L"), dtype=np.float32)
            else:
                arr = np.asarray(im.convert("F") if im.mode not in ("1", "L") else im, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as err:
        raise IngestError(path, f"cannot read the mask image ({err})") from err
    if arr.ndim != 2 or arr.size == 0:
        raise IngestError(path, f"mask has shape {arr.shape}; expected a 2-D image")
    mask = arr > 0
    if not mask.any():
        raise IngestError(path, "mask is empty (no pixel set), so nothing could be edited")
    return mask


def coverage_grid(arr: np.ndarray | torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(H, W) mask or map -> (h, w) float: the mean over each cell's pixels (any H, W: area interpolation)."""
    t = torch.as_tensor(np.asarray(arr, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(grid_h, grid_w), mode="area")[0, 0]


def to_grid(arr: np.ndarray | torch.Tensor, grid_h: int, grid_w: int, min_coverage: float = 0.0) -> torch.Tensor:
    """(H, W) mask -> (h, w) bool: cells whose covered fraction exceeds ``min_coverage``."""
    return coverage_grid(arr, grid_h, grid_w) > min_coverage


def dilate(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """Grow a (..., h, w) bool mask by ``cells`` cells in every direction (a square structuring element)."""
    if cells <= 0:
        return mask.bool()
    lead = mask.shape[:-2]
    m = mask.float().reshape(-1, 1, *mask.shape[-2:])
    m = F.max_pool2d(m, kernel_size=2 * cells + 1, stride=1, padding=cells)
    return m.reshape(*lead, *mask.shape[-2:]) > 0


def _lateral_side(mention: Mention, side: str | None) -> str | None:
    """``side`` when it is "left" / "right" and the finding has sides; else None (both, bilateral, none)."""
    return side if side in ("left", "right") and FINDINGS[mention.key].lateral else None


def parse_finding(text: str) -> tuple[str, str | None] | None:
    """The first SynthCXR finding named in ``text`` and its side ("left"/"right"/None), or None. "The heart size is
    normal" names no finding (``Mention.normal``). The side is trusted only where the text names no other: of a
    whole prompt naming both sides it stays open."""
    mentions = parse_text(text).mentions
    named = [m for m in mentions if m.key is not None and not m.normal]
    if not named:
        return None
    sides = {m.side for m in mentions if m.side in ("left", "right")}
    return named[0].key, _lateral_side(named[0], named[0].side if len(sides) == 1 else None)


def asks_no_change(text: str) -> bool:
    """True when ``text`` says things stay as they are ("No significant change ...", "Stable moderate cardiomegaly.")
    and no sentence changes a known finding: then nothing should be edited."""
    sentences = [parse_sentence(s, i) for i, s in enumerate(split_sentences(text))]
    mentions = [m for found, _ in sentences for m in found]
    if any(asks_change(m) for m in mentions):
        return False
    # kept ("Stable ...", "No significant change") or only called normal ("The heart size is normal."): nothing to
    # change. A denied finding alone ("No pneumothorax.") may mean it is to go: its region is edited
    return (any(m.change == "unchanged" for m in mentions) or any(ch == "unchanged" for _, ch in sentences)
            or (bool(mentions) and all(m.normal for m in mentions)))


def parse_findings(text: str) -> list[tuple[str, str | None]]:
    """Every finding ``text`` asks to change (``progemu.findings.asks_change``), each with the side its own
    sentence names, in order of mention.

    A progression prompt often changes several findings ("Moderate pleural effusion has developed in the left lower
    lung. Moderate cardiomegaly has appeared."); an edit region that covers only the first would forbid the rest.
    Findings kept or denied do not count; where none changes, the first named finding (`parse_finding`).
    """
    out: list[tuple[str, str | None]] = []
    for m in parse_text(text).mentions:
        if asks_change(m) and m.key not in {k for k, _ in out}:
            out.append((m.key, _lateral_side(m, m.side)))
    if not out and (first := parse_finding(text)) is not None:
        out = [first]
    return out


@lru_cache(maxsize=1)
def _nih_boxes() -> list[tuple[str, float, float, float, float]] | None:
    """(label, x0, y0, x1, y1) boxes in [0, 1] from torchxrayvision's bundled BBox_List_2017.csv.gz, if installed."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = list(Path(next(iter(spec.submodule_search_locations))).rglob("BBox_List_2017.csv.gz"))
    return read_nih_boxes(found[0]) if found else None


def read_nih_boxes(path: str | Path, image_size: float = 1024.0) -> list[tuple[str, float, float, float, float]]:
    """Parse the NIH box list (``Image Index, Finding Label, Bbox [x, y, w, h]``) into normalised boxes."""
    boxes = []
    with gzip.open(path, "rt") as fh:
        next(fh)  # header
        for line in fh:
            parts = line.strip().split(",")
            if len(parts) < 6:
                continue
            x, y, w, h = (float(v) / image_size for v in parts[2:6])
            boxes.append((parts[1], x, y, x + w, y + h))
    return boxes


def nih_prior(finding: str, size: int, laterality: str | None = None,
              boxes: list[tuple[str, float, float, float, float]] | None = None) -> np.ndarray | None:
    """Union of the NIH boxes of a finding as a float (size, size) mask, or None without the data."""
    boxes = _nih_boxes() if boxes is None else boxes
    labels = NIH_LABELS.get(finding, ())
    if not boxes or not labels:
        return None
    out = np.zeros((size, size), dtype=np.float32)
    for label, x0, y0, x1, y1 in boxes:
        cx = (x0 + x1) / 2
        # PA view: the patient's left is the image's right half
        if label not in labels or (laterality == "left" and cx < 0.5) or (laterality == "right" and cx >= 0.5):
            continue
        out[int(y0 * size): max(int(y0 * size) + 1, int(np.ceil(y1 * size))),
            int(x0 * size): max(int(x0 * size) + 1, int(np.ceil(x1 * size)))] = 1.0
    return out if out.any() else None


def anatomy_map(finding: str, size: int, laterality: str | None = None, use_nih: bool = True) -> np.ndarray | None:
    """Float (size, size) in [0, 1]: where ``finding`` may appear (SynthCXR anatomy joined with the NIH boxes),
    or None when neither source is available."""
    maps = []
    try:
        from progemu.synth import anatomical_prior
    except ImportError:  # SynthCXR not installed: the NIH boxes alone, if any
        anatomical_prior = None
    if anatomical_prior is not None:
        maps.append(np.asarray(anatomical_prior(finding, size, laterality), dtype=np.float32))
    if use_nih and (nih := nih_prior(finding, size, laterality)) is not None:
        maps.append(nih)
    return np.clip(np.maximum.reduce(maps), 0, 1) if maps else None


def paste_prior(edited: np.ndarray, prior: np.ndarray, mask: torch.Tensor, feather: int | None = None) -> np.ndarray:
    """(H, W) edited image with the prior's pixels outside the (h, w) edit ``mask`` (True = edited).

    Outside the mask the result equals ``prior`` exactly; inside, the edit takes over within ``feather``
    pixels of the border (default just under half a code cell), so no seam shows where decoded and original pixels meet.
    """
    if edited.shape != prior.shape:
        raise ValueError(f"edited image {edited.shape} and prior {prior.shape} differ in size")
    height, width = prior.shape
    hard = F.interpolate(torch.as_tensor(mask, dtype=torch.float32)[None, None], size=(height, width), mode="nearest")
    # default: under half a cell, so the window (2r + 1 pixels) fits in one cell and a one-cell edit reaches 1
    r = max(1, (height // mask.shape[0] - 1) // 2) if feather is None else int(feather)
    w = hard
    if r > 0:  # box blur, rescaled to reach 0 at the border and 1 from r pixels inside; x hard for inner corners
        soft = F.avg_pool2d(F.pad(hard, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)
        w = (2 * soft - 1).clamp(0, 1) * hard
    w = w[0, 0].numpy()
    return (w * edited + (1 - w) * prior).astype(np.float32)
