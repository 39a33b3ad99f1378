"""Image ingestion: PNG/JPEG/DICOM to a normalised gray array, and every bad input's clear error."""

import struct
import zlib

import numpy as np
import pytest
import torch
from formats import chest, save_png, write_dicom
from PIL import Image

from progemu.data.ingest import IngestOptions, from_pixel_values, load_image, to_pixel_values
from progemu.errors import IngestError

NATIVE = IngestOptions(size=None)


@pytest.fixture
def px12():
    return np.round(chest(40, 32) * 4095).astype(np.uint16)  # (H, W) 12-bit


def test_png_8bit_exact_and_square_output(tmp_path):
    arr = chest(40, 32)
    path = save_png(tmp_path / "a.png", arr)
    native = load_image(path, NATIVE)
    assert native.dtype == np.float32 and native.shape == (40, 32)
    np.testing.assert_allclose(native, np.round(arr * 255) / 255, atol=1e-6)
    out = load_image(path, IngestOptions(size=64))
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_pad_keeps_whole_image_and_crop_fills(tmp_path):
    path = save_png(tmp_path / "wide.png", np.ones((20, 40), np.float32))
    pad = load_image(path, IngestOptions(size=40))
    assert np.all(pad[:10] == 0) and np.all(pad[-10:] == 0)  # black bars above and below
    assert np.allclose(pad[10:30], 1.0, atol=1e-5)
    crop = load_image(path, IngestOptions(size=40, resize="crop"))
    assert np.allclose(crop, 1.0, atol=1e-5)


def test_16bit_png_keeps_dynamic_range(tmp_path):
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float64).reshape(64, 64)
    path = save_png(tmp_path / "a16.png", ramp, bits=16)
    assert Image.open(path).mode.startswith("I;16")
    out = load_image(path, NATIVE)
    assert len(np.unique(out)) > 1000  # far more levels than 8 bits could hold
    np.testing.assert_allclose(out, np.round(ramp * 65535) / 65535, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "I"])
def test_colour_and_palette_modes_match_gray(tmp_path, mode):
    gray8 = (chest(24, 24) * 255).astype(np.uint8)
    ref = load_image(save_png(tmp_path / "g.png", gray8 / 255.0), NATIVE)
    if mode == "I":  # 16-bit values held in a 32-bit mode (PNG cannot store mode I; TIFF can)
        path = tmp_path / "c_I.tif"
        Image.fromarray(gray8.astype(np.int32) * 257).save(path)
        assert Image.open(path).mode == "I"
    else:
        path = tmp_path / f"c_{mode}.png"
        Image.fromarray(gray8).convert(mode).save(path)
        assert Image.open(path).mode == mode
    out = load_image(path, NATIVE)
    np.testing.assert_allclose(out, ref, atol=1.5 / 255)


def test_jpeg_8bit(tmp_path):
    Image.fromarray((chest(32, 32) * 255).astype(np.uint8)).save(tmp_path / "a.jpg", quality=95)
    out = load_image(tmp_path / "a.jpg", NATIVE)
    assert np.abs(out - chest(32, 32)).mean() < 0.02


def test_percentiles_and_out_range(tmp_path):
    path = save_png(tmp_path / "a.png", chest(32, 32) * 0.5 + 0.2)
    stretched = load_image(path, IngestOptions(size=None, percentiles=(0, 100)))
    assert stretched.min() == 0.0 and stretched.max() == 1.0
    signed = load_image(path, IngestOptions(size=None, out_range=(-1.0, 1.0)))
    np.testing.assert_allclose(signed, load_image(path, NATIVE) * 2 - 1, atol=1e-6)


def test_dicom_monochrome1_has_monochrome2_polarity(tmp_path, px12):
    m2 = load_image(write_dicom(tmp_path / "m2.dcm", px12), NATIVE)
    m1 = load_image(write_dicom(tmp_path / "m1.dcm", 4095 - px12, photometric="MONOCHROME1"), NATIVE)
    np.testing.assert_allclose(m1, m2, atol=1e-6)
    assert np.corrcoef(m2.ravel(), px12.ravel())[0, 1] > 0.999  # high stored value = bright in MONOCHROME2


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_dicom_bits_stored(tmp_path, bits):
    px = np.round(chest(24, 20) * (2**bits - 1)).astype(np.uint16)
    out = load_image(write_dicom(tmp_path / f"b{bits}.dcm", px, bits_stored=bits), NATIVE)
    np.testing.assert_allclose(out, (px - px.min()) / (px.max() - px.min()), atol=1e-6)


