"""The package's sentence parser (progemu.findings) and the labeler on it, on sentences written as radiologists
write real reports, rule by rule (tests/findings_table.py: text -> every CheXpert label it names, with its status).
"""

import pytest

from eval.labeler import label_text
from progemu.findings import FINDINGS, asks_change, parse_text, resolve_finding, split_sentences, states_absence
from tests.findings_table import ATL, CARD, CONS, EFF, LO, PTX, ROWS, N, P, U


@pytest.mark.parametrize("rule, text, want", ROWS, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(ROWS)])
def test_real_report_sentences(rule, text, want):
    assert label_text(text).findings == want


@pytest.mark.parametrize("text, label, change", [
    ("Interval improvement in the right pleural effusion.", EFF, "decreased"),
    ("Worsening bibasilar atelectasis.", ATL, "increased"),
    ("The left pneumothorax has resolved.", PTX, "resolved"),
    ("Unchanged moderate cardiomegaly.", CARD, "unchanged"),
    ("Stable small left pleural effusion.", EFF, "unchanged"),
    ("New right lower lobe opacity.", LO, "new"),
    ("Persistent right lower lobe consolidation.", CONS, "unchanged"),
    ("Interval development of left lower lobe consolidation.", CONS, "new"),
    ("Again seen is a small left apical pneumothorax.", PTX, "unchanged"),
])
def test_change_words_in_reports(text, label, change):
    assert label_text(text).changes[label] == change


def test_a_stated_size_is_not_a_change():
    """"The heart is enlarged" states a size; "has enlarged" a change."""
    assert label_text("The heart is severely enlarged.").changes == {}
    assert label_text("The heart is severely enlarged.").global_change is None
    assert label_text("The cardiac silhouette has enlarged.").changes == {CARD: "increased"}


def test_incidental_findings_are_mentions_not_global_change():
    """A stable granuloma is a mention (so its "stable" is not the study's global change), outside the 14 labels."""
    parsed = parse_text("Stable calcified granuloma in the right upper lobe.")
    (m,) = parsed.mentions
    assert (m.label, m.polarity, m.change, m.chronic, m.side, m.chexpert) == (
        "Calcified Granuloma", P, "unchanged", True, "right", False)
    assert parsed.global_change is None
    assert parse_text("No significant interval change.").global_change == "unchanged"


def test_mention_fields_for_region_and_prompts():
    """Per mention: SynthCXR key, side, polarity, change; what region selection and prompt parsing need."""
    ms = parse_text("New moderate left pleural effusion. No pneumothorax. Bibasilar atelectasis has improved. "
                    "Possible right upper lobe nodule.").mentions
    got = [(m.key, m.side, m.polarity, m.change) for m in ms]
    assert got == [("pleural_effusion", "left", P, "new"), ("pneumothorax", None, N, None),
                   ("atelectasis", "bilateral", P, "decreased"), ("nodule", "right", U, None)]
    assert [m.sentence for m in ms] == [0, 1, 2, 3]
    old = parse_text("Old healed left rib fractures.").mentions[0]
    assert old.chronic and old.key is None and old.side == "left"


def test_normalise_and_sentences():
    assert split_sentences("FINDINGS: XXXX are intact.  Heart size normal.\nIMPRESSION: ___ clear.") == [
        "findings: xxxx are intact.", "heart size normal.", "impression: xxxx clear."]
    assert parse_text("").mentions == [] and parse_text(None).global_change is None


def test_every_synthcxr_name_and_synonym_maps_back_to_its_key():
    """The vocabulary and the parser agree: a sentence naming a finding by any of its words yields its key."""
    for key, spec in FINDINGS.items():
        for word in {spec.name, *spec.synonyms} - {"airspace disease"}:  # a report's word for any opacity
            (m, *_) = [m for m in parse_text(f"There is a new {word}.").mentions if m.key]
            assert (m.key, m.polarity, m.change) == (key, P, "new"), word
        assert resolve_finding(spec.label) == key and resolve_finding(key) == key


def test_a_clause_without_a_side_takes_its_sentences_side():
    ms = parse_text("Linear opacities are now seen in the right lower lung, consistent with atelectasis. "
                    "Opacity at the left base and right apex, suggesting atelectasis.").mentions
    assert [(m.key, m.side) for m in ms if m.key] == [("atelectasis", "right"), ("atelectasis", None)]


@pytest.mark.parametrize("sentence, change", [
    ("Moderate pleural effusion has developed in the left lower lung.", True),
    ("The pneumothorax at the right apex has resolved.", True),  # a resolution is a change
    ("Remove the finding of cardiomegaly.", True),
    ("Stable severe mass in the right middle lung.", False),  # kept
    ("Moderate edema is unchanged.", False),
    ("No pleural effusion is seen.", False),  # denied
    ("The heart size is normal.", False),
])
def test_asks_change(sentence, change):
    assert any(asks_change(m) for m in parse_text(sentence).mentions) == change


@pytest.mark.parametrize("sentence, absent", [
    ("No pneumothorax.", True), ("There is no pneumothorax.", True), ("The effusion has resolved.", True),
    ("The edema is no longer present.", True), ("No significant interval change.", True),
    ("The heart size is normal.", False), ("Stable moderate cardiomegaly.", False),
    ("Pneumonia cannot be excluded.", False), ("Add the finding of mild edema.", False),
])
def test_states_absence(sentence, absent):
    assert states_absence(sentence) == absent
