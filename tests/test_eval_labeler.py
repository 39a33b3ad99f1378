"""The rule-based labeler on sentences with negation, uncertainty and change words."""

import pytest

from eval.labeler import NEGATIVE, POSITIVE, UNCERTAIN, label_text, labels_vector


@pytest.mark.parametrize("text, finding, status", [
    ("There is a moderate left pleural effusion.", "Pleural Effusion", POSITIVE),
    ("No pleural effusion.", "Pleural Effusion", NEGATIVE),
    ("There is no evidence of pneumothorax.", "Pneumothorax", NEGATIVE),
    ("Pneumothorax is not seen.", "Pneumothorax", NEGATIVE),
    ("Without consolidation.", "Consolidation", NEGATIVE),
    ("Possible small right pneumothorax.", "Pneumothorax", UNCERTAIN),
    ("Pneumonia cannot be excluded.", "Pneumonia", UNCERTAIN),
    ("Findings may represent atelectasis.", "Atelectasis", UNCERTAIN),
    ("Heart size is normal.", "Cardiomegaly", NEGATIVE),
    ("The cardiac silhouette is enlarged.", "Cardiomegaly", POSITIVE),
    ("Mild pulmonary edema.", "Edema", POSITIVE),
    ("A 1 cm nodule in the right upper lobe.", "Lung Lesion", POSITIVE),
    ("Endotracheal tube in standard position.", "Support Devices", POSITIVE),
    ("The left effusion has resolved.", "Pleural Effusion", NEGATIVE),
    ("There is no change in the right effusion.", "Pleural Effusion", POSITIVE),
])
def test_status(text, finding, status):
    assert label_text(text).findings[finding] == status


def test_negation_scope_ends_at_but():
    r = label_text("No effusion, but there is a new right pneumothorax.")
    assert r.findings == {"Pleural Effusion": NEGATIVE, "Pneumothorax": POSITIVE}
    assert r.changes == {"Pneumothorax": "new"}


def test_negation_covers_a_list():
    r = label_text("No pleural effusion, pneumothorax or consolidation.")
    assert set(r.findings.values()) == {NEGATIVE} and len(r.findings) == 3


@pytest.mark.parametrize("text, finding, change", [
    ("New moderate left pleural effusion has developed.", "Pleural Effusion", "new"),
    ("The right pneumothorax has resolved.", "Pneumothorax", "resolved"),
    ("Cardiomegaly has worsened.", "Cardiomegaly", "increased"),
    ("Pulmonary edema has improved.", "Edema", "decreased"),
    ("Left lower lobe atelectasis is unchanged.", "Atelectasis", "unchanged"),
    ("The consolidation is stable.", "Consolidation", "unchanged"),
    ("Effusion is no longer seen.", "Pleural Effusion", "resolved"),
])
def test_change_words(text, finding, change):
    assert label_text(text).changes[finding] == change


def test_global_change_and_negated_new():
    r = label_text("No significant interval change.")
    assert r.global_change == "unchanged" and not r.findings
    r = label_text("No new consolidation.")
    assert r.findings == {"Consolidation": NEGATIVE} and not r.changes


def test_sentences_are_separate_and_most_definite_wins():
    r = label_text("Possible effusion. There is a left pleural effusion.\nNo pneumothorax.")
    assert r.findings == {"Pleural Effusion": POSITIVE, "Pneumothorax": NEGATIVE}
    assert labels_vector(label_text("Possible pneumonia. No edema.")) == {"Pneumonia": -1.0, "Edema": 0.0}
    assert label_text("").findings == {} and label_text(None).global_change is None


def test_change_spans_the_sentence_and_severity_direction():
    r = label_text("A well-circumscribed round opacity is now seen in the right upper lung, which was not present "
                   "before, suggesting a small pulmonary nodule.")
    assert r.findings["Lung Lesion"] == POSITIVE and r.changes["Lung Lesion"] == "new"
    r = label_text("The linear opacities in the left lower lung are fewer, indicating atelectasis changing from "
                   "severe to mild.")
    assert r.changes["Atelectasis"] == "decreased"
    assert label_text("Edema has progressed from mild to severe.").changes["Edema"] == "increased"


def test_lines_that_are_not_devices():
    r = label_text("Septal (Kerley B) lines at the lung bases. A thin visceral pleural line at the left apex.")
    assert "Support Devices" not in r.findings
    assert label_text("Right internal jugular central venous line in place.").findings["Support Devices"] == POSITIVE


def test_agrees_with_synthcxr_labels():
    """On SynthCXR texts (reports, prompts, interpretations) the labeler's positive findings match the follow-up
    labels (parent labels aside, which the texts rarely name)."""
    from progemu.synth import SynthCXR

    gen, agree, total = SynthCXR(size=64, seed=5), 0, 0
    for i in range(40):
        p = gen.pair(i)
        for text in (p.interpretation, p.prompt, f"{p.target_report.findings} {p.target_report.impression}"):
            for finding, status in label_text(text).findings.items():
                if finding in ("No Finding", "Lung Opacity", "Enlarged Cardiomediastinum"):
                    continue
                total += 1
                agree += (status == POSITIVE) == (p.target_labels.get(finding) == 1.0)
    assert total > 50 and agree / total >= 0.97, (agree, total)
