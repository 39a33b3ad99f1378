"""SynthCXR generator invariants: determinism, exact counterfactuals, change masks, texts agree with labels."""

from __future__ import annotations

import re

import numpy as np
import pytest

from progemu.data.records import CHEXPERT_LABELS
from progemu.findings import resolve_finding
from progemu.synth import FINDING_KEYS, FINDINGS, SynthCXR, anatomical_prior
from progemu.synth.text import NEW_VERBS

N_PAIRS = 60


@pytest.fixture(scope="module")
def pairs():
    gen = SynthCXR(size=64, seed=7)
    return [gen.pair(i) for i in range(N_PAIRS)]


def test_same_seed_and_index_give_the_same_pair_in_any_order():
    a = SynthCXR(size=64, seed=3)
    b = SynthCXR(size=64, seed=3)
    b.pair(4)  # warm b's caches with another pair of the same patient first
    pa, pb = a.pair(5), b.pair(5)
    for name in ("prior", "followup", "counterfactual", "change_mask"):
        np.testing.assert_array_equal(getattr(pa, name), getattr(pb, name))
    assert (pa.prompt, pa.interpretation, pa.instruction, pa.ids) == (pb.prompt, pb.interpretation, pb.instruction,
                                                                      pb.ids)
    other = SynthCXR(size=64, seed=4).pair(5)
    assert not np.array_equal(pa.prior, other.prior)


def test_images_are_float32_in_unit_range(pairs):
    for p in pairs[:5]:
        for img in (p.prior, p.followup, p.counterfactual):
            assert img.dtype == np.float32 and img.shape == (64, 64)
            assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.1
        assert p.change_mask.dtype == bool


def test_counterfactual_equals_prior_exactly_outside_the_change_mask_and_differs_inside(pairs):
    changed = [p for p in pairs if p.changes]
    assert len(changed) >= N_PAIRS // 2
    for p in pairs:
        outside = ~p.change_mask
        np.testing.assert_array_equal(p.counterfactual[outside], p.prior[outside])
    for p in changed:
        inside = p.change_mask
        assert inside.any(), f"{p.pair_id}: changes {[c.to_dict() for c in p.changes]} but an empty change mask"
        diff = np.abs(p.counterfactual - p.prior)[inside]
        assert (diff > 0).mean() > 0.5 and diff.mean() > 0.01
        # each changed finding changes pixels where that finding is (before or after)
        for ch in p.changes:
            where = p.prior_masks.get(ch.key, np.zeros_like(inside)) | p.target_masks.get(ch.key, np.zeros_like(inside))
            assert (where & inside).any(), f"{p.pair_id}: {ch.key} {ch.kind} changes nothing where it is"


def test_unchanged_pairs_have_an_empty_mask_and_say_so(pairs):
    unchanged = [p for p in pairs if not p.changes]
    assert unchanged, "the generator should produce some unchanged pairs"
    for p in unchanged:
        assert not p.change_mask.any()
        np.testing.assert_array_equal(p.counterfactual, p.prior)
        assert p.instruction == "No change."
        assert re.search(r"no significant (interval )?change|unchanged from the prior", p.prompt, re.I)
        assert p.prior_labels == p.target_labels
    assert any(len(p.changes) >= 2 for p in pairs), "some pairs should change several findings"


def _findings_named(sentence: str) -> set[str]:
    """Finding keys a sentence names (longest synonyms first, so "pulmonary nodule" is not read as "nodule" twice)."""
    found, s = set(), sentence.lower()
    for key in FINDING_KEYS:
        if any(re.search(rf"\b{re.escape(syn)}\b", s) for syn in FINDINGS[key].synonyms + (FINDINGS[key].name,)):
            found.add(key)
    if "heart size" in s:
        found.add("cardiomegaly")
    return found


