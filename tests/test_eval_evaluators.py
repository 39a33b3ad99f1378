"""The project's evaluators beat chance on held-out SynthCXR patients by a clear margin (small, quick training),
and survive a save / load round trip with identical predictions."""

import numpy as np
import pytest
import torch

from eval.data import ImageTable
from eval.train_evaluators import train_all
from progemu.classifier import Evaluator

SIZE = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from progemu.synth import SynthCXR

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads only contend on a shared machine
    try:
        gen = SynthCXR(size=SIZE, seed=3)
        # two pairs per patient: disjoint index ranges are disjoint patients
        train = ImageTable.from_synth([gen.pair(i) for i in range(300)])
        held = ImageTable.from_synth([gen.pair(i) for i in range(300, 420)])
        evs = train_all(train, held, size=SIZE, epochs=6, width=16, log=lambda s: None, attribute_epochs=4)
        yield evs, held, tmp_path_factory.mktemp("ev")
    finally:
        torch.set_num_threads(threads)


def test_findings_classifier_beats_chance(trained):
    evs, _, _ = trained
    h = evs["findings"].spec.heldout
    assert {"Pleural Effusion", "Cardiomegaly"} <= set(evs["findings"].spec.classes)
    assert h["auroc"] >= 0.75, h  # chance is 0.5
    assert h["reliable"]


@pytest.mark.parametrize("name", ["sex", "age_group"])
def test_attribute_models_beat_chance(trained, name):
    evs, _, _ = trained
    h = evs[name].spec.heldout
    assert h["accuracy"] >= h["chance_accuracy"] + 0.1, h
    assert h["auroc"] >= 0.7, h


def test_save_load_identical(trained):
    evs, held, tmp = trained
    for name, ev in evs.items():
        ev.save(tmp)
        back = Evaluator.load(tmp, name)
        assert back.spec == ev.spec
        np.testing.assert_array_equal(back.predict_proba(held.images[:8]), ev.predict_proba(held.images[:8]))
        np.testing.assert_array_equal(back.features(held.images[:8]), ev.features(held.images[:8]))
