"""Clinical fidelity of a VQ tokenizer: do the project's evaluators see the same findings / attributes after
encode -> decode as on the originals?

Run: ``python -m eval.vq_clinical --vq runs/vq-tiny --evaluators runs/evaluators --data data/synthcxr-128
--split validate --skip 320 --n 512 [--retrain-pairs 1600]`` (prints tables, writes ``--out``, default
``VQ/clinical_fidelity.json``).

Images (priors and follow-ups of the split's records, in order) are read with the foundation loaders and
ingestion at the tokenizer's image size. The findings classifier is scored with its own calibrated per-finding
thresholds on both sides, so a difference comes from the reconstruction alone. The criterion: the macro
accuracy on reconstructions is within 3 points of that on the originals. ``--skip`` leaves out the split's first
records, e.g. the 320 validate pairs that ``eval.train_evaluators`` scored (and calibrated thresholds) on.

It lives with the evaluators it runs; the tokenizer comes in as a saved ``ProgEmuVQModel`` folder, and the round
trip is the package's (``progemu.generation.fidelity.reconstruct``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from eval.data import ImageTable, load_records
from eval.scores import multiclass_scores, multilabel_scores
from progemu.classifier import Evaluator, available
from progemu.data.records import CHEXPERT_LABELS
from progemu.errors import ProgEmuError
from progemu.io import write_json_atomic

Codec = Callable[[np.ndarray], np.ndarray]  # (N, S, S) in [0, 1] -> (N, S, S) in [0, 1]
METRICS = ("accuracy", "auroc", "f1")
ATTRIBUTES = ("sex", "age_group")


def vq_codec(model, batch_size: int = 32) -> Codec:
    """Encode -> decode with a ``ProgEmuVQModel`` (in eval mode), output clamped to [0, 1]."""
    from progemu.generation.fidelity import reconstruct

    return lambda images: reconstruct(model, np.ascontiguousarray(images, np.float32), batch_size)[0]


def load_table(data: str | Path, split: str, n: int, size: int, source: str = "icg-cxr", skip: int = 0) -> ImageTable:
    """The first ``n`` images (prior, follow-up, prior, ...) of ``split`` after skipping ``skip`` records."""
    records = [r for r in load_records(data, source) if r.split == split][skip:]
    if not records:
        raise ProgEmuError(f"{data}: no '{split}' records after skipping {skip}")
    table = ImageTable.from_records(records[: (n + 1) // 2 if n else None], size)
    if n and len(table) < n:  # records without a follow-up give one image each
        table = ImageTable.from_records(records[:n], size)
    keep = slice(0, n or None)
    return ImageTable(table.images[keep], table.labels[keep], {k: v[keep] for k, v in table.attributes.items()})


def _delta(orig: dict, recon: dict) -> dict[str, float | None]:
    """Reconstruction minus original, in points (x100)."""
    return {m: None if orig.get(m) is None or recon.get(m) is None else 100 * (recon[m] - orig[m]) for m in METRICS}


def _paired_ci(correct_o: np.ndarray, correct_r: np.ndarray, reps: int = 1000, seed: int = 0) -> dict[str, list]:
    """95% bootstrap intervals (over images, paired) of the accuracy change in points, per column and macro.
    ``correct_*`` (N, C): 1 / 0 where the decision is right / wrong, NaN where the truth is missing."""
    rng = np.random.default_rng(seed)
    diff = correct_r - correct_o  # (N, C)
    per = np.empty((reps, diff.shape[1]))
    for i in range(reps):
        d = diff[rng.integers(0, len(diff), len(diff))]
        known = np.isfinite(d)
        per[i] = np.where(known.any(0), np.nansum(d, 0) / np.maximum(known.sum(0), 1), np.nan)
    macro = np.nanmean(per, axis=1)
    return {"per_class": (100 * np.nanpercentile(per, [2.5, 97.5], axis=0)).T.tolist(),
            "macro": (100 * np.percentile(macro, [2.5, 97.5])).tolist()}


def _findings(ev: Evaluator, table: ImageTable, recon: np.ndarray) -> dict:
    classes = list(ev.spec.classes)
    truth = table.labels[:, [CHEXPERT_LABELS.index(c) for c in classes]]  # (N, C) 0/1/NaN
    thr = ev.threshold_array()
    po, pr = ev.predict_proba(table.images), ev.predict_proba(recon)  # (N, C)
    so, sr = (multilabel_scores(p, truth, classes, thr.tolist()) for p in (po, pr))
    known = np.isfinite(truth)
    correct_o = np.where(known, ((po >= thr) == (truth == 1)).astype(float), np.nan)
    correct_r = np.where(known, ((pr >= thr) == (truth == 1)).astype(float), np.nan)
    ci = _paired_ci(correct_o, correct_r)
    same = (po >= thr) == (pr >= thr)  # decision unchanged by the codec, over every image
    per = {}
    for j, c in enumerate(classes):
        o, r = so["per_class"][c], sr["per_class"][c]
        per[c] = {"original": o, "reconstruction": r, "delta_points": _delta(o, r),
                  "accuracy_delta_ci95": ci["per_class"][j], "agreement": float(same[:, j].mean()),
                  "positives": int((truth[:, j] == 1).sum()), "mean_abs_prob_change": float(np.abs(pr - po)[:, j].mean())}
    pick = ("accuracy", "auroc", "f1", "n")
    return {"classes": classes, "original": {k: so[k] for k in pick}, "reconstruction": {k: sr[k] for k in pick},
            "delta_points": _delta(so, sr), "accuracy_delta_ci95": ci["macro"],
            "agreement": float(same.mean()), "per_class": per}


def _attribute(ev: Evaluator, values: Sequence[str | None], images: np.ndarray, recon: np.ndarray) -> dict:
    classes = list(ev.spec.classes)
    truth = np.array([classes.index(v) if v in classes else -1 for v in values], np.int64)
    po, pr = ev.predict_proba(images), ev.predict_proba(recon)
    so, sr = multiclass_scores(po, truth, classes), multiclass_scores(pr, truth, classes)
    known = truth >= 0
    correct_o = (po.argmax(1) == truth).astype(float)[known, None]
    correct_r = (pr.argmax(1) == truth).astype(float)[known, None]
    return {"classes": classes, "original": so, "reconstruction": sr, "delta_points": _delta(so, sr),
            "accuracy_delta_ci95": _paired_ci(correct_o, correct_r)["macro"],
            "agreement": float((po.argmax(1) == pr.argmax(1)).mean())}


def clinical_fidelity(codec: Codec, table: ImageTable, evaluators: dict[str, Evaluator],
                      tolerance_points: float = 3.0) -> dict:
    """Score ``evaluators`` (``findings`` and / or attribute models) on ``table``'s images and on ``codec`` of them.

    Returns per model: scores on originals and reconstructions, their difference in points, a paired 95% bootstrap
    interval of the accuracy change, and the share of decisions the codec leaves unchanged ("agreement").
    ``criterion``: whether each model's accuracy (findings: macro over findings) moves by at most
    ``tolerance_points``, and the findings whose own accuracy moves by more.
    """
    recon = np.asarray(codec(table.images), np.float32)
    if recon.shape != table.images.shape:
        raise ValueError(f"codec returned shape {recon.shape} for images of shape {table.images.shape}")
    out: dict = {"n_images": len(table), "tolerance_points": tolerance_points,
                 "pixel_mae": float(np.abs(recon - table.images).mean()),
                 # mean per-image PSNR (dB, data range 1), as tokenizer.vq_eval reports it
                 "psnr": float(np.mean(10 * np.log10(1 / np.maximum(((recon - table.images) ** 2).mean((1, 2)), 1e-10))))}
    if "findings" in evaluators:
        out["findings"] = _findings(evaluators["findings"], table, recon)
    for name in ATTRIBUTES:
        if name in evaluators and name in table.attributes:
            out[name] = _attribute(evaluators[name], table.attributes[name], table.images, recon)
    models = [m for m in ("findings", *ATTRIBUTES) if m in out]
    failing = [c for c, s in out.get("findings", {}).get("per_class", {}).items()
               if abs(s["delta_points"]["accuracy"] or 0.0) > tolerance_points]
    holds = {m: abs(out[m]["delta_points"]["accuracy"] or 0.0) <= tolerance_points for m in models}
    out["criterion"] = {"holds": holds, "findings_outside_tolerance": failing}
    return out


def recoverability(codec: Codec, train: ImageTable, calib: ImageTable, table: ImageTable, reference: Evaluator,
                   epochs: int = 8, seed: int = 0) -> dict:
    """Is a lost finding gone from the reconstructions, or only unfamiliar to a classifier trained on originals?
    Trains a findings classifier like ``reference`` (``eval.train_evaluators.train_one``: same recipe, thresholds
    from the first half of ``calib``) on ``codec`` of ``train``'s images and scores it on ``codec`` of ``table``'s.
    A finding it cannot recognise either (AUROC near 0.5) has been erased by the codec."""
    from eval.train_evaluators import train_one

    classes = list(reference.spec.classes)
    cols = [CHEXPERT_LABELS.index(c) for c in classes]
    ev = train_one("findings", "multilabel", classes, (codec(train.images), train.labels[:, cols]),
                   (codec(calib.images), calib.labels[:, cols]), reference.spec.image_size, epochs,
                   reference.spec.width, seed, log=lambda _: None)
    s = multilabel_scores(ev.predict_proba(codec(table.images)), table.labels[:, cols], classes,
                          ev.threshold_array().tolist())
    return {"train_images": len(train), "epochs": epochs, **{k: s[k] for k in METRICS},
            "per_class": {c: {k: s["per_class"][c][k] for k in METRICS} for c in classes}}


def _fmt(v: float | None, points: bool = False) -> str:
    return "-" if v is None else f"{v:+.1f}" if points else f"{100 * v:.1f}"


def table_markdown(result: dict) -> str:
    """Markdown table: accuracy / AUROC / F1 (%) on originals -> reconstructions and the change in points."""
    head = ("| model / finding | positives | accuracy orig -> rec (Δ, 95% CI) | AUROC orig -> rec (Δ) "
            "| F1 orig -> rec (Δ) | agreement |\n|---|---|---|---|---|---|")
    rows = [head]

    def row(name: str, s: dict, ci: list, positives: str) -> str:
        o, r, d = s["original"], s["reconstruction"], s["delta_points"]
        acc = f"{_fmt(o['accuracy'])} -> {_fmt(r['accuracy'])} ({_fmt(d['accuracy'], True)}, " \
              f"{ci[0]:+.1f}..{ci[1]:+.1f})"
        cells = [f"{_fmt(o[m])} -> {_fmt(r[m])} ({_fmt(d[m], True)})" for m in ("auroc", "f1")]
        return f"| {name} | {positives} | {acc} | {cells[0]} | {cells[1]} | {100 * s['agreement']:.1f} |"

    if "findings" in result:
        f = result["findings"]
        rows.append(row("**findings (macro)**", f, f["accuracy_delta_ci95"], ""))
        for c, s in f["per_class"].items():
            rows.append(row(c, s, s["accuracy_delta_ci95"], str(s["positives"])))
    for name in ATTRIBUTES:
        if name in result:
            rows.append(row(f"**{name} model**", result[name], result[name]["accuracy_delta_ci95"], ""))
    return "\n".join(rows)


def recoverability_markdown(result: dict) -> str:
    """AUROC / accuracy (%) per finding: shipped classifier on originals, on reconstructions, and a classifier
    trained on reconstructions."""
    f, rec = result["findings"], result["recoverability"]
    rows = ["| finding | shipped clf, originals | shipped clf, reconstructions | retrained on reconstructions |",
            "|---|---|---|---|"]
    for name, o, r, t in [("**macro**", f["original"], f["reconstruction"], rec)] + [
            (c, s["original"], s["reconstruction"], rec["per_class"][c]) for c, s in f["per_class"].items()]:
        rows.append(f"| {name} | " + " | ".join(f"{_fmt(x['auroc'])} / {_fmt(x['accuracy'])}" for x in (o, r, t)) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vq", required=True, help="a saved ProgEmuVQModel folder")
    ap.add_argument("--evaluators", default="runs/evaluators")
    ap.add_argument("--data", required=True, help="data folder read with the foundation loaders")
    ap.add_argument("--source", default="icg-cxr", help="loader format of --data")
    ap.add_argument("--split", default="validate")
    ap.add_argument("--skip", type=int, default=0, help="records of the split left out first")
    ap.add_argument("--n", type=int, default=512, help="images (priors and follow-ups)")
    ap.add_argument("--tolerance", type=float, default=3.0, help="allowed accuracy change in points")
    ap.add_argument("--retrain-pairs", type=int, default=0,
                    help="also train a findings classifier on reconstructions of this many training pairs "
                         "(thresholds from the --skip records; see recoverability)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="JSON result (default: VQ/clinical_fidelity.json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from progemu.modeling_vq import ProgEmuVQModel

    model = ProgEmuVQModel.from_pretrained(args.vq).eval()
    names = [n for n in ("findings", *ATTRIBUTES) if n in available(args.evaluators)]
    if not names:
        raise ProgEmuError(f"{args.evaluators}: no evaluators (train them: python -m eval.train_evaluators)")
    evaluators = {n: Evaluator.load(args.evaluators, n) for n in names}
    table = load_table(args.data, args.split, args.n, int(model.config.image_size), args.source, args.skip)
    result = clinical_fidelity(vq_codec(model), table, evaluators, args.tolerance)
    result.update({"vq": str(args.vq), "evaluators": str(args.evaluators), "data": str(args.data),
                   "split": args.split, "skip": args.skip, "image_size": int(model.config.image_size)})
    print(table_markdown(result))
    if args.retrain_pairs and "findings" in evaluators:
        if not args.skip:
            raise ProgEmuError("--retrain-pairs needs --skip > 0: the skipped records calibrate its thresholds")
        size = int(model.config.image_size)
        train = [r for r in load_records(args.data, args.source) if r.split == "train"][: args.retrain_pairs]
        calib = load_table(args.data, args.split, 2 * args.skip, size, args.source)
        result["recoverability"] = recoverability(vq_codec(model), ImageTable.from_records(train, size), calib,
                                                  table, evaluators["findings"])
        print("\nAUROC / accuracy (%)\n" + recoverability_markdown(result))
    crit = result["criterion"]
    print(f"\n{result['n_images']} images (PSNR {result['psnr']:.2f} dB); accuracy within {args.tolerance:g} points: {crit['holds']}; "
          f"findings outside: {crit['findings_outside_tolerance'] or 'none'}")
    out = Path(args.out or Path(args.vq) / "clinical_fidelity.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
