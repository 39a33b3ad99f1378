"""Classification scores shared by the evaluators' held-out checks and the metrics (AUROC, accuracy, F1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score, roc_curve


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def binary_scores(prob: np.ndarray, truth: np.ndarray, threshold: float | np.ndarray = 0.5) -> dict[str, float | None]:
    """AUROC (None where one class is missing), accuracy and F1 (at ``threshold``, scalar or per element) of
    probabilities vs 0/1 truth."""
    prob, truth = np.asarray(prob, np.float64), np.asarray(truth).astype(int)
    if truth.size == 0:
        return {"auroc": None, "accuracy": None, "f1": None, "n": 0}
    pred = (prob >= threshold).astype(int)
    auroc = float(roc_auc_score(truth, prob)) if 0 < truth.sum() < truth.size else None
    return {"auroc": auroc, "accuracy": float((pred == truth).mean()),
            "f1": float(f1_score(truth, pred, zero_division=0.0)), "n": int(truth.size)}


def youden_thresholds(prob: np.ndarray, truth: np.ndarray) -> list[float]:
    """Per-class threshold maximising sensitivity + specificity (Youden's J); 0.5 where a class lacks a side."""
    out = []
    for j in range(prob.shape[1]):
        known = np.isfinite(truth[:, j])
        t, p = truth[known, j].astype(int), prob[known, j]
        if not 0 < t.sum() < t.size:
            out.append(0.5)
            continue
        fpr, tpr, thr = roc_curve(t, p)
        out.append(float(np.clip(thr[int(np.argmax(tpr - fpr))], 1e-6, 1.0)))
    return out


def multilabel_scores(prob: np.ndarray, truth: np.ndarray, classes: Sequence[str],
                      thresholds: Sequence[float] | None = None) -> dict:
    """Per-class and macro scores; ``truth`` (N, C) holds 0/1 and NaN where the label is missing."""
    per = {}
    for j, name in enumerate(classes):
        known = np.isfinite(truth[:, j])
        per[name] = binary_scores(prob[known, j], truth[known, j], thresholds[j] if thresholds else 0.5)
    return {"auroc": _mean([s["auroc"] for s in per.values()]),
            "accuracy": _mean([s["accuracy"] for s in per.values()]),
            "f1": _mean([s["f1"] for s in per.values()]), "per_class": per,
            "n": int(np.isfinite(truth).any(1).sum())}


def multiclass_scores(prob: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, macro F1 and macro one-vs-rest AUROC; ``truth`` (N,) class indices, -1 where missing."""
    truth = np.asarray(truth).astype(int)
    known = truth >= 0
    prob, truth = prob[known], truth[known]
    if truth.size == 0:
        return {"auroc": None, "accuracy": None, "f1": None, "n": 0, "chance_accuracy": None}
    pred = prob.argmax(1)
    aurocs = [float(roc_auc_score(truth == c, prob[:, c])) for c in range(len(classes))
              if 0 < (truth == c).sum() < truth.size]
    chance = float(np.bincount(truth, minlength=len(classes)).max() / truth.size)
    return {"auroc": _mean(aurocs), "accuracy": float((pred == truth).mean()),
            "f1": float(f1_score(truth, pred, average="macro", labels=list(range(len(classes))), zero_division=0.0)),
            "n": int(truth.size), "chance_accuracy": chance}
