"""Texts of a SynthCXR pair in radiologists' language, with varied templates, synonyms and negations.

- ``progression_prompt``: ICG-CXR style ("Mild pleural effusion has developed in the left lower lung.").
  A finding that appears is always phrased with one of ``NEW_VERBS``; no other sentence uses them.
- ``edit_instruction``: MIMIC-EDIT-INSTRUCTION style ("Add the finding of mild pleural effusion in the left
  lower lung", "Remove the finding of cardiomegaly", "Change the level of edema from mild to moderate").
- ``interpretation``: the visual change ("There is blunting of the left costophrenic angle, which was ...").
- ``report``: FINDINGS and IMPRESSION of one study.
"""

from __future__ import annotations

import numpy as np

from progemu.data.records import Report
from progemu.findings import FINDINGS
from progemu.synth.findings import Change, FindingState
from progemu.synth.vocabulary import location_phrase, severity_index

NEW_VERBS: tuple[str, ...] = ("has developed", "has appeared", "new")  # the prompt's words for an appearing finding
NO_CHANGE = ("No significant interval change.", "No significant change compared with the prior study.",
             "The appearance is unchanged from the prior study.")
NEGATIONS: dict[str, tuple[str, ...]] = {
    "pleural_effusion": ("No pleural effusion.", "No pleural effusion is seen."),
    "cardiomegaly": ("The heart size is normal.", "No cardiomegaly."),
    "consolidation": ("No focal consolidation.", "No consolidation."),
    "edema": ("No pulmonary edema.", "No evidence of pulmonary edema."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "atelectasis": ("No atelectasis.",),
    "nodule": ("No pulmonary nodule.", "No nodules or masses."),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def where(st: FindingState) -> str:
    """A located phrase starting with a preposition, or "" for the heart."""
    if st.key == "cardiomegaly":
        return ""
    return f" {'at' if st.key == 'pneumothorax' else 'in'} the {location_phrase(st.key, st.side, st.zone)}"


def size_word(st: FindingState) -> str:
    """Report wording of a severity for this finding ("small" effusion, "large" pneumothorax, "mass")."""
    return FINDINGS[st.key].size_words[severity_index(st.severity) - 1]


def _name(st: FindingState, rng: np.random.Generator) -> str:
    """The finding's name, sometimes a synonym (never a bare "effusion" without context)."""
    spec = FINDINGS[st.key]
    if st.key == "nodule" and st.severity == "severe":
        return "mass"
    if st.key in ("pleural_effusion", "cardiomegaly", "pneumothorax"):
        return spec.name
    return _pick(rng, spec.synonyms[:2])


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def progression_prompt(changes: list[Change], stable: list[FindingState], absent: list[str],
                       rng: np.random.Generator) -> str:
    """ICG-CXR-style progression prompt: changes first, then stable findings, then a few negations."""
    out: list[str] = []
    for ch in changes:
        st, loc = ch.state, where(ch.state)
        name = _name(st, rng)
        if ch.kind == "new":
            out.append(_pick(rng, (f"{_cap(st.severity)} {name} has developed{loc}.",
                                   f"{_cap(st.severity)} {name} has appeared{loc}.",
                                   f"There is new {st.severity} {name}{loc}.")))
        elif ch.kind == "resolved":
            out.append(_pick(rng, (f"The {name}{loc} has resolved.", f"The previously seen {name}{loc} has resolved.",
                                   f"The {name}{loc} is no longer present.")))
        else:
            a, b = ch.before.severity, ch.after.severity  # type: ignore[union-attr]
            verb = _pick(rng, ("worsened", "increased")) if ch.kind == "worsened" else _pick(
                rng, ("improved", "decreased"))
            out.append(f"The {name}{loc} has {verb} from {a} to {b}.")
    if not changes:
        out.append(_pick(rng, NO_CHANGE))
    for st in stable:
        out.append(_pick(rng, (f"{_cap(st.severity)} {_name(st, rng)}{where(st)} is unchanged.",
                               f"Stable {st.severity} {_name(st, rng)}{where(st)}.")))
    for key in absent:
        out.append(_pick(rng, NEGATIONS[key]))
    return " ".join(out)


def edit_instruction(changes: list[Change]) -> str:
    """MIMIC-EDIT-INSTRUCTION operations, one sentence per change ("No change." for an unchanged pair)."""
    ops = []
    for ch in changes:
        name, loc = FINDINGS[ch.key].name, where(ch.state)
        if ch.kind == "new":
            ops.append(f"Add the finding of {ch.after.severity} {name}{loc}.")  # type: ignore[union-attr]
        elif ch.kind == "resolved":
            ops.append(f"Remove the finding of {name}{loc}.")
        else:
            ops.append(f"Change the level of {name}{loc} from {ch.before.severity} to {ch.after.severity}.")  # type: ignore[union-attr]
    return " ".join(ops) if ops else "No change."


def _describe(ch: Change, ctr: tuple[float, float], rng: np.random.Generator) -> str:
    """One sentence describing what changed in the image and what it indicates."""
    st, side, loc = ch.state, ch.state.side, where(ch.state).strip()
    a = ch.before.severity if ch.before else "none"
    b = ch.after.severity if ch.after else "none"
    k = ch.kind
    if ch.key == "pleural_effusion":
        if k == "new" and st.severity == "mild":
            return (f"There is blunting of the {side} costophrenic angle, which was previously sharp, indicating the "
                    f"presence of a small {side} pleural effusion.")
        if k == "new":
            return (f"There is a new meniscus-shaped opacity at the {side} lung base obscuring the {side} "
                    f"hemidiaphragm, indicating a {size_word(st)} {side} pleural effusion.")
        if k == "resolved":
            return (f"The {side} costophrenic angle is now sharp, indicating resolution of the previously seen {side} "
                    "pleural effusion.")
        grow = "increased" if k == "worsened" else "decreased"
        return (f"The {side} basilar opacity with a meniscus has {grow} in height, indicating that the {side} pleural "
                f"effusion has {grow} from {a} to {b}.")
    if ch.key == "cardiomegaly":
        ratio = f"the cardiothoracic ratio changing from about {ctr[0]:.2f} to {ctr[1]:.2f}"
        if k == "new":
            return f"The cardiac silhouette has enlarged, with {ratio}, indicating {b} cardiomegaly."
        if k == "resolved":
            return f"The cardiac silhouette has returned to normal size, with {ratio}, indicating resolution of cardiomegaly."
        verb = "further enlarged" if k == "worsened" else "decreased in size"
        return f"The cardiac silhouette has {verb}, with {ratio}, indicating cardiomegaly changing from {a} to {b}."
    if ch.key == "consolidation":
        if k == "new":
            return _pick(rng, (f"There is a new {size_word(st)} airspace opacity {loc}, which was previously clear, "
                               "consistent with consolidation.",
                               f"A new area of airspace opacity is seen {loc}, where the lung was previously clear, "
                               "indicating consolidation."))
        if k == "resolved":
            return f"The previously seen airspace opacity {loc} has cleared, indicating resolution of the consolidation."
        if k == "worsened":
            return f"The airspace opacity {loc} has become larger and denser, indicating worsening consolidation."
        return f"The airspace opacity {loc} has decreased in size and density, indicating improving consolidation."
    if ch.key == "edema":
        lines = ", with septal (Kerley B) lines at the lung bases" if b in ("moderate", "severe") else ""
        if k == "new":
            return (f"There is new bilateral perihilar haziness with indistinct pulmonary vascular markings{lines}, "
                    f"consistent with {b} pulmonary edema.")
        if k == "resolved":
            return ("The perihilar haziness has cleared and the pulmonary vessels are sharply defined again, indicating "
                    "resolution of the pulmonary edema.")
        verb = "increased" if k == "worsened" else "decreased"
        return f"The bilateral perihilar haziness has {verb}{lines}, indicating pulmonary edema changing from {a} to {b}."
    if ch.key == "pneumothorax":
        if k == "new":
            return (f"A thin visceral pleural line is now seen at the {side} apex with absent lung markings peripheral "
                    f"to it, indicating a {size_word(st)} {side} pneumothorax.")
        if k == "resolved":
            return (f"The {side} visceral pleural line is no longer seen and lung markings extend to the chest wall, "
                    f"indicating resolution of the {side} pneumothorax.")
        verb = "further from" if k == "worsened" else "closer to"
        return (f"The {side} visceral pleural line has moved {verb} the chest wall, indicating the {side} pneumothorax "
                f"changing from {a} to {b}.")
    if ch.key == "atelectasis":
        if k == "new":
            return f"Linear plate-like opacities are now seen {loc}, consistent with {b} atelectasis."
        if k == "resolved":
            return f"The linear opacities {loc} have resolved, indicating resolution of atelectasis."
        verb = "more numerous and thicker" if k == "worsened" else "fewer and thinner"
        return f"The linear opacities {loc} are {verb}, indicating atelectasis changing from {a} to {b}."
    what = "mass" if st.severity == "severe" else "pulmonary nodule"
    if k == "new":
        return (f"A well-circumscribed round opacity is now seen {loc}, which was not present before, suggesting a "
                f"{size_word(st)} {what}.")
    if k == "resolved":
        return f"The previously seen round opacity {loc} is no longer visible, indicating resolution of the {what}."
    verb, trend = ("grown", "an enlarging") if k == "worsened" else ("decreased in size", "a shrinking")
    return f"The round opacity {loc} has {verb}, indicating {trend} {what}, now {size_word(st)}."


def interpretation(changes: list[Change], ctr: tuple[float, float], rng: np.random.Generator) -> str:
    """The changes-of-findings text: one sentence per change, or a no-change statement."""
    if not changes:
        return _pick(rng, NO_CHANGE)
    return " ".join(_describe(ch, ctr, rng) for ch in changes)


_DEVICE_SENTENCES = {"endotracheal tube": "An endotracheal tube is in place.",
                     "nasogastric tube": "A nasogastric tube courses below the diaphragm.",
                     "central venous catheter": "A right central venous catheter terminates in the SVC.",
                     "pacemaker": "A left chest wall pacemaker is present with leads in the heart."}


def report(states: dict[str, FindingState], devices: tuple[str, ...], ctr: float,
           rng: np.random.Generator) -> Report:
    """FINDINGS and IMPRESSION of one study."""
    sent = [_DEVICE_SENTENCES[d] for d in devices]
    imp = []
    for key in ("cardiomegaly", "edema", "consolidation", "atelectasis", "nodule", "pleural_effusion", "pneumothorax"):
        st = states.get(key)
        if st is None:
            if key == "cardiomegaly":
                sent.append("The heart size is normal.")
            else:
                sent.append(_pick(rng, NEGATIONS[key]))
            continue
        loc, size = where(st), size_word(st)
        if key == "cardiomegaly":
            sent.append(f"The heart is {st.severity}ly enlarged (cardiothoracic ratio about {ctr:.2f}).")
            imp.append(f"{_cap(st.severity)} cardiomegaly.")
        elif key in ("pleural_effusion", "pneumothorax"):  # sided: "a small left pleural effusion"
            name = key.replace("_", " ")
            sent.append(f"There is a {size} {st.side} {name}.")
            imp.append(f"{_cap(size)} {st.side} {name}.")
        elif key == "edema":
            sent.append(f"There is {st.severity} pulmonary edema with perihilar haziness.")
            imp.append(f"{_cap(st.severity)} pulmonary edema.")
        elif key == "nodule":
            what = "mass" if st.severity == "severe" else "nodule"
            sent.append(f"There is a {size} {what}{loc}.")
            imp.append(f"{_cap(size)} {what}{loc}.")
        else:
            sent.append(f"There is {size} {FINDINGS[key].name}{loc}.")
            imp.append(f"{_cap(size)} {FINDINGS[key].name}{loc}.")
    if not imp:
        imp.append(_pick(rng, ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.")))
    return Report(findings=" ".join(sent), impression=" ".join(imp))
