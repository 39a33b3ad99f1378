"""Evaluate generated counterfactuals against SynthCXR / ICG-CXR ground truth, with floors and ceilings.

Run: ``python -m eval.evaluate --model runs/finetune-tiny/final --data data/synthcxr-128 --out runs/eval``
     (generates first), or ``python -m eval.evaluate --generated OUTDIR --data DIR --out DIR`` (an existing
     ``progemu generate`` folder). Writes ``metrics.json``, ``metrics.md``, ``metrics.png``,
     ``prompted_per_finding.png`` and a self-contained ``report.html``.

Systems on the same items: ``model`` (the outputs), ``identity`` (output = prior, interpretation "No
significant interval change.": the floor) and ``true_followup`` (the registered follow-up and the reference
interpretation: the ceiling), and where the model folder is known (``--model``, or ``--tokenizer-from`` with
``--generated``) ``vq_followup`` (the true follow-up encoded and decoded by the model's processor and VQ: what a
model that predicts every code right would score, so the gap to ``true_followup`` is the tokenizer's and the rest
the model's). Evaluators come from ``--evaluators``: the project's own folder (trained there from ``--data`` when
absent; one without held-out accuracy, or not clearly better than chance, is not used) and, from local weights,
the field's standard networks (``eval.backends``: torchxrayvision, RAD-DINO, CheXbert), e.g.
``--evaluators runs/evaluators,standard=weights``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from eval import train_evaluators
from eval.backends import StandardBackends, load_standard, parse_evaluators
from eval.data import EvalItem, eval_items, load_gray, load_records
from eval.image_metrics import fit, frechet_distance, overlay
from eval.metrics import EvalData, System, evaluate_system
from eval.outputs import load_guidance, read_generated, run_generation
from eval.report import GalleryItem, write_report
from progemu import classifier
from progemu.errors import ProgEmuError
from progemu.io import write_json_atomic

IDENTITY_TEXT = "No significant interval change."


def load_evaluators(folder: Path, notes: list[str]) -> tuple[dict[str, classifier.Evaluator], dict]:
    """The usable evaluators of ``folder`` and every evaluator's spec (for the report)."""
    used, specs = {}, {}
    for name in classifier.available(folder):
        ev = classifier.Evaluator.load(folder, name)
        specs[name] = {"classes": ev.spec.classes, "heldout": ev.spec.heldout, "training": ev.spec.training}
        if ev.spec.heldout.get("reliable"):
            used[name] = ev
        else:
            notes.append(f"evaluator {name} is not clearly better than chance on held-out data; its metrics are left out")
    return used, specs


def load_truth(items: list[EvalItem], size: int) -> EvalData:
    """Priors, true follow-ups and change masks of ``items`` at ``size`` px."""
    priors = np.stack([load_gray(it.prior_path, size) for it in items])
    has_targets = all(it.target_path is not None for it in items)
    targets = np.stack([load_gray(it.target_path, size) for it in items]) if has_targets else None
    masks = [load_gray(it.change_mask_path, size) > 0.5 if it.change_mask_path else None for it in items]
    attrs = {k: [it.attributes.get(k) for it in items] for k in ("sex", "age_group", "race")}
    return EvalData(ids=[it.id for it in items], priors=priors, targets=targets, masks=masks,
                    references=[it.reference for it in items], prompted=[it.prompted_findings() for it in items],
                    target_labels=[it.target_labels for it in items], attributes=attrs)


def vq_round_trip(model_dir: str | Path, paths: list[str | Path], size: int, batch: int = 16) -> np.ndarray:
    """The images at ``paths`` as the model's processor reads them (its ingestion, at the tokenizer's resolution),
    encoded and decoded by the model's image tokenizer (its ``vq/``), at ``size`` px in [0, 1]: (N, size, size)."""
    import torch

    from progemu.emu3_vq import load_image_tokenizer
    from progemu.image_codes import decode_codes, encode_images
    from progemu.processing_progemu import ProgEmuProcessor

    proc = ProgEmuProcessor.from_pretrained(str(model_dir))
    vq = load_image_tokenizer(Path(model_dir) / "vq")  # no transformer needed for a round trip
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            decoded = decode_codes(vq, encode_images(vq, proc, [Path(p) for p in paths[i: i + batch]]))
            out += [fit(np.asarray(im, np.float32), (size, size)) for im in decoded]
    return np.stack(out).astype(np.float32)


