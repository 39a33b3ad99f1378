"""Rule-based, negation- and uncertainty-aware labeler for the 14 CheXpert findings and change words.

In the spirit of the CheXpert / NegBio labelers (mention -> negation -> uncertainty), reduced to rules that
need no downloaded model: a text is split into sentences and clauses; a finding mention is *negative* when a
negation cue governs it in its clause, *uncertain* when a hedge does, else *positive*. Change words in the
same clause (new, resolved, increased, decreased, unchanged) attach to the finding; "resolved" also makes
it negative. A clause with a change word but no finding sets the text's global change ("No significant
interval change." -> unchanged).

    >>> label_text("No pneumothorax. Possible small left effusion.").findings
    {'Pneumothorax': 'negative', 'Pleural Effusion': 'uncertain'}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from progemu.data.records import CHEXPERT_LABELS

POSITIVE, NEGATIVE, UNCERTAIN = "positive", "negative", "uncertain"
CHANGE_WORDS: tuple[str, ...] = ("new", "resolved", "increased", "decreased", "unchanged")

# Mention patterns per CheXpert finding (regex alternatives on lower-cased text).
_FINDINGS: dict[str, str] = {
    "No Finding": r"no acute (?:cardiopulmonary|intrathoracic) (?:process|abnormality|disease)|"
                  r"no (?:acute )?abnormalit(?:y|ies)|normal (?:chest|radiograph|study)",
    "Enlarged Cardiomediastinum": r"(?:enlarged|widened|widening of the) (?:cardio)?mediastin\w*|"
                                  r"mediastinal (?:widening|enlargement)|cardiomediastinal (?:enlargement|widening)",
    "Cardiomegaly": r"cardiomegaly|(?:enlarged|enlargement of the) (?:heart|cardiac silhouette)|"
                    r"(?:heart|cardiac) (?:size|silhouette) (?:is |appears |remains )?(?:enlarged|increased)",
    "Lung Opacity": r"opacit(?:y|ies)|opacification|airspace disease|infiltrat\w*|haziness|hazy",
    "Lung Lesion": r"nodul\w*|mass(?:es)?\b|lesion|tumou?r|neoplasm|granuloma|round opacit(?:y|ies)",
    "Edema": r"o?edema|vascular congestion|pulmonary congestion|interstitial markings|kerley",
    "Consolidation": r"consolidat\w*",
    "Pneumonia": r"pneumonia|infection|infectious process",
    "Atelectasis": r"atelecta\w*|collapse",
    "Pneumothorax": r"pneumothora(?:x|ces)",
    "Pleural Effusion": r"effusion|fluid in the pleural|costophrenic angle blunting|blunting of the \w+ costophrenic|"
                        r"blunted costophrenic|meniscus",
    "Pleural Other": r"pleural (?:thickening|plaque|scarring)|fibrothorax",
    "Fracture": r"fracture\w*",
    # bare "line" is left out: "pleural line" (pneumothorax) and "Kerley B lines" (edema) are not devices
    "Support Devices": r"\btubes?\b|(?:central|venous|picc|arterial|jugular|subclavian|midline|femoral|swan-ganz) "
                       r"(?:venous )?(?:lines?|catheters?)|catheter|pacemaker|pacer|\bdevices?\b|\bwires?\b|"
                       r"\bports?\b|\bstents?\b|\bclips?\b|\bdrains?\b|cannula",
}

def _with_synonyms(patterns: dict[str, str]) -> dict[str, str]:
    """Add the synonyms of the shared finding vocabulary (``progemu.synth.vocabulary``) to the patterns."""
    from progemu.synth.vocabulary import FINDINGS

    out = dict(patterns)
    for spec in FINDINGS.values():
        extra = "|".join(re.escape(w) for w in spec.synonyms)
        out[spec.label] = f"{out[spec.label]}|{extra}" if spec.label in out else extra
    return out


_FINDINGS = _with_synonyms(_FINDINGS)
# Statements that a finding is normal ("heart size is normal") are negations without a cue word.
_NORMAL: dict[str, str] = {
    "Cardiomegaly": r"(?:heart|cardiac) (?:size|silhouette) (?:is |are |appears |remains )?(?:normal|"
                    r"within normal limits|unremarkable)|normal (?:heart size|cardiac silhouette)|"
                    r"(?:heart|cardiac silhouette|heart size) (?:has )?returned to normal",
    "Enlarged Cardiomediastinum": r"(?:cardio)?mediastinal (?:contours?|silhouette) (?:is |are |appears? |remains? )?"
                                  r"(?:normal|unremarkable|within normal limits)",
    "Lung Opacity": r"lungs? (?:are|is|remain|remains) clear|clear lungs",
}
_NEG_PRE = (r"\bno\b|\bnot\b|\bwithout\b|\bnegative for\b|\bfree of\b|\babsence of\b|\babsent\b|\brule[sd]? out\b|"
            r"\bclear of\b|\bnor\b|\bno longer\b|\bdisappear\w*|\bresolution of\b")
_NEG_POST = (r"\b(?:is|are|has|have|was|were)? ?(?:not (?:seen|present|identified|visible|evident|appreciated)|"
             r"absent|resolved|cleared|gone|disappeared|no longer (?:seen|present|visible))\b")
_UNCERTAIN = (r"\bmay\b|\bmight\b|\bcould\b|\bpossibl[ey]\b|\bprobabl[ey]\b|\blikely\b|\bquestionabl[ey]\b|"
              r"\bsuspect\w*|\bsuspicious\b|\bconcern(?:ing)? for\b|\bcannot (?:be )?(?:excluded?|ruled? out)\b|"
              r"\bcan ?not (?:be )?(?:excluded?|ruled? out)\b|\bversus\b|\bvs\.?\b|\bequivocal\b|\bsuggest\w*|"
              r"\buncertain\b|\bdifficult to exclude\b|\bnot excluded\b|\bvs\b|\bconsider\w*|\bpresum\w*|\?")
_CHANGES: dict[str, str] = {
    "resolved": r"\bresol(?:ved|ution)\b|\bcleared\b|\bno longer\b|\bdisappeared\b|\bhas gone\b|\bnow sharp\b|"
                r"\breturned to normal\b",
    "new": r"\bnew(?:ly)?\b|\bdevelop(?:ed|ing|ment)\b|\bappeared\b|\bemerged?\b|\binterval appearance\b|"
           r"\bnow (?:seen|present|visible|noted)\b|\bnot present before\b|\bpreviously (?:sharp|clear|normal)\b",
    "increased": r"\bincreas\w*|\bworse\w*|\bprogress\w*|\blarger\b|\bmore (?:prominent|extensive|conspicuous|"
                 r"numerous)\b|\bgrown\b|\bexpanded\b|\bextend(?:ed|s)\b|\benlarg(?:ed|ing)\b|\bdenser\b|"
                 r"\bthicker\b|\bfurther from\b",
    "decreased": r"\bdecreas\w*|\bimprov\w*|\bsmaller\b|\bless (?:prominent|extensive|conspicuous)\b|\breduc\w*|"
                 r"\bdiminish\w*|\bregress\w*|\bresolving\b|\bshr[iu]nk\w*|\blessened\b|\bfewer\b|"
                 r"\bthinner\b|\bcloser to\b",
    "unchanged": r"\bunchanged\b|\bstable\b|\bno (?:significant |appreciable )?(?:interval )?(?:change|increase|"
                 r"decrease|worsening|improvement)\b|\bpersist\w*|\bremains?\b|\bsimilar\b|\bconstant\b",
}
# "from mild to moderate": the direction of a severity change decides it ("changing from severe to mild").
_SEVERITY_RANK = {"none": 0, "trace": 1, "minimal": 1, "small": 1, "mild": 1, "patchy": 1, "moderate": 2,
                  "moderate-sized": 2, "large": 3, "severe": 3, "extensive": 3}
_TRANSITION = re.compile(r"\bfrom (" + "|".join(_SEVERITY_RANK) + r") to (" + "|".join(_SEVERITY_RANK) + r")\b")
# Clause breakers end the scope of a negation or hedge ("No effusion, but new pneumothorax"; "..., which was
# not present before, suggesting a nodule": the conclusion after "suggesting" / "indicating" is its own clause).
_BREAK = re.compile(r",? *\b(?:but|however|although|though|whereas|while|except|aside from|apart from|which|"
                    r"with the exception of|indicating|suggesting|suggestive of|consistent with|compatible with|"
                    r"in keeping with|representing)\b|;")
# Pseudo-negations: "no change in the effusion" does not negate the effusion (NegBio's pseudo-negation rule).
_PSEUDO_NEG = re.compile(r"\bno (?:significant |appreciable )?(?:interval )?(?:change|increase|decrease|worsening|"
                         r"improvement)\b|\bnot (?:changed|significantly changed)\b")
_SENT = re.compile(r"(?<=[.!?])\s+|\n+|(?<=\.)$")

_FINDING_RES = {k: re.compile(v) for k, v in _FINDINGS.items()}
_NORMAL_RES = {k: re.compile(v) for k, v in _NORMAL.items()}
_NEG_PRE_RE, _NEG_POST_RE, _UNC_RE = re.compile(_NEG_PRE), re.compile(_NEG_POST), re.compile(_UNCERTAIN)
_CHANGE_RES = {k: re.compile(v) for k, v in _CHANGES.items()}


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


def _first_change(clause: str) -> str | None:
    m = _TRANSITION.search(clause)
    if m and _SEVERITY_RANK[m[1]] != _SEVERITY_RANK[m[2]]:
        a, b = _SEVERITY_RANK[m[1]], _SEVERITY_RANK[m[2]]
        return "new" if a == 0 else "resolved" if b == 0 else "increased" if b > a else "decreased"
    hits = [(m.start(), name) for name, rx in _CHANGE_RES.items() for m in [rx.search(clause)] if m]
    return min(hits)[1] if hits else None


def _clause_labels(clause: str) -> tuple[dict[str, str], str | None]:
    """Status per finding mentioned in one clause and the clause's change word."""
    change = _first_change(clause)
    found: dict[str, str] = {}
    for name, rx in _NORMAL_RES.items():
        if rx.search(clause):
            found[name] = NEGATIVE
    for name, rx in _FINDING_RES.items():
        m = rx.search(clause)
        if m is None or name in found:
            continue
        if name == "No Finding":  # its patterns carry their own "no": the statement itself is positive
            found[name] = POSITIVE
            continue
        before, after = _PSEUDO_NEG.sub(" ", clause[: m.start()]), clause[m.end():]
        if _NEG_PRE_RE.search(before) or _NEG_POST_RE.search(after) or change == "resolved":
            found[name] = NEGATIVE
        elif _UNC_RE.search(clause):
            found[name] = UNCERTAIN
        else:
            found[name] = POSITIVE
    return found, change