def test_dicom_rescale_and_window(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))  # (8, 256)
    raw = load_image(write_dicom(tmp_path / "r.dcm", ramp), NATIVE)
    flipped = load_image(write_dicom(tmp_path / "f.dcm", ramp, slope=-1.0, intercept=4095.0), NATIVE)
    np.testing.assert_allclose(flipped, 1.0 - raw, atol=1e-6)  # the modality rescale was applied
    win = load_image(write_dicom(tmp_path / "w.dcm", ramp, window=(1000, 200)), NATIVE)
    assert np.all(win[:, ramp[0] <= 899] == 0) and np.all(win[:, ramp[0] > 1100] == 1)
    assert np.all(np.diff(win[0]) >= 0) and 0 < win[0, ramp[0] == 1008][0] < 1
    # The same window expressed in rescaled units gives the same picture.
    win2 = load_image(write_dicom(tmp_path / "w2.dcm", ramp, slope=2.0, intercept=-1000.0, window=(1000, 400)), NATIVE)
    np.testing.assert_allclose(win2, win, atol=0.01)


def test_dicom_rle_decodes_natively(tmp_path, px12):
    plain = load_image(write_dicom(tmp_path / "p.dcm", px12), NATIVE)
    rle = load_image(write_dicom(tmp_path / "rle.dcm", px12, rle=True), NATIVE)
    np.testing.assert_array_equal(rle, plain)


@pytest.mark.parametrize(("uid", "plugin"), [("1.2.840.10008.1.2.4.70", "pylibjpeg-libjpeg"),
                                              ("1.2.840.10008.1.2.4.80", "pylibjpeg-libjpeg"),
                                              ("1.2.840.10008.1.2.4.201", "pylibjpeg-openjpeg")])
def test_dicom_compressed_without_plugin_names_it(tmp_path, px12, uid, plugin):
    from pydicom.pixels import get_decoder

    if get_decoder(uid).is_available:
        pytest.skip("a decoder plugin for this syntax is installed here")
    path = write_dicom(tmp_path / "c.dcm", px12, transfer_syntax=uid)
    with pytest.raises(IngestError, match=plugin) as info:
        load_image(path)
    assert info.value.path == str(path) and "decoder plugin" in info.value.reason


def _zero_width_png(path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 0, 4, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def _bad_inputs(tmp_path, px12):
    """(file, expected reason fragment, options) for every bad input the issue lists."""
    good_png = save_png(tmp_path / "good.png", chest())
    good_dcm = write_dicom(tmp_path / "good.dcm", px12)
    (tmp_path / "trunc.png").write_bytes(good_png.read_bytes()[: good_png.stat().st_size // 2])
    (tmp_path / "trunc.dcm").write_bytes(good_dcm.read_bytes()[:-700])
    (tmp_path / "junk.png").write_bytes(b"definitely not an image")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file" * 20)
    (tmp_path / "empty.png").write_bytes(b"")
    frames = [Image.fromarray((chest(seed=i) * 255).astype(np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    Image.fromarray((chest() * 255).astype(np.uint8)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.new("L", (1200, 1000)).save(tmp_path / "big.png")
    return [
        (tmp_path / "missing.png", "not found", None),
        (tmp_path / "empty.png", "empty file", None),
        (tmp_path / "junk.png", "unreadable", None),
        (tmp_path / "junk.dcm", "unreadable", None),
        (tmp_path / "trunc.png", "truncated", None),
        (tmp_path / "trunc.dcm", "truncated", None),
        (write_dicom(tmp_path / "nopix.dcm", px12, with_pixels=False), "no pixel data", None),
        (write_dicom(tmp_path / "multi.dcm", np.stack([px12, px12, px12]), frames=3), "multi-frame", None),
        (tmp_path / "anim.png", "multi-frame", None),
        (_zero_width_png(tmp_path / "zero.png"), "zero-size", None),
        (write_dicom(tmp_path / "zero.dcm", np.zeros((0, 8), np.uint16)), "zero-size", None),
        (tmp_path / "big.png", "above the limit", IngestOptions(max_pixels=1_000_000)),
        (write_dicom(tmp_path / "big.dcm", px12), "above the limit", IngestOptions(max_pixels=100)),
        (tmp_path / "cmyk.jpg", "unsupported image mode", None),
        (write_dicom(tmp_path / "ybr.dcm", px12, photometric="HSV"), "unsupported", None),
    ]


def test_every_bad_input_raises_ingest_error_naming_file_and_reason(tmp_path, px12):
    for path, fragment, options in _bad_inputs(tmp_path, px12):
        with pytest.raises(IngestError) as info:
            load_image(path, options)
        assert info.value.path == str(path), path
        assert fragment in info.value.reason, (path, info.value.reason)
        assert str(path) in str(info.value)


def test_pixel_value_round_trip():
    arr = chest(16, 16)
    t = to_pixel_values(arr)
    assert t.shape == (1, 1, 16, 16) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    np.testing.assert_allclose(from_pixel_values(t)[0], arr, atol=1e-6)
    np.testing.assert_allclose(from_pixel_values(t[0]), arr, atol=1e-6)
    batch = np.stack([arr, 1 - arr])
    tb = to_pixel_values(batch)
    assert tb.shape == (2, 1, 16, 16)
    np.testing.assert_allclose(from_pixel_values(tb), batch, atol=1e-6)
    with pytest.raises(ValueError):
        to_pixel_values(np.zeros((2, 3, 4, 4)))
