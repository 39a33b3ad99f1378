"""How often generation warns about a prior the checkpoint's tokenizer reconstructs badly, by kind of input.

    python -m eval.bench_unfamiliar [--model progemu/assets/tiny-synthcxr] [--data data/synthcxr-demo]

SynthCXR validate priors (what the embedded checkpoint knows: warnings there are false alarms) against inputs it
has never seen: another phantom generator, the same priors with inverted contrast, a gamma curve, noise or blur,
and plain noise. Prints the median reconstruction PSNR / SSIM and the share warned
(`progemu.generation.fidelity.unfamiliar`, the rule `progemu generate` applies).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

REPO = Path(__file__).resolve().parents[1]


def families(priors: list[np.ndarray], size: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """The inputs to check, each (S, S) float32 in [0, 1]."""
    from tokenizer.vq_data import make_source  # a benchmark script may use the VQ data sources

    rng = np.random.default_rng(seed)
    phantoms = make_source("procedural", size, seed + 5, split="validate")
    some = priors[:50]
    return {
        "SynthCXR validate priors": priors,
        "procedural phantoms (another generator)": [np.asarray(phantoms[i], np.float32) for i in range(50)],
        "SynthCXR, contrast inverted": [1 - x for x in some],
        "SynthCXR, gamma 0.5": [x**0.5 for x in some],
        "SynthCXR, Gaussian noise sd 0.05": [np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
                                             for x in some],
        "SynthCXR, blurred (sigma 1.5 px)": [gaussian_filter(x, 1.5).astype(np.float32) for x in some],
        "uniform noise": [rng.random((size, size)).astype(np.float32) for _ in range(20)],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "progemu" / "assets" / "tiny-synthcxr"))
    ap.add_argument("--data", default=str(REPO / "data" / "synthcxr-demo"))
    ap.add_argument("--n", type=int, default=100, help="SynthCXR validate priors")
    a = ap.parse_args(argv)
    from eval.data import eval_items, load_records
    from progemu.generation import CounterfactualPipeline
    from progemu.image_codes import encode_images

    pipe = CounterfactualPipeline.from_pretrained(a.model, device="cpu", dtype=torch.float32)
    priors = [pipe.load_prior(str(it.prior_path)) for it in eval_items(load_records(a.data), "validate", a.n)]
    print("| input | n | PSNR dB (median) | SSIM (median) | warned |\n|---|---|---|---|---|")
    for name, images in families(priors, priors[0].shape[-1]).items():
        rows = [pipe.prior_fidelity(x, encode_images(pipe.model, pipe.processor, [x])[0]) for x in images]
        psnr, ssim = (np.median([r[0][k] for r in rows]) for k in ("psnr", "ssim"))
        warned = sum(r[1] is not None for r in rows)
        print(f"| {name} | {len(rows)} | {psnr:.1f} | {ssim:.3f} | {warned}/{len(rows)} |")


if __name__ == "__main__":
    main()
