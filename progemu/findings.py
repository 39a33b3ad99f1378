"""The package's one finding vocabulary and one negation-aware sentence parser for radiology text (reports,
prompts, interpretations, edit instructions). The synthetic generator (``progemu.synth``), region selection
(``progemu.generation.region``), prompt augmentation (``train.examples``) and the labeler (``eval.labeler``) all
read findings through it.

``FINDINGS``: the SynthCXR findings that prompts edit (key, name, synonyms, CheXpert label and parents, side,
zones); their synonyms join the CheXpert mention patterns, and ``Mention.key`` maps a mention back to its key.

In the spirit of the CheXpert / NegBio labelers (mention -> negation -> uncertainty), as rules that need no
model. A text is normalised (lower case; de-identification placeholders such as ``XXXX`` / ``___`` become one
neutral word), split into sentences and clauses. Per clause, in order:

1. findings outside the 14 CheXpert labels that share their words are taken out first (``calcified
   granuloma``, ``pericardial effusion``, ``degenerative changes``): they are mentions, never a CheXpert label;
2. "normal" summaries ("No acute cardiopulmonary process") are a positive *No Finding*;
3. statements that something is normal ("heart size is normal", "the lungs are clear") negate their finding;
4. each finding's first mention is *negative* when a negation cue governs it ("no", "without", "... is not
   seen", "has resolved"), *uncertain* when a hedge does ("possible", "may represent", "cannot be excluded",
   "A or B"), else *positive*; "X may represent Y" hedges Y only;
5. a subject list that is said to be normal ("The heart, mediastinum and pulmonary vasculature are within
   normal limits") negates the findings not mentioned otherwise.

Change words (new, increased, decreased, resolved, unchanged) and side words attach to the findings of their
clause, else of their sentence; a sentence with a change word and no finding sets the text's global change.

    >>> [(m.label, m.polarity, m.side) for m in parse_text("No pneumothorax. Possible small left effusion.").mentions]
    [('Pneumothorax', 'negative', None), ('Pleural Effusion', 'uncertain', 'left')]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

POSITIVE, NEGATIVE, UNCERTAIN = "positive", "negative", "uncertain"
CHANGE_WORDS: tuple[str, ...] = ("new", "resolved", "increased", "decreased", "unchanged")
# the same changes in SynthCXR's words (progemu.synth.vocabulary.CHANGE_TYPES)
SYNTH_CHANGE: dict[str, str] = {"new": "new", "resolved": "resolved", "increased": "worsened",
                                "decreased": "improved", "unchanged": "unchanged"}
NO_FINDING = "No Finding"


# The findings SynthCXR draws and prompts edit, with their canonical keys; region selection bounds an edit by the
# anatomy of these keys, and the evaluation maps them to CheXpert labels.
@dataclass(frozen=True)
class FindingSpec:
    """One finding type: canonical key, names, CheXpert label, side and where it may sit."""

    key: str
    name: str  # as used in "Add the finding of <name>"
    label: str  # CheXpert label set to 1.0 when present
    parents: tuple[str, ...]  # CheXpert parent labels implied by it
    synonyms: tuple[str, ...]  # phrases a report may use (lower case), the name first
    lateral: bool  # has a side (right / left)
    zones: tuple[str, ...]  # lung zones it may occupy; () when the location is fixed
    size_words: tuple[str, str, str]  # words for mild / moderate / severe in reports ("small", ...)


ZONES: tuple[str, ...] = ("upper", "middle", "lower")
FINDINGS: dict[str, FindingSpec] = {
    spec.key: spec
    for spec in (
        FindingSpec("pleural_effusion", "pleural effusion", "Pleural Effusion", (),
                    ("pleural effusion", "effusion", "pleural fluid"), True, ("lower",),
                    ("small", "moderate", "large")),
        FindingSpec("cardiomegaly", "cardiomegaly", "Cardiomegaly", ("Enlarged Cardiomediastinum",),
                    ("cardiomegaly", "enlarged cardiac silhouette", "enlargement of the cardiac silhouette",
                     "cardiac enlargement"), False, (), ("mild", "moderate", "severe")),
        FindingSpec("consolidation", "consolidation", "Consolidation", ("Lung Opacity",),
                    ("consolidation", "airspace opacity", "airspace consolidation", "airspace disease"), True,
                    ZONES, ("patchy", "moderate", "extensive")),
        FindingSpec("edema", "edema", "Edema", ("Lung Opacity",),
                    ("pulmonary edema", "edema", "interstitial edema", "alveolar edema"), False, (),
                    ("mild", "moderate", "severe")),
        FindingSpec("pneumothorax", "pneumothorax", "Pneumothorax", (),
                    ("pneumothorax",), True, ("upper",), ("small", "moderate", "large")),
        FindingSpec("atelectasis", "atelectasis", "Atelectasis", ("Lung Opacity",),
                    ("atelectasis", "plate-like atelectasis", "subsegmental atelectasis", "linear atelectasis"), True,
                    ("lower", "middle"), ("minimal", "moderate", "extensive")),
        FindingSpec("nodule", "lung nodule", "Lung Lesion", ("Lung Opacity",),
                    ("nodule", "pulmonary nodule", "nodular opacity", "mass", "lung nodule"), True, ZONES,
                    ("small", "moderate-sized", "large")),
    )
}
FINDING_KEYS: tuple[str, ...] = tuple(FINDINGS)
# the SynthCXR key of each CheXpert label that exactly one finding sets
_KEY_OF_LABEL: dict[str, str] = {s.label: k for k, s in FINDINGS.items()
                                 if sum(t.label == s.label for t in FINDINGS.values()) == 1}


def resolve_finding(text: str) -> str:
    """The canonical key of a finding given its key, name, CheXpert label or a synonym (case-insensitive)."""
    t = text.strip().lower().replace("_", " ")
    for key, spec in FINDINGS.items():
        if t in (key.replace("_", " "), spec.name, spec.label.lower()) or t in spec.synonyms:
            return key
    raise KeyError(f"unknown finding {text!r}; known: {', '.join(FINDINGS)}")


# Mention patterns per CheXpert finding (regex alternatives on normalised text); SynthCXR's synonyms are added.
MENTIONS: dict[str, str] = {
    NO_FINDING: r"no (?:radiographic )?(?:evidence of )?(?:any )?(?:acute|active) (?:(?:cardiopulmonary|intrathoracic|"
                r"pulmonary|lung|chest|cardiac or pulmonary|thoracic) )?(?:process|abnormalit(?:y|ies)|disease|"
                r"findings?|pathology)|no (?:acute )?abnormalit(?:y|ies)(?! of)|normal (?:chest|radiograph|study|"
                r"exam(?:ination)?)|no (?:acute )?(?:radiographic )?(?:cardiopulmonary|intrathoracic) "
                r"(?:process|abnormalit(?:y|ies)|disease|findings?)",
    "Enlarged Cardiomediastinum": r"(?:enlarged|widened|widening of the|prominent) (?:cardio)?mediastin\w*|"
                                  r"mediastinal (?:widening|enlargement)|cardiomediastinal (?:enlargement|widening)|"
                                  r"(?:cardio)?mediastin(?:um|al contours?|al silhouette) (?:is |are |appears? )?"
                                  r"(?:\w+ )?(?:widened|enlarged)",
    "Cardiomegaly": r"cardiomegaly|(?:enlarged|enlargement of the) (?:heart|cardiac silhouette)|cardiac enlargement|"
                    r"(?:heart|cardiac) (?:size|silhouette) (?:is |appears |remains )?(?:enlarged|increased)|"
                    r"(?:the heart|heart size|cardiac (?:silhouette|size|shadow|contour)) (?:is |are |appears |remains |"
                    r"has )?(?:\w+ )?(?:enlarged|large)\b|(?:heart size|cardiac silhouette|the heart|heart) (?:is )?"
                    r"(?:at )?(?:the )?(?:upper limits? of normal|borderline)",
    "Lung Opacity": r"opacit(?:y|ies)|opacification|airspace (?:disease|process)|infiltrat\w*|haziness|hazy|"
                    r"ground[- ]glass|(?:increased|hazy|patchy|streaky) densit(?:y|ies)",
    "Lung Lesion": r"nodul\w*|mass(?:es)?\b|lesion|tumou?r|neoplasm|carcinoma|malignan\w*|metasta\w*|"
                   r"round opacit(?:y|ies)",
    "Edema": r"o?edema|vascular congestion|pulmonary congestion|interstitial markings|kerley|cephalization|"
             r"fluid overload|congestive heart failure|\bchf\b",
    "Consolidation": r"consolidat\w*|air bronchograms?",
    "Pneumonia": r"pneumonia|infection|infectious process",
    "Atelectasis": r"atelecta\w*|collapse",
    "Pneumothorax": r"pneumothora(?:x|ces)",
    "Pleural Effusion": r"effusion|fluid in the pleural|pleural fluid|layering fluid|costophrenic angle blunting|"
                        r"blunting of the (?:\w+ )?(?:costophrenic|cp) angle|blunted (?:\w+ )?costophrenic|"
                        r"(?:costophrenic|cp) angles? (?:is |are )?blunted|meniscus",
    "Pleural Other": r"pleural (?:thickening|plaques?|scarring|calcification)|fibrothorax|apical (?:pleural )?cap",
    "Fracture": r"fracture\w*|\bfx\b",
    # bare "line" is left out: "pleural line" (pneumothorax) and "Kerley B lines" (edema) are not devices
    "Support Devices": r"\btubes?\b|(?:central|venous|picc|arterial|jugular|subclavian|midline|femoral|swan-ganz) "
                       r"(?:venous )?(?:lines?|catheters?)|catheter|pacemaker|pacer|\bdevices?\b|\bwires?\b|"
                       r"\bports?\b|\bstents?\b|\bclips?\b|\bdrains?\b|cannula|\bpicc\b|defibrillator|\baicd\b|"
                       r"\bicd\b|sternotomy|prosthetic valve|valve replacement|hardware",
}
# Findings outside the 14 labels whose words overlap theirs: matched first and taken out of the clause.
OTHER: dict[str, str] = {
    "Calcified Granuloma": r"(?:calcified )?granulomas?\b|granulomatous (?:disease|changes?)|calcified (?:lymph )?nodes?",
    "Pericardial Effusion": r"pericardial effusion",
    "Degenerative Change": r"degenerative (?:changes?|disease)|spondylosis|osteophyt\w*|(?:dextro)?scoliosis",
    "Emphysema": r"emphysema\w*|hyperinflat\w*|hyperexpan\w*|\bcopd\b|chronic obstructive",
    "Scarring": r"(?<!pleural )scar(?:ring)?\b|fibrotic changes?|fibrosis",
    "Aortic Atherosclerosis": r"(?:aortic|atherosclerotic) calcifications?|tortuous (?:thoracic )?aorta|"
                              r"tortuosity of the (?:thoracic )?aorta|atherosclero\w*",
}
# Statements that a finding is normal ("heart size is normal") are negations without a cue word.
NORMAL: dict[str, str] = {
    "Cardiomegaly": r"(?:heart|cardiac) (?:size|silhouette) (?:is |are |appears |remains )?(?:normal|"
                    r"within normal limits|unremarkable)|normal (?:heart size|cardiac silhouette|heart)|"
                    r"(?:heart|cardiac silhouette|heart size) (?:has )?returned to normal|"
                    r"(?:the heart|heart size|cardiac silhouette) (?:is |appears )?(?:normal in size|not enlarged)",
    "Enlarged Cardiomediastinum": r"(?:cardio)?mediastinal (?:contours?|silhouette) (?:is |are |appears? |remains? )?"
                                  r"(?:normal|unremarkable|within normal limits)|normal (?:cardio)?mediastinal",
    "Lung Opacity": r"lungs? (?:fields? )?(?:are|is|remain|remains|appear)(?: [\w-]+){0,3}? clear\b|clear lungs",
    "Pleural Effusion": r"(?:costophrenic|cp) angles? (?:is |are |remain )?(?:sharp|clear)",
}
# Subjects of "... are within normal limits" and the finding their normality denies.
NORMAL_SUBJECTS: dict[str, str] = {"Cardiomegaly": r"\bheart\b|\bcardiac\b",
                                   "Enlarged Cardiomediastinum": r"mediastin\w*",
                                   "Edema": r"pulmonary (?:vascularity|vasculature|vessels)|vascularity|vasculature"}
_NORMAL_PREDICATE = re.compile(r"\b(?:are|is|appears?|remains?)? ?(?:\w+ )?(?:normal|within normal limits|"
                               r"unremarkable)\b")
_CHRONIC = re.compile(r"\b(?:chronic\w*|old|healed|healing|remote|longstanding|long-standing|calcified|"
                      r"degenerative|post-?surgical|postoperative|known)\b")
_SIDE = re.compile(r"\b(?:right|left|bilateral(?:ly)?|bibasilar|bibasal|biapical|both)\b")

NEG_PRE = (r"\bno\b|\bnot\b|\bwithout\b|\bnegative for\b|\bfree of\b|\babsence of\b|\babsent\b|\bruled out\b|"
           r"\bclear of\b|\bnor\b|\bno longer\b|\bdisappear\w*|\bresolution of\b|\bremoval of\b")
NEG_POST = (r"\b(?:is|are|has|have|was|were)? ?(?:not (?:seen|present|identified|visible|evident|appreciated|"
            r"demonstrated|noted)|absent|resolved|cleared|gone|disappeared|no longer (?:seen|present|visible)|"
            r"(?:has|have) been ruled out|(?:has|have) been removed|removed)\b")
HEDGES = (r"\bmay\b|\bmight\b|\bcould\b|\bpossibl[ey]\b|\bprobabl[ey]\b|\blikely\b|\bquestionabl[ey]\b|"
          r"\bsuspect\w*|\bsuspicious\b|\bconcern(?:ing)? for\b|\bcannot (?:be )?(?:excluded?|ruled? out)\b|"
          r"\bcan ?not (?:be )?(?:excluded?|ruled? out)\b|\bversus\b|\bvs\.?\b|\bequivocal\b|\bsuggest\w*|"
          r"\buncertain\b|\bdifficult to exclude\b|\bnot excluded\b|\bvs\b|\bconsider\w*|\bpresum\w*|\?|"
          r"\bborderline\b|\bindeterminate\b|\bnot (?:be )?(?:entirely |completely )?(?:excluded|ruled out)\b|"
          r"\bcan't (?:be )?(?:excluded?|ruled? out)\b|\braises? the possibility\b|\bquestion of\b|"
          r"\bdifferential\b|\brule out\b|\br/o\b|\bto exclude\b|\bupper limits? of normal\b|\bvs\b")
# hedges whose words contain a negation cue: taken out before negation is looked for ("cannot be excluded")
_HEDGED_NEGATION = re.compile(r"\bcan ?not (?:be )?(?:entirely |completely |totally )?(?:excluded?|ruled? out)\b|"
                              r"\bnot (?:be )?(?:entirely |completely |totally )?(?:excluded|ruled out)\b|"
                              r"\bcan't (?:be )?(?:excluded?|ruled? out)\b")
# Hedging predicates after a mention ("Pneumonia cannot be excluded", "Atelectasis is likely"); "X may represent Y"
# hedges Y only (the hedge words stand before Y).
POST_HEDGES = (r"\b(?:cannot|can ?not|can't) (?:be )?(?:entirely |completely |totally )?(?:excluded|ruled out)\b|"
               r"\bnot (?:be )?(?:entirely |completely )?(?:excluded|ruled out)\b|\bdifficult to exclude\b|"
               r"\b(?:is|are|was|were) (?:\w+ )?(?:likely|possible|probable|suspected|questioned|questionable|favou?red|"
               r"a consideration|not excluded)\b|\b(?:may|might|could) (?:also )?(?:be )?(?:present|seen|noted|"
               r"developing|forming)\b|\?")
CHANGES: dict[str, str] = {
    "resolved": r"\bresol(?:ved|ution)\b|\bcleared\b|\bno longer\b|\bdisappeared\b|\bhas gone\b|\bnow sharp\b|"
                r"\breturned to normal\b",
    "new": r"\bnew(?:ly)?\b|\bdevelop(?:ed|ing|ment)\b|\bappeared\b|\bemerged?\b|\binterval appearance\b|"
           r"\bnow (?:seen|present|visible|noted)\b|\bnot present before\b|\bpreviously (?:sharp|clear|normal)\b",
    "increased": r"\bincreas\w*|\bworse\w*|\bprogress\w*|\blarger\b|\bmore (?:prominent|extensive|conspicuous|"
                 r"numerous)\b|\bgrown\b|\bexpanded\b|\bextend(?:ed|s)\b|\b(?:has|have|had) (?:\w+ )?enlarged\b|"
                 r"\benlarging\b|\bdenser\b|"
                 r"\bthicker\b|\bfurther from\b",
    "decreased": r"\bdecreas\w*|\bimprov\w*|\bsmaller\b|\bless (?:prominent|extensive|conspicuous)\b|\breduc\w*|"
                 r"\bdiminish\w*|\bregress\w*|\bresolving\b|\bshr[iu]nk\w*|\blessened\b|\bfewer\b|"
                 r"\bthinner\b|\bcloser to\b",
    "unchanged": r"\bunchanged\b|\bstable\b|\bno (?:significant |appreciable )?(?:interval )?(?:change|increase|"
                 r"decrease|worsening|improvement)\b|\bpersist\w*|\bremains?\b|\bsimilar\b|\bconstant\b|"
                 r"\bagain (?:seen|noted|demonstrated)\b|\bredemonstrat\w*",
}
# "from mild to moderate": the direction of a severity change decides it ("changing from severe to mild").
_SEVERITY_RANK = {"none": 0, "trace": 1, "minimal": 1, "small": 1, "mild": 1, "patchy": 1, "moderate": 2,
                  "moderate-sized": 2, "large": 3, "severe": 3, "extensive": 3}
_TRANSITION = re.compile(r"\bfrom (" + "|".join(_SEVERITY_RANK) + r") to (" + "|".join(_SEVERITY_RANK) + r")\b")
# Clause breakers end the scope of a negation or hedge ("No effusion, but new pneumothorax"; "..., which was
# not present before, suggesting a nodule": the conclusion after "suggesting" / "indicating" is its own clause).
_BREAK = re.compile(r",? *\b(?:but|however|although|though|whereas|while|except|aside from|apart from|which|"
                    r"with the exception of|indicating|suggesting|suggestive of|consistent with|compatible with|"
                    r"in keeping with|representing|and there (?:is|are)|and(?= the\b)|otherwise)\b|;|, there (?:is|are)\b|"
                    # a comma before a new statement: "No effusion, new left pneumothorax", "No pneumothorax, the
                    # effusion has increased" (a list's shared verb, "..., or consolidation is seen", does not break)
                    # (nor does a list's next item: "No pneumothorax, new or increased effusion", "..., or edema has
                    # developed")
                    r",(?! *new (?:or|and)\b) *(?=(?:a |an )?(?:new|newly|increased|increasing|worsened|worsening|"
                    r"developing|enlarging)\b[^,]*$)|"
                    r",(?! *(?:or|and|nor)\b) *(?=[a-z -]{0,40}\b(?:has|have|is|are) (?:now )?(?:increased|worsened|"
                    r"developed|appeared|enlarged|progressed|decreased|improved|resolved|new)\b)")
# Pseudo-negations: "no change in the effusion" does not negate the effusion (NegBio's pseudo-negation rule).
_PSEUDO_NEG = re.compile(r"\bno (?:significant |appreciable )?(?:interval )?(?:change|increase|decrease|worsening|"
                         r"improvement)\b|\bnot (?:changed|significantly changed)\b")
_ALTERNATIVE = re.compile(r"^,? *(?:or|versus|vs\.?|and/or|or possibly|or less likely)$")
_SENT = re.compile(r"(?<=[.!?])\s+|\n+|(?<=\.)$")
_PLACEHOLDER = re.compile(r"\bx{2,}\b|_{2,}")
_NEG_PRE_RE, _NEG_POST_RE, _HEDGE_RE = re.compile(NEG_PRE), re.compile(NEG_POST), re.compile(HEDGES)
_POST_HEDGE_RE = re.compile(POST_HEDGES)
_CHANGE_RES = {k: re.compile(v) for k, v in CHANGES.items()}
_OTHER_RES = {k: re.compile(v) for k, v in OTHER.items()}
_NORMAL_RES = {k: re.compile(v) for k, v in NORMAL.items()}
_SUBJECT_RES = {k: re.compile(v) for k, v in NORMAL_SUBJECTS.items()}


# SynthCXR lists it under consolidation, but reports use it for any airspace opacity (CheXpert: Lung Opacity),
# and SynthCXR's texts never write it
_OPACITY_ONLY = {"airspace disease"}


def _with_synonyms(patterns: dict[str, str]) -> dict[str, re.Pattern]:
    out = dict(patterns)
    for spec in FINDINGS.values():
        words = [w for w in spec.synonyms if w not in _OPACITY_ONLY]
        out[spec.label] = f"{out[spec.label]}|" + "|".join(re.escape(w) for w in words)
    return {k: re.compile(v) for k, v in out.items()}


_MENTION_RES = _with_synonyms(MENTIONS)


def finding_key(label: str) -> str | None:
    """The SynthCXR finding key (``pleural_effusion``) whose own CheXpert label is ``label``, if exactly one."""
    return _KEY_OF_LABEL.get(label)


@dataclass(frozen=True)
class Mention:
    """One finding as a sentence states it."""

    label: str  # CheXpert label ("Pleural Effusion"), "No Finding", or a name of ``OTHER`` ("Calcified Granuloma")
    polarity: str  # positive / negative / uncertain
    side: str | None = None  # right / left / bilateral, the side word nearest to the mention in its clause
    change: str | None = None  # one of CHANGE_WORDS
    chronic: bool = False  # "old", "healed", "calcified", "chronic", "degenerative" ...
    sentence: int = 0  # index of its sentence in the text
    text: str = ""  # the words that named it
    normal: bool = False  # a statement that the organ is normal ("The heart size is normal."), not a finding's name

    @property
    def key(self) -> str | None:
        """The SynthCXR finding key, where the label has one."""
        return finding_key(self.label)

    @property
    def chexpert(self) -> bool:
        """True for the 14 CheXpert labels (No Finding included)."""
        from progemu.data.records import CHEXPERT_LABELS

        return self.label in CHEXPERT_LABELS


@dataclass
class ParsedText:
    """Every mention of a text, in order, and the change its finding-less sentences state."""

    sentences: list[str] = field(default_factory=list)
    mentions: list[Mention] = field(default_factory=list)
    global_change: str | None = None


def normalise(text: str | None) -> str:
    """Lower case, de-identification placeholders ("XXXX", "___") as the neutral word "xxxx", single spaces."""
    text = _PLACEHOLDER.sub("xxxx", (text or "").lower())
    return re.sub(r"[ \t]+", " ", text)


def split_sentences(text: str | None) -> list[str]:
    """The normalised sentences of a text."""
    return [s.strip() for s in _SENT.split(normalise(text)) if s.strip()]


def first_change(clause: str) -> str | None:
    """The change word a clause states first, a severity transition ("from mild to severe") first of all."""
    m = _TRANSITION.search(clause)
    if m and _SEVERITY_RANK[m[1]] != _SEVERITY_RANK[m[2]]:
        a, b = _SEVERITY_RANK[m[1]], _SEVERITY_RANK[m[2]]
        return "new" if a == 0 else "resolved" if b == 0 else "increased" if b > a else "decreased"
    hits = [(m.start(), name) for name, rx in _CHANGE_RES.items() for m in [rx.search(clause)] if m]
    return min(hits)[1] if hits else None


def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + " " * (end - start) + text[end:]


def _side(clause: str, start: int, end: int) -> str | None:
    best = None
    for m in _SIDE.finditer(clause):
        dist = start - m.end() if m.end() <= start else m.start() - end if m.start() >= end else 0
        if best is None or dist < best[0]:
            best = (dist, m[0])
    if best is None:
        return None
    return _side_word(best[1])


def _side_word(word: str) -> str:
    return word if word in ("right", "left") else "bilateral"


def _polarity(work: str, start: int, end: int, change: str | None) -> str:
    """Negative, uncertain or positive for the mention at ``work[start:end]``: a negation cue before it (or a
    negating predicate after it) wins; then a hedge before it or within it ("possible", "may represent", "upper
    limits of normal"), or a hedging predicate after it ("... cannot be excluded", "... is likely")."""
    before = _PSEUDO_NEG.sub(" ", _HEDGED_NEGATION.sub(" ", work[:start]))
    after = work[end:]
    if _NEG_PRE_RE.search(before) or _NEG_POST_RE.search(_HEDGED_NEGATION.sub(" ", after)) or change == "resolved":
        return NEGATIVE
    return UNCERTAIN if _HEDGE_RE.search(work[:end]) or _POST_HEDGE_RE.search(after) else POSITIVE


def parse_clause(clause: str, sentence: int = 0) -> tuple[list[Mention], str | None]:
    """The mentions of one clause (normalised text) and its change word."""
    change = first_change(clause)
    work, found = clause, []  # (start, end, label, polarity)
    normal = set()  # (start, label) of the statements that something is normal
    for label, rx in _OTHER_RES.items():
        for m in rx.finditer(work):
            found.append((m.start(), m.end(), label, NEGATIVE if _NEG_PRE_RE.search(work[:m.start()]) else POSITIVE))
            work = _blank(work, m.start(), m.end())
    res = _MENTION_RES
    m = res[NO_FINDING].search(work)
    if m:
        found.append((m.start(), m.end(), NO_FINDING, POSITIVE))  # its patterns carry their own "no"
        work = _blank(work, m.start(), m.end())
    for label, rx in _NORMAL_RES.items():
        m = rx.search(work)
        if m:
            found.append((m.start(), m.end(), label, NEGATIVE))
            normal.add((m.start(), label))
    done = {f[2] for f in found}
    for label, rx in res.items():
        m = rx.search(work)
        if m is None or label in done:
            continue
        found.append((m.start(), m.end(), label, _polarity(work, m.start(), m.end(), change)))
        done.add(label)
    found.sort()
    # "atelectasis or pneumonia": alternatives are each uncertain
    for i in range(len(found) - 1):
        (s1, e1, l1, p1), (s2, e2, l2, p2) = found[i], found[i + 1]
        if p1 != NEGATIVE and p2 != NEGATIVE and _ALTERNATIVE.match(clause[e1:s2].strip()):
            found[i], found[i + 1] = (s1, e1, l1, UNCERTAIN), (s2, e2, l2, UNCERTAIN)
    pred = _NORMAL_PREDICATE.search(work)
    if pred:  # "The heart, mediastinum and vasculature are within normal limits"; "Normal heart and mediastinum"
        subject, base = work[:pred.start()], 0
        if not re.sub(r"\b(?:there|is|are|the)\b", "", subject).strip():
            subject, base = work[pred.end():], pred.end()
        for label, rx in _SUBJECT_RES.items():
            m = rx.search(subject)
            if m and label not in done and not _NEG_PRE_RE.search(subject):
                found.append((base + m.start(), base + m.end(), label, NEGATIVE))
                normal.add((base + m.start(), label))
                done.add(label)
    out = [Mention(label, pol, _side(clause, s, e), change if label != NO_FINDING else None,
                   bool(_CHRONIC.search(clause)), sentence, clause[s:e], (s, label) in normal)
           for s, e, label, pol in sorted(found)]
    return out, change


def parse_sentence(sentence: str, index: int = 0) -> tuple[list[Mention], str | None]:
    """The mentions of one sentence and the sentence's first change word. A mention whose clause has no change
    word takes the sentence's ("A round opacity is now seen, ..., suggesting a nodule": the nodule is new); one
    whose clause names no side takes the sentence's side where the sentence names one ("Linear opacities are
    now seen in the right lower lung, consistent with atelectasis": the atelectasis is right)."""
    text = normalise(sentence)
    clauses = [parse_clause(c.strip(), index) for c in _BREAK.split(text) if c.strip()]
    sentence_change = next((ch for _, ch in clauses if ch), None)
    sides = {_side_word(m[0]) for m in _SIDE.finditer(text)}
    sentence_side = sides.pop() if len(sides) == 1 else None
    out = []
    for mentions, _ in clauses:
        for m in mentions:
            ch = m.change or (sentence_change if m.label != NO_FINDING else None)
            # a side only for findings that have one ("Moderate cardiomegaly with new right effusion": no side for
            # the heart), from the mention's clause, else its sentence
            lateral = m.key is None or FINDINGS[m.key].lateral
            out.append(replace(m, side=(m.side or sentence_side) if lateral else None, change=ch))
    return out, sentence_change


def parse_text(text: str | None) -> ParsedText:
    """Every sentence's mentions; the first change word of a sentence without any mention is the global change."""
    out = ParsedText(sentences=split_sentences(text))
    for i, sentence in enumerate(out.sentences):
        mentions, change = parse_sentence(sentence, i)
        out.mentions += mentions
        if change and not mentions:
            out.global_change = out.global_change or change
    return out


def states_absence(sentence: str) -> bool:
    """True when a sentence carries a negation cue ("No pneumothorax.", "The effusion has resolved.", "No
    significant interval change."): it states that something is absent. A hedged "cannot be excluded" is not one."""
    text = _HEDGED_NEGATION.sub(" ", normalise(sentence))
    return bool(_NEG_PRE_RE.search(text) or _NEG_POST_RE.search(text))


def asks_change(mention: Mention) -> bool:
    """True when a prompt's mention asks a SynthCXR finding to change: a known finding that the sentence neither
    keeps ("Stable ...", "... is unchanged") nor denies ("No pneumothorax.", "The heart size is normal."); a
    finding that resolves changes."""
    if mention.key is None or mention.change == "unchanged":
        return False
    return mention.polarity != NEGATIVE or mention.change == "resolved"