def label_text(text: str | None) -> TextLabels:
    """Label a report or interpretation. A finding mentioned twice keeps its most definite status
    (positive > uncertain > negative), as the CheXpert labeler aggregates mentions. A finding whose clause has
    no change word takes its sentence's first one ("A round opacity is now seen, suggesting a nodule")."""
    out = TextLabels()
    rank = {NEGATIVE: 0, UNCERTAIN: 1, POSITIVE: 2}
    for sentence in _SENT.split((text or "").lower()):
        clauses = [_clause_labels(c.strip()) for c in _BREAK.split(sentence) if c.strip()]
        sentence_change = next((ch for _, ch in clauses if ch), None)
        if sentence_change and not any(found for found, _ in clauses):
            out.global_change = out.global_change or sentence_change
        for found, change in clauses:
            change = change or sentence_change
            for name, status in found.items():
                if name not in out.findings or rank[status] > rank[out.findings[name]]:
                    out.findings[name] = status
                # a negated "new" ("no new effusion") is not a change; "resolved" is negative by nature
                if change and (status != NEGATIVE or change == "resolved") and name != "No Finding":
                    out.changes.setdefault(name, change)
    return out


def labels_vector(labels: TextLabels) -> dict[str, float]:
    """CheXpert-style values for the mentioned findings: 1 positive, 0 negative, -1 uncertain."""
    value = {POSITIVE: 1.0, NEGATIVE: 0.0, UNCERTAIN: -1.0}
    return {f: value[s] for f, s in labels.findings.items() if f in CHEXPERT_LABELS}
