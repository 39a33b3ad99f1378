"""All metrics of one system (a model's outputs, the identity floor or the true follow-up ceiling) on the same
evaluation items, with the evaluators' held-out accuracy recorded next to what they produced.

A *system* is, per item, an output image ((S, S) in [0, 1]), an interpretation text and optionally a guidance
map; the items bring the prior, the true follow-up, the change mask, labels and attributes (``EvalData``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eval.image_metrics import frechet_distance, guidance_scores, psnr, ssim, ssim_outside
from eval.labeler import NEGATIVE, POSITIVE, label_text
from eval.scores import binary_scores, multilabel_scores
from eval.text_metrics import text_metrics
from progemu.classifier import Evaluator


@dataclass
class EvalData:
    """Ground truth of N items, loaded at one size S: priors / targets (N, S, S), masks (N, S, S) bool or None."""

    ids: list[str]
    priors: np.ndarray
    targets: np.ndarray | None
    masks: list[np.ndarray | None]
    references: list[str]
    prompted: list[dict[str, float]]  # per item {finding: follow-up state} of the findings the prompt changes
    target_labels: list[dict[str, float]]
    attributes: dict[str, list[str | None]]


@dataclass
class System:
    """What one system produced for the same N items."""

    name: str
    images: np.ndarray  # (N, S, S)
    texts: list[str]
    guidance: list[np.ndarray | None] | None = None


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def image_metrics(sys: System, data: EvalData, guidance_threshold: float = 0.5) -> dict:
    """SSIM / PSNR vs the true counterfactual, SSIM outside the change region vs the prior, guidance scores."""
    out: dict = {}
    if data.targets is not None:
        out["ssim"] = _mean([ssim(a, b) for a, b in zip(sys.images, data.targets)])
        ps = [psnr(a, b) for a, b in zip(sys.images, data.targets)]
        out["psnr"] = _mean(ps)  # identical pairs (inf) are left out of the mean and counted
        out["psnr_identical_items"] = int(sum(np.isinf(p) for p in ps))
    outside = [ssim_outside(img, prior, m) for img, prior, m in zip(sys.images, data.priors, data.masks) if m is not None]
    out["ssim_outside_change"] = _mean(outside)
    out["n_with_change_mask"] = len(outside)
    if sys.guidance is not None:
        pairs = [guidance_scores(g, m, guidance_threshold) for g, m in zip(sys.guidance, data.masks) if g is not None and m is not None
                 and m.any()]
        out["guidance_iou"] = _mean([p["iou"] for p in pairs])
        out["guidance_auroc"] = _mean([p["auroc"] for p in pairs])
        out["n_guidance"] = len(pairs)
        # items where nothing changes (an empty true change region): the map should stay empty there
        still = [float(np.mean(g)) for g, m in zip(sys.guidance, data.masks) if g is not None and m is not None
                 and not m.any()]
        out["guidance_mass_no_change"] = _mean(still)
        out["n_guidance_no_change"] = len(still)
    return out


def finding_metrics(sys: System, data: EvalData, clf: Evaluator, reference_feats: np.ndarray | None) -> dict:
    """gFID, progression alignment (classifier vs follow-up labels), prompted-state-found rate, consistency."""
    classes = clf.spec.classes
    probs = clf.predict_proba(sys.images)  # (N, C)
    thr = clf.threshold_array()  # (C,) calibrated on held-out data
    out: dict = {}
    if reference_feats is not None and len(sys.images) > 1:
        out["gfid"] = frechet_distance(clf.features(sys.images).astype(np.float64), reference_feats.astype(np.float64))
    truth = np.array([[t.get(c, np.nan) if t.get(c) in (0.0, 1.0) else np.nan for c in classes]
                      for t in data.target_labels], np.float64).reshape(len(probs), len(classes))
    allf = multilabel_scores(probs, truth, classes, list(thr))
    out.update({"all_findings_auroc": allf["auroc"], "all_findings_f1": allf["f1"]})
    p, t, th, found, per = [], [], [], [], {}
    for i, prompted in enumerate(data.prompted):
        states = {f: s for f, s in prompted.items() if f in classes}
        if not states:
            continue
        ok = True
        for f, s in states.items():
            j = classes.index(f)
            p.append(probs[i, j])
            t.append(s)
            th.append(thr[j])
            hit = (probs[i, j] >= thr[j]) == (s == 1.0)
            ok &= bool(hit)
            per.setdefault(f, []).append(float(hit))
        found.append(float(ok))
    pr = binary_scores(np.array(p), np.array(t), np.array(th))
    out.update({"prompted_auroc": pr["auroc"], "prompted_f1": pr["f1"], "prompted_accuracy": pr["accuracy"],
                "prompted_state_found": _mean(found), "n_prompted_items": len(found),
                "prompted_state_found_per_finding": {f: _mean(v) for f, v in sorted(per.items())}})
    agree = []
    for i, text in enumerate(sys.texts):
        for f, status in label_text(text).findings.items():
            if f in classes and status in (POSITIVE, NEGATIVE):
                j = classes.index(f)
                agree.append(float((probs[i, j] >= thr[j]) == (status == POSITIVE)))
    out["consistency"] = _mean(agree)
    out["n_consistency_mentions"] = len(agree)
    return out


def attribute_metrics(sys: System, data: EvalData, models: dict[str, Evaluator], prior_probs: dict[str, np.ndarray]) -> dict:
    """Demographic preservation: accuracy of each attribute model on the outputs against the item's true
    attribute, agreement with its reading of the prior, and (ordinal age group) the correlation of expected
    group index between output and prior."""
    out: dict = {}
    for name, model in models.items():
        classes = model.spec.classes
        probs = model.predict_proba(sys.images)
        true = [classes.index(v) if v in classes else -1 for v in data.attributes.get(name, [])]
        known = np.array(true) >= 0
        pred, prior_pred = probs.argmax(1), prior_probs[name].argmax(1)
        out[f"{name}_accuracy"] = float((pred[known] == np.array(true)[known]).mean()) if known.any() else None
        out[f"{name}_agreement_with_prior"] = float((pred == prior_pred).mean()) if len(pred) else None
        if name == "age_group" and len(pred) > 2:
            idx = np.arange(len(classes))
            a, b = probs @ idx, prior_probs[name] @ idx
            out["age_group_correlation"] = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None
    return out


def evaluate_system(sys: System, data: EvalData, evaluators: dict[str, Evaluator],
                    reference_feats: np.ndarray | None, prior_probs: dict[str, np.ndarray],
                    guidance_threshold: float = 0.5) -> dict:
    """Every metric of one system: ``image``, ``findings``, ``demographics``, ``text`` sections."""
    out = {"n": len(sys.images), "image": image_metrics(sys, data, guidance_threshold),
           "text": text_metrics(sys.texts, data.references)}
    if "findings" in evaluators:
        out["findings"] = finding_metrics(sys, data, evaluators["findings"], reference_feats)
    attrs = {k: v for k, v in evaluators.items() if k != "findings"}
    if attrs:
        out["demographics"] = attribute_metrics(sys, data, attrs, prior_probs)
    return out
