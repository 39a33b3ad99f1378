"""Compare quantizers (and grid sizes) for the tokenizer: same data, same steps, one table.

Run: ``python -m tokenizer.compare_vq --preset tiny-base --steps 1000 --pool-pairs 3000 --out runs/vq-compare``
(a GPU makes it minutes; each variant is a full ``train_vq`` run in ``OUT/<variant>/``; the table goes to
``OUT/compare.md`` and ``OUT/compare.json``). The SynthCXR training pool is generated once, in parallel.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# name -> ProgEmuVQConfig overrides of the preset
VARIANTS: dict[str, dict] = {
    "vq-cosine-kmeans": {},
    "fsq-8.8.8": {"quantizer": "fsq", "fsq_levels": [8, 8, 8]},
    "lfq-512": {"quantizer": "lfq", "codebook_size": 512},
    "vq-f16": {"channel_multipliers": [1, 2, 4]},
    "vq-euclid-kmeans": {"vq_use_cosine_sim": False},
    "vq-plain": {"vq_use_cosine_sim": False, "vq_kmeans_init": False, "vq_threshold_ema_dead_code": 0.0},
    "vq-p2-f8": {"patch_size": 2, "base_channels": 32, "channel_multipliers": [1, 2, 4]},
}


def _images(args: tuple[int, int, int, int]) -> np.ndarray:
    from tokenizer.vq_data import SynthSource

    size, seed, lo, hi = args
    src = SynthSource(size, seed, "train")
    return np.stack([src[i] for i in range(lo, hi)])


def make_pool(path: Path, size: int, n_images: int, seed: int = 0) -> Path:
    """The first n_images SynthCXR training images as one (N, S, S) float16 .npy, generated on every core."""
    if path.exists():
        return path
    chunk = 300
    jobs = [(size, seed, lo, min(lo + chunk, n_images)) for lo in range(0, n_images, chunk)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as ex:
        pool = np.concatenate(list(ex.map(_images, jobs)))
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, pool.astype(np.float32))
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-base")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--pool-pairs", type=int, default=3000)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="runs/vq-compare")
    args = ap.parse_args(argv)
    import torch

    from progemu.generation.fidelity import reconstruct
    from progemu.modeling_vq import ProgEmuVQModel
    from tokenizer.train_vq import train
    from tokenizer.vq_eval import load_pairs, locality, pair_locality
    from tokenizer.vq_presets import get_preset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = get_preset(args.preset)
    t0 = time.time()
    pool = make_pool(out / f"pool-{base.image_size}.npy", base.image_size, 3 * args.pool_pairs)
    print(f"pool ready in {time.time() - t0:.0f}s", flush=True)
    pairs = load_pairs(base.image_size, 64)
    rows = []
    for name in args.variants.split(","):
        cfg = base.replace(model=VARIANTS[name], data=str(pool), steps=args.steps, eval_every=max(1, args.steps // 5),
                           val_images=256)
        t = time.time()
        metrics = train(cfg, out / name, resume=False, progress=False)
        secs = time.time() - t
        model = ProgEmuVQModel.from_pretrained(out / name).to("cuda" if torch.cuda.is_available() else "cpu").eval()
        images = np.load(pool, mmap_mode="r")[:64].astype(np.float32)
        row = {"variant": name, "grid": model.grid_size(base.image_size)[0], "codebook": model.codebook_size,
               **metrics, **locality(model, images), **pair_locality(model, *pairs), "train_s": secs}
        curve = [json.loads(x) for x in (out / name / "train_log.jsonl").read_text().splitlines()]
        row["psnr_curve"] = [(r["step"], round(r["eval"]["psnr"], 2)) for r in curve if "eval" in r]
        rec, _ = reconstruct(model, images[:8])
        from tokenizer.vq_eval import contact_sheet

        contact_sheet(images[:8], rec, out / f"sheet-{name}.png")
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=1))
    cols = ["variant", "grid", "codebook", "psnr", "ssim", "usage", "perplexity", "codes_changed", "cells_touched",
            "pair_codes_changed", "pair_cells_touched", "pair_changed_outside_1", "train_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