def test_prompt_and_instruction_agree_with_the_labels(pairs):
    new_re = re.compile(r"\b(" + "|".join(NEW_VERBS) + r")\b", re.I)
    for p in pairs:
        sentences = [s for s in re.split(r"(?<=\.)\s+", p.prompt) if s]
        new_in_prompt = {k for s in sentences if new_re.search(s) for k in _findings_named(s)}
        resolved_in_prompt = {k for s in sentences if re.search(r"resolved|no longer present", s)
                              for k in _findings_named(s)}
        new_by_label, gone_by_label = set(), set()
        for key in FINDING_KEYS:
            label = FINDINGS[key].label
            before, after = p.prior_labels[label], p.target_labels[label]
            if (before, after) == (0.0, 1.0):
                new_by_label.add(key)
            if (before, after) == (1.0, 0.0):
                gone_by_label.add(key)
        assert new_in_prompt == new_by_label, (p.prompt, p.prior_labels, p.target_labels)
        assert resolved_in_prompt == gone_by_label, p.prompt
        adds = {resolve_finding(m) for m in re.findall(
            r"Add the finding of (?:mild|moderate|severe) (.+?)(?: in | at |\.)", p.instruction)}
        removes = {resolve_finding(m) for m in re.findall(r"Remove the finding of (.+?)(?: in | at |\.)", p.instruction)}
        assert adds == new_by_label and removes == gone_by_label, p.instruction
        for s in sentences:  # a negation names a finding absent before and after
            if re.match(r"(No |There is no )", s):
                for key in _findings_named(s):
                    label = FINDINGS[key].label
                    assert p.prior_labels[label] == 0.0 and p.target_labels[label] == 0.0, (s, p.pair_id)


def test_new_findings_are_located_and_interpretations_describe_each_change(pairs):
    new_re = re.compile(r"\b(" + "|".join(NEW_VERBS) + r")\b", re.I)
    for p in pairs:
        sentences = re.split(r"(?<=\.)\s+", p.prompt)
        for ch in p.changes:
            if ch.kind == "new" and FINDINGS[ch.key].lateral:
                said = [s for s in sentences if new_re.search(s) and ch.key in _findings_named(s)]
                assert len(said) == 1 and ch.after.side in said[0], (p.prompt, ch)
        described = re.split(r"(?<=\.)\s+(?=[A-Z])", p.interpretation)
        if p.changes:
            assert len(described) == len(p.changes), p.interpretation
            assert all(re.search(r"indicat|consistent|suggest|no longer visible", s) for s in described), described
        else:
            assert len(described) == 1 and "change" in p.interpretation.lower()


def test_labels_cover_the_chexpert_vocabulary_and_follow_its_hierarchy(pairs):
    for p in pairs:
        for labels, states in ((p.prior_labels, p.prior_findings), (p.target_labels, p.target_findings)):
            assert list(labels) == list(CHEXPERT_LABELS)
            assert labels["No Finding"] == (0.0 if states else 1.0)
            if "cardiomegaly" in states:
                assert labels["Enlarged Cardiomediastinum"] == 1.0
            assert labels["Support Devices"] == (1.0 if p.patient.devices else 0.0)


def test_patient_identity_and_attributes_are_fixed_across_studies():
    gen = SynthCXR(size=64, seed=1)
    a, b = gen.pair(0), gen.pair(1)  # the same patient: studies (0, 1) and (1, 2)
    assert a.ids["subject-id"] == b.ids["subject-id"] and a.attributes == b.attributes and a.split == b.split
    assert a.ids["followup-dicom-id"] == b.ids["reference-dicom-id"]
    np.testing.assert_array_equal(a.followup, b.prior)  # the same study, acquired the same way
    splits = {gen.history(i).split for i in range(200)}
    assert splits == {"train", "validate", "test"}
    sexes = {gen.history(i).patient.sex for i in range(50)}
    ages = {gen.history(i).patient.age_group for i in range(50)}
    assert sexes == {"male", "female"} and ages == {"young", "middle", "old"}


def test_anatomical_prior_contains_the_findings_of_that_side(pairs):
    for key in FINDING_KEYS:
        both = anatomical_prior(key, 64)
        assert both.dtype == bool and both.shape == (64, 64) and 0.05 < both.mean() < 0.9
        if FINDINGS[key].lateral:
            left, right = anatomical_prior(key, 64, "left"), anatomical_prior(key, 64, "right")
            assert not (left & ~both).any() and not (right & ~both).any()
            assert left[:, 48:].mean() > left[:, :16].mean()  # the patient's left is the image's right
    assert np.array_equal(anatomical_prior("pleural effusion", 64), anatomical_prior("pleural_effusion", 64))
    for p in pairs:
        for st in p.target_findings.values():
            mask = p.target_masks[st.key]
            region = anatomical_prior(st.key, 64, st.side)
            assert (mask & region).sum() >= 0.95 * mask.sum(), (p.pair_id, st)


def test_size_range_is_checked():
    with pytest.raises(ValueError, match="between 64 and 512"):
        SynthCXR(size=32)