def _clean(obj):
    """JSON-safe: NaN / inf as None or strings, numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def produced_by(evaluators: dict, backends: StandardBackends) -> dict[str, str]:
    """Which evaluator made each section's (or metric's) numbers: ``section`` or ``section.key`` -> name."""
    out = {"image": "pixels (scikit-image)", "image.guidance": "guidance map vs true change mask",
           "text.bleu": "sacrebleu", "text.rouge": "rouge-score", "text.meteor": "NLTK (WordNet 3.0)",
           "text.clinical": "rule labeler (progemu.findings)", "text.positive": "rule labeler (progemu.findings)"}
    if "findings" in evaluators:
        ev = evaluators["findings"]
        out["findings"] = f"{ev.spec.name} (own, trained on SynthCXR)" if isinstance(ev, classifier.Evaluator) else ev.spec.name
    attrs = sorted(k for k in evaluators if k != "findings")
    if attrs:
        out["demographics"] = "own: " + ", ".join(attrs)
    if backends.raddino is not None:
        out["image.fid_raddino"] = "rad-dino"
    if backends.chexbert is not None:
        out["text.chexbert"] = "chexbert"
    return out


def evaluate(data_dir: str | Path, out: str | Path, generated: str | Path | None = None, model: str | Path | None = None,
             evaluators_dir: str | Path = "runs/evaluators", source: str = "icg-cxr", split: str = "test",
             limit: int | None = 64, size: int = 128, reference_split: str = "validate", gallery: int = 12,
             generate_args: str = "", guidance_threshold: float = 0.5, tokenizer_from: str | Path | None = None,
             log=print) -> dict:
    """Evaluate and write the report; returns the metrics dict (also written to ``out/metrics.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(data_dir, source)
    items = eval_items(records, split, limit)
    if not items:
        raise ProgEmuError(f"{data_dir}: no {split!r} records to evaluate")
    choice = parse_evaluators(str(evaluators_dir))
    backends = load_standard(choice, log)  # before any generation: a missing weight file fails at once
    if generated is None:
        if model is None:
            raise ProgEmuError("give --generated (an existing output folder) or --model (to generate)")
        log(f"generating {len(items)} counterfactuals with {model}")
        generated = run_generation(model, items, out / "generated", generate_args,
                                   task="edit" if source == "mimic-edit" else "icg")
    gens = read_generated(generated, [it.id for it in items])
    failed = {k: g.error for k, g in gens.items() if g.error}
    items = [it for it in items if not gens[it.id].error]
    notes = [f"{len(failed)} item(s) without outputs are left out of every system"] if failed else []
    if not items:
        raise ProgEmuError(f"{generated}: none of the {len(gens)} items has outputs (first error: "
                           f"{next(iter(failed.values()))})")
    evaluators, specs = {}, {}
    if choice.own is not None:
        if not classifier.available(choice.own):
            log(f"no evaluators in {choice.own}: training them on {data_dir}")
            train_evaluators.main(["--data", str(data_dir), "--out", str(choice.own), "--source", source,
                                   "--size", str(size)])
        evaluators, specs = load_evaluators(choice.own, notes)
    if backends.xrv is not None:
        if "findings" in evaluators:
            notes.append("findings metrics use torchxrayvision's DenseNet-121; the project's own findings classifier "
                         "is listed but not used")
            specs["findings"]["replaced_by"] = backends.xrv.spec.name
        evaluators["findings"] = backends.xrv
    specs.update(backends.specs())
    log(f"evaluating {len(items)} items with evaluators {sorted(evaluators)}")
    data = load_truth(items, size)
    outputs = np.stack([fit(load_gray(gens[it.id].image, size), (size, size)) for it in items])
    guidance = [load_guidance(gens[it.id].guidance) for it in items]
    systems = [System("identity", data.priors, [IDENTITY_TEXT] * len(items)),
               System("model", outputs, [gens[it.id].text for it in items], guidance)]
    if data.targets is not None:
        systems.append(System("true_followup", data.targets, data.references))
        tok = tokenizer_from or (model if model is not None and (Path(model) / "vq" / "config.json").is_file() else None)
        if tok is not None:
            log(f"passing the true follow-ups through the tokenizer of {tok}")
            paths = [it.target_path for it in items]
            systems.append(System("vq_followup", vq_round_trip(tok, paths, size), data.references))
    ref_feats = ref_imgs = None
    if "findings" in evaluators or backends.raddino is not None:
        ref = [r for r in records if r.split == reference_split and r.target_image is not None][:256]
        if len(ref) >= 2:
            ref_imgs = np.stack([load_gray(r.target_image, size) for r in ref])
        else:
            ref_imgs = data.targets if data.targets is not None else data.priors
            notes.append(f"gFID reference = the evaluated items' own follow-ups (no {reference_split!r} split)")
    if "findings" in evaluators:
        ref_feats = evaluators["findings"].features(ref_imgs)
    prior_probs = {k: v.predict_proba(data.priors) for k, v in evaluators.items() if k != "findings"}
    metrics = {"n_items": len(items), "n_failed": len(failed), "failed": failed, "split": split,
               "data": str(data_dir), "model": str(model) if model else None, "generated": str(generated),
               "image_size": size, "guidance_threshold": guidance_threshold, "evaluators": specs, "notes": notes, "systems": {}}
    metrics["produced_by"] = produced_by(evaluators, backends)
    for sys_ in systems:
        metrics["systems"][sys_.name] = evaluate_system(sys_, data, evaluators, ref_feats, prior_probs,
                                                        guidance_threshold)
    standard_metrics(backends, systems, data.references, ref_imgs, metrics, notes)
    for sys_ in metrics["systems"].values():
        for n in sys_.get("text", {}).pop("notes", []):
            notes.append(n) if n not in notes else None
    if "findings" in evaluators:
        notes.append(f"gFID uses the findings classifier's ({metrics['produced_by']['findings']}) pooled features (not "
                     f"Inception), against {len(ref_feats)} real follow-ups; with few items it is biased upwards "
                     "(compare systems only)")
    metrics = _clean(metrics)
    write_json_atomic(out / "metrics.json", metrics)
    shown = items[:gallery]
    gal = [GalleryItem(it.id, it.prompt, gens[it.id].text, it.reference, data.priors[i], outputs[i],
                       None if data.targets is None else data.targets[i],
                       None if guidance[i] is None else overlay(data.priors[i], guidance[i]))
           for i, it in enumerate(shown)]
    paths = write_report(metrics, gal, out)
    log(f"report: {paths['html']}")
    return metrics


def standard_metrics(backends: StandardBackends, systems: list[System], references: list[str],
                     ref_imgs: np.ndarray | None, metrics: dict, notes: list[str]) -> None:
    """RAD-DINO FID (``image.fid_raddino``) and F1-CheXbert (``text.chexbert_f1``, ``chexbert_f1_5``) per system."""
    if backends.raddino is not None and ref_imgs is not None:
        ref = backends.raddino.features(ref_imgs).astype(np.float64)
        for sys_ in systems:
            if len(sys_.images) > 1:
                feats = backends.raddino.features(sys_.images).astype(np.float64)
                metrics["systems"][sys_.name]["image"]["fid_raddino"] = frechet_distance(feats, ref)
        notes.append(f"FID (RAD-DINO) as CheXGenBench computes it (299 px RGB, RAD-DINO's processor, CLS features), "
                     f"against {len(ref)} real follow-ups; with few items it is biased upwards")
    if backends.chexbert is not None:
        from eval.chexbert import chexbert_f1

        # each distinct text labelled once: the identity floor repeats one text, the ceilings repeat the references
        distinct = list(dict.fromkeys([*references, *(t for sys_ in systems for t in sys_.texts)]))
        by_text = dict(zip(distinct, backends.chexbert.label(distinct), strict=True))
        ref_labels = np.stack([by_text[t] for t in references])
        for sys_ in systems:
            hyp = np.stack([by_text[t] for t in sys_.texts])
            metrics["systems"][sys_.name]["text"].update(chexbert_f1(hyp, ref_labels))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="data folder with ground truth (SynthCXR / ICG-CXR)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="model folder; generation runs into OUT/generated unless --generated is given")
    ap.add_argument("--generated", help="an existing `progemu generate` output folder")
    ap.add_argument("--evaluators", default="runs/evaluators",
                    help="own evaluators' folder and/or standard networks: DIR,xrv=FILE,raddino=DIR,chexbert=FILE,"
                         "bert=DIR or standard=DIR (eval/README.md)")
    ap.add_argument("--source", default="icg-cxr")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=64, help="items evaluated at most (0: all)")
    ap.add_argument("--size", type=int, default=128, help="evaluation resolution (px)")
    ap.add_argument("--gallery", type=int, default=12, help="items shown in report.html")
    ap.add_argument("--guidance-threshold", type=float, default=0.5, help="guidance map threshold for its IoU")
    ap.add_argument("--generate-args", default="", help="extra arguments for `progemu generate` (quoted)")
    ap.add_argument("--tokenizer-from", help="model folder whose processor and VQ make the 'true follow-up through the "
                                             "VQ' system (default: --model)")
    args = ap.parse_args(argv)
    try:
        m = evaluate(args.data, args.out, args.generated, args.model, args.evaluators, args.source, args.split,
                     args.limit or None, args.size, gallery=args.gallery, generate_args=args.generate_args,
                     guidance_threshold=args.guidance_threshold, tokenizer_from=args.tokenizer_from)
    except ProgEmuError as err:
        print(f"eval.evaluate: error: {err}", file=sys.stderr)
        return 2
    model = m["systems"]["model"]
    for sec, key in (("findings", "prompted_state_found"), ("text", "clinical_f1"), ("image", "ssim_outside_change"),
                     ("demographics", "sex_accuracy"), ("demographics", "age_group_accuracy")):
        print(f"{key}: {model.get(sec, {}).get(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
