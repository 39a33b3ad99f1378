"""Text metrics of generated interpretations against references: BLEU-1..4, ROUGE-L, METEOR, clinical label F1.

BLEU is sacrebleu's corpus BLEU (cumulative n-gram order n, as report-generation papers quote BLEU-n), in
[0, 1]. METEOR is NLTK's (exact, Porter-stem and WordNet-synonym matches; alpha 0.9, beta 3, gamma 0.5) on
lower-cased whitespace tokens; its WordNet comes from Debian's package (``eval.wordnet``): where it is absent the
metric is left out and ``text_metrics`` says so in ``notes``.
"""

from __future__ import annotations

from collections.abc import Sequence

from eval.labeler import TextLabels, label_text


def bleu_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 in [0, 1] (sacrebleu, 13a tokenisation, lower-cased)."""
    from sacrebleu.metrics import BLEU

    out = {}
    for n in range(1, 5):
        bleu = BLEU(max_ngram_order=n, lowercase=True)
        out[f"bleu{n}"] = bleu.corpus_score(list(hyps), [list(refs)]).score / 100.0
    return out


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, with stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]
    return float(sum(scores) / len(scores)) if scores else float("nan")


def wordnet_available() -> bool:
    """True when NLTK and its WordNet corpus are installed (METEOR's synonym stage needs it)."""
    from eval.wordnet import wordnet

    return wordnet() is not None


def meteor(hyps: Sequence[str], refs: Sequence[str]) -> float | None:
    """Mean sentence METEOR (NLTK), or None where WordNet data is absent."""
    from eval.wordnet import wordnet

    wn = wordnet()
    if wn is None:
        return None
    from nltk.translate.meteor_score import meteor_score

    scores = [meteor_score([r.lower().split()], h.lower().split(), wordnet=wn) for h, r in zip(hyps, refs)]
    return float(sum(scores) / len(scores)) if scores else float("nan")


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall and F1; 1.0 where nothing was expected and nothing was predicted."""
    p = tp / (tp + fp) if tp + fp else 1.0 if not fn else 0.0
    r = tp / (tp + fn) if tp + fn else 1.0 if not fp else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def clinical_f1(hyp_labels: Sequence[TextLabels], ref_labels: Sequence[TextLabels]) -> dict[str, float]:
    """Micro F1 of the labeler's facts of generated vs reference texts.

    ``clinical_f1``: all facts ((finding, status), (finding, change), global change);
    ``positive_f1``: findings mentioned as present (the CheXbert-style positive-class F1).
    """
    out = {}
    for name, get in (("clinical", TextLabels.facts), ("positive", TextLabels.positive)):
        tp = fp = fn = 0
        for h, r in zip(hyp_labels, ref_labels):
            hs, rs = set(get(h)), set(get(r))
            tp, fp, fn = tp + len(hs & rs), fp + len(hs - rs), fn + len(rs - hs)
        scores = prf(tp, fp, fn)
        out[f"{name}_f1"] = scores["f1"]
        out[f"{name}_precision"] = scores["precision"]
        out[f"{name}_recall"] = scores["recall"]
    return out


def text_metrics(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, object]:
    """All text metrics of one system; ``notes`` lists what was left out and why."""
    hyps = [h or "" for h in hyps]
    refs = [r or "" for r in refs]
    out: dict[str, object] = {"n": len(hyps)}
    if not hyps:
        return out
    out.update(bleu_scores(hyps, refs))
    out["rouge_l"] = rouge_l(hyps, refs)
    m = meteor(hyps, refs)
    if m is None:
        from eval.wordnet import INSTALL_HINT

        out["notes"] = [f"METEOR left out: WordNet data is not installed ({INSTALL_HINT})"]
    else:
        out["meteor"] = m
    out.update(clinical_f1([label_text(h) for h in hyps], [label_text(r) for r in refs]))
    return out
