"""Speed and feature sizes of the standard evaluators at their real sizes (random weights: nothing downloaded),
against the project's own findings classifier as the baseline.

Run: ``python -m eval.bench_backends [--n 16] [--threads 2]``

Rows: own SmallCXRNet (width 16, 128 px; baseline), torchxrayvision DenseNet-121 (224 px), RAD-DINO ViT-B/14
(CheXGenBench path: 299 px RGB -> 518 px), CheXbert BERT-base (one report). Also the FID of a set with itself
and with a shifted copy on each image network's features (random weights: only ~0 vs > 0 means anything).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _time(fn, *args) -> tuple[float, object]:
    fn(args[0][:2], *args[1:])  # warm-up on two items
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="images (and reports) per timing")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers import BertConfig, Dinov2Config, Dinov2Model

    from eval.chexbert import BertLabeler, CheXbert
    from eval.image_metrics import frechet_distance
    from eval.raddino import RAD_DINO_PROCESSOR, RadDino
    from eval.xrv import XRVDenseNet, XRVEvaluator
    from progemu.classifier import Evaluator, EvaluatorSpec

    rng = np.random.default_rng(0)
    imgs = rng.random((args.n, 256, 256)).astype(np.float32)
    shifted = np.clip(imgs * 0.8 + 0.2, 0, 1)
    own = Evaluator(EvaluatorSpec("findings", "multilabel", ["a"] * 7, 128, width=16))
    xrv = XRVEvaluator(XRVDenseNet())
    from transformers import BitImageProcessor

    rad = RadDino(Dinov2Model(Dinov2Config(image_size=518, patch_size=14)), BitImageProcessor(**RAD_DINO_PROCESSOR))
    rows = []
    for name, ev in (("own SmallCXRNet 128 px (baseline)", own), ("torchxrayvision DenseNet-121 224 px", xrv),
                     ("RAD-DINO ViT-B/14 518 px (CheXGenBench)", rad)):
        sec, feats = _time(ev.features, imgs)
        fid_self = frechet_distance(feats.astype(np.float64), feats.astype(np.float64))
        fid_shift = frechet_distance(feats.astype(np.float64), ev.features(shifted).astype(np.float64))
        rows.append((name, f"{feats.shape[1]}", f"{1000 * sec / args.n:.1f}", f"{fid_self:.2e}", f"{fid_shift:.3g}"))

    class _Tok:  # CheXbert's timing needs token ids only: a fixed 60-token report (a typical findings section)
        cls_token_id, sep_token_id, pad_token_id = 101, 102, 0

        def tokenize(self, text):
            return text.split()

        def convert_tokens_to_ids(self, tokens):
            return [1000 + len(t) for t in tokens]

    cb = CheXbert(BertLabeler(BertConfig()), _Tok())
    reports = [" ".join(["word"] * 60)] * args.n
    sec, labels = _time(cb.label, reports)
    rows.append(("CheXbert BERT-base (60-token report)", f"{labels.shape[1]} labels", f"{1000 * sec / args.n:.1f}",
                 "", ""))
    head = ("network", "feature dim", "ms / item", "FID self", "FID shifted")
    print(f"CPU, {args.threads} threads, {args.n} items, random weights")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
