"""The package's sentence parser (progemu.findings) and the labeler on it, on sentences written as radiologists
write real reports, rule by rule (tests/findings_table.py: text -> every CheXpert label it names, with its status).
"""

import pytest

from eval.labeler import label_text
from progemu.findings import parse_text, split_sentences
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
