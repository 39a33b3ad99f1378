"""Evaluation of a VQ tokenizer: PSNR / SSIM, codebook usage, locality of codes, contact sheet.

Run: ``python -m tokenizer.vq_eval --model runs/vq-tiny --data synth --size 128 --n 256 --sheet runs/vq-tiny/sheet.png``
(prints a JSON line; ``--data`` is "synth", "procedural" or a data-set folder read through its validation split).
``--write-validation "SynthCXR 128 px"`` also stores the reconstruction figures in the model folder's config
(``validation``), where generation compares every prior against them (`progemu.generation.fidelity`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from progemu.generation.fidelity import reconstruct, reconstruction_scores, validation_figures
from tokenizer.vq_losses import CodeUsage


def validation_entry(model, images: np.ndarray, data: str) -> dict:
    """The config's ``validation`` figures: per-image PSNR / SSIM of ``images`` (held-out images of ``data``)."""
    recs, _ = reconstruct(model, images)
    return validation_figures([reconstruction_scores(a, b) for a, b in zip(images, recs)], data, images.shape[-1])


def write_validation(model, folder: str | Path, images: np.ndarray, data: str) -> dict:
    """Measure `validation_entry` and save it in ``folder``'s config (the weights are not rewritten)."""
    from progemu.io import write_json_atomic

    entry = validation_entry(model, images, data)
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    config["validation"] = entry
    write_json_atomic(path, config, indent=2)
    model.config.validation = entry
    return entry


def evaluate(model, images: np.ndarray, batch_size: int = 32) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over images in [0, 1] (data range 1), share of codes used and perplexity."""
    recs, codes = reconstruct(model, images, batch_size)
    psnr = [peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(images, recs)]
    ssim = [structural_similarity(a, b, data_range=1.0) for a, b in zip(images, recs)]
    usage = CodeUsage(model.codebook_size)
    usage.update(torch.from_numpy(codes))
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), **usage.stats(), "n_images": len(images)}


@torch.no_grad()
def locality(model, images: np.ndarray, sigma_px: float = 3.0, seed: int = 0) -> dict[str, float]:
    """Add one small Gaussian opacity (sigma ``sigma_px``) per image; count the codes that change.

    ``cells_touched``: grid cells where the edit exceeds 1% of its peak (what a perfectly local tokenizer changes);
    ``reach``: the largest distance, in cells (Chebyshev), from the edit's cell to a changed code.
    """
    rng = np.random.default_rng(seed)
    s = images.shape[-1]
    f = model.downsample_factor
    yy, xx = np.mgrid[0:s, 0:s]
    edited, touched, centres = [], [], []
    for img in images:
        cy, cx = rng.uniform(0.3, 0.7, size=2) * s
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma_px**2)).astype(np.float32)
        edited.append(np.clip(img + 0.25 * blob, 0, 1))
        touched.append(int((blob.reshape(s // f, f, s // f, f).max(axis=(1, 3)) > 0.01).sum()))
        centres.append((int(cy) // f, int(cx) // f))
    _, c0 = reconstruct(model, images)
    _, c1 = reconstruct(model, np.stack(edited))
    changed = c0 != c1  # (N, h, w)
    reach = []
    for ch, (gy, gx) in zip(changed, centres):
        ys, xs = np.nonzero(ch)
        reach.append(int(np.max(np.maximum(np.abs(ys - gy), np.abs(xs - gx)))) if len(ys) else 0)
    return {"codes_changed": float(changed.sum(axis=(1, 2)).mean()), "cells_touched": float(np.mean(touched)),
            "reach_cells": float(np.mean(reach)), "grid_cells": int(changed[0].size), "blob_sigma_px": sigma_px}


@torch.no_grad()
def pair_locality(model, priors: np.ndarray, counterfactuals: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Codes that differ between a prior and its exact counterfactual, inside vs outside the change's cells.

    A cell is "touched" when its footprint holds any changed pixel; ``outside_1`` counts changed codes more than
    one cell away from every touched cell (what a region edit dilated by one cell would still miss).
    """
    f = model.downsample_factor
    n, s = len(masks), masks.shape[-1]
    touched = masks.reshape(n, s // f, f, s // f, f).any(axis=(2, 4))  # (N, h, w)
    dilated = torch.nn.functional.max_pool2d(torch.from_numpy(touched).float()[:, None], 3, 1, 1)[:, 0].numpy() > 0
    _, c0 = reconstruct(model, priors)
    _, c1 = reconstruct(model, counterfactuals)
    changed = c0 != c1
    return {"pairs": int(n), "pair_codes_changed": float(changed.sum(axis=(1, 2)).mean()),
            "pair_cells_touched": float(touched.sum(axis=(1, 2)).mean()),
            "pair_changed_outside": float((changed & ~touched).sum(axis=(1, 2)).mean()),
            "pair_changed_outside_1": float((changed & ~dilated).sum(axis=(1, 2)).mean())}


def load_pairs(size: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first n SynthCXR validation pairs with a change: priors, counterfactuals, change masks (N, S, S)."""
    from tokenizer.vq_data import SynthSource

    src = SynthSource(size, seed, "validate")
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    k = 0
    while len(out) < n and k < 20 * n:
        pair = src.gen.pair(src.pair_index(k))
        k += 1
        if pair.change_mask.any():
            out.append((pair.prior, pair.counterfactual, pair.change_mask.astype(bool)))
    return tuple(np.stack(a).astype(a[0].dtype) for a in zip(*out))  # type: ignore[return-value]


def contact_sheet(originals: np.ndarray, recons: np.ndarray, path: str | Path, n: int = 8) -> Path:
    """Rows: originals, reconstructions, |difference| x4; n columns. Written as an 8-bit PNG."""
    n = min(n, len(originals))
    rows = [np.concatenate(list(a[:n]), axis=1) for a in (originals, recons, np.clip(4 * np.abs(originals - recons), 0, 1))]
    sheet = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path


def load_images(data: str, size: int, n: int, seed: int = 0, fmt: str = "icg-cxr") -> np.ndarray:
    """n validation images (N, S, S) in [0, 1]: a disjoint SynthCXR seed, or a folder's "validate" split."""
    from tokenizer.vq_data import make_source

    src = make_source(data, size, seed, fmt, split="validate")
    return np.stack([src[i] for i in range(min(n, len(src)))])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="synth")
    ap.add_argument("--format", default="icg-cxr")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--sheet", default=None, help="write a contact sheet PNG here")
    ap.add_argument("--write-validation", metavar="DATA", default=None,
                    help="store the figures in the model's config as its validation figures, naming the data")
    args = ap.parse_args(argv)
    from progemu.modeling_vq import ProgEmuVQModel

    model = ProgEmuVQModel.from_pretrained(args.model).eval()
    images = load_images(args.data, args.size, args.n, fmt=args.format)
    result = {**evaluate(model, images), **locality(model, images[:64])}
    if args.data == "synth":
        result.update(pair_locality(model, *load_pairs(args.size, 64)))
    if args.write_validation:
        result["validation"] = write_validation(model, args.model, images, args.write_validation)
    if args.sheet:
        recs, _ = reconstruct(model, images[:8])
        contact_sheet(images[:8], recs, args.sheet)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
