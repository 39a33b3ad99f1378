"""Rule-based, negation- and uncertainty-aware labeler for the 14 CheXpert findings and change words.

The sentence parsing is the package's (``progemu.findings``: mention -> negation -> uncertainty, normal
statements, de-identified text, chronic findings); this module aggregates its mentions per text as the
CheXpert labeler does.

    >>> label_text("No pneumothorax. Possible small left effusion.").findings
    {'Pneumothorax': 'negative', 'Pleural Effusion': 'uncertain'}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from progemu.data.records import CHEXPERT_LABELS
from progemu.findings import CHANGE_WORDS, NEGATIVE, NO_FINDING, POSITIVE, UNCERTAIN, parse_text

__all__ = ["CHANGE_WORDS", "NEGATIVE", "POSITIVE", "UNCERTAIN", "TextLabels", "label_text", "labels_vector"]
_RANK = {NEGATIVE: 0, UNCERTAIN: 1, POSITIVE: 2}


@dataclass
class TextLabels:
    """What a text says: status per mentioned finding, change per finding, a global change if any."""

    findings: dict[str, str] = field(default_factory=dict)
    changes: dict[str, str] = field(default_factory=dict)
    global_change: str | None = None

    def facts(self) -> set[tuple[str, str]]:
        """The (finding, status) and (finding, change) facts; the global change as ("*", change)."""
        out = {(f, s) for f, s in self.findings.items()} | {(f, c) for f, c in self.changes.items()}
        if self.global_change:
            out.add(("*", self.global_change))
        return out

    def positive(self) -> set[str]:
        return {f for f, s in self.findings.items() if s == POSITIVE}


def label_text(text: str | None) -> TextLabels:
    """Label a report or interpretation. A finding mentioned twice keeps its most definite status
    (positive > uncertain > negative), as the CheXpert labeler aggregates mentions; findings outside the 14
    labels (calcified granuloma, degenerative changes, ...) are left out."""
    parsed = parse_text(text)
    out = TextLabels(global_change=parsed.global_change)
    for m in parsed.mentions:
        if m.label not in CHEXPERT_LABELS:
            continue
        if m.label not in out.findings or _RANK[m.polarity] > _RANK[out.findings[m.label]]:
            out.findings[m.label] = m.polarity
        # a negated "new" ("no new effusion") is not a change; "resolved" is negative by nature
        if m.change and (m.polarity != NEGATIVE or m.change == "resolved") and m.label != NO_FINDING:
            out.changes.setdefault(m.label, m.change)
    return out


def labels_vector(labels: TextLabels) -> dict[str, float]:
    """CheXpert-style values for the mentioned findings: 1 positive, 0 negative, -1 uncertain."""
    value = {POSITIVE: 1.0, NEGATIVE: 0.0, UNCERTAIN: -1.0}
    return {f: value[s] for f, s in labels.findings.items() if f in CHEXPERT_LABELS}
