"""Clinical fidelity of the tokenizer (eval.vq_clinical): an identity codec changes nothing, scores on the
originals do not depend on the codec, differences are reconstruction minus original in points, the loader gives
priors and follow-ups in order, the retrained-classifier check runs, and the command writes its JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval.data import load_gray, load_records
from eval.vq_clinical import (
    clinical_fidelity,
    load_table,
    main,
    recoverability,
    recoverability_markdown,
    table_markdown,
    vq_codec,
)
from progemu.classifier import Evaluator, EvaluatorSpec
from progemu.configuration_vq import ProgEmuVQConfig
from progemu.modeling_vq import ProgEmuVQModel

SIZE = 64
FINDINGS = ["No Finding", "Cardiomegaly", "Lung Opacity", "Pleural Effusion"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from progemu.synth import write_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads only contend on a shared machine
    root = tmp_path_factory.mktemp("clin")
    write_dataset(root / "data", 8, size=SIZE, seed=4)
    torch.manual_seed(0)
    # untrained evaluators and VQ: the invariants below hold for any weights
    evs = {"findings": Evaluator(EvaluatorSpec("findings", "multilabel", FINDINGS, 32, width=4,
                                               heldout={"auroc": 0.5}, thresholds=[0.5, 0.4, 0.6, 0.5])),
           "sex": Evaluator(EvaluatorSpec("sex", "multiclass", ["female", "male"], 32, width=4, heldout={"accuracy": 0.5})),
           "age_group": Evaluator(EvaluatorSpec("age_group", "multiclass", ["young", "middle", "old"], 32, width=4,
                                                heldout={"accuracy": 0.3}))}
    vq = ProgEmuVQModel(ProgEmuVQConfig(patch_size=2, base_channels=8, channel_multipliers=[1, 2], embed_dim=8,
                                        codebook_size=64, codebook_dim=4, image_size=SIZE)).eval()
    table = load_table(root / "data", "train", 9, SIZE)
    yield root, evs, vq, table
    torch.set_num_threads(threads)


def test_load_table_gives_priors_and_followups_in_order(setup):
    root, _, _, table = setup
    recs = [r for r in load_records(root / "data") if r.split == "train"]
    assert table.images.shape == (9, SIZE, SIZE) and len(table.labels) == 9
    assert all(len(v) == 9 for v in table.attributes.values())
    np.testing.assert_array_equal(table.images[0], load_gray(recs[0].prior_image, SIZE))
    np.testing.assert_array_equal(table.images[1], load_gray(recs[0].target_image, SIZE))
    skipped = load_table(root / "data", "train", 2, SIZE, skip=1)
    np.testing.assert_array_equal(skipped.images[0], table.images[2])


def test_identity_codec_changes_nothing(setup):
    _, evs, _, table = setup
    res = clinical_fidelity(lambda x: x.copy(), table, evs)
    assert res["pixel_mae"] == 0 and res["psnr"] == pytest.approx(100) and res["n_images"] == 9
    for model in ("findings", "sex", "age_group"):
        assert res[model]["original"] == res[model]["reconstruction"]
        assert all(v in (0.0, None) for v in res[model]["delta_points"].values())
        assert res[model]["accuracy_delta_ci95"] == [0.0, 0.0]
        assert res[model]["agreement"] == 1.0
    assert all(s["agreement"] == 1.0 for s in res["findings"]["per_class"].values())
    assert all(res["criterion"]["holds"].values()) and res["criterion"]["findings_outside_tolerance"] == []
    assert "findings (macro)" in table_markdown(res)


def test_vq_codec_scores_are_consistent(setup):
    _, evs, vq, table = setup
    recon = vq_codec(vq)(table.images)
    assert recon.shape == table.images.shape and recon.min() >= 0 and recon.max() <= 1
    same = clinical_fidelity(lambda x: x.copy(), table, evs)
    res = clinical_fidelity(vq_codec(vq), table, evs, tolerance_points=0.0)
    assert res["pixel_mae"] > 0
    for model in ("findings", "sex", "age_group"):
        assert res[model]["original"] == same[model]["original"]  # originals do not depend on the codec
        lo, hi = res[model]["accuracy_delta_ci95"]
        d = res[model]["delta_points"]["accuracy"]
        assert d == pytest.approx(100 * (res[model]["reconstruction"]["accuracy"] - res[model]["original"]["accuracy"]))
        assert lo <= d + 1e-9 and d <= hi + 1e-9 and 0 <= res[model]["agreement"] <= 1
        assert res["criterion"]["holds"][model] == (abs(d) == 0)
    outside = [c for c, s in res["findings"]["per_class"].items() if s["delta_points"]["accuracy"] != 0]
    assert res["criterion"]["findings_outside_tolerance"] == outside
    with pytest.raises(ValueError, match="shape"):
        clinical_fidelity(lambda x: x[:, :32], table, evs)


def test_recoverability_scores_a_classifier_trained_on_the_codec_output(setup):
    _, evs, _, table = setup
    res = recoverability(lambda x: x.copy(), table, table, table, evs["findings"], epochs=1)
    assert res["train_images"] == len(table) and set(res["per_class"]) == set(FINDINGS)
    assert all(0 <= res["per_class"][c]["accuracy"] <= 1 for c in FINDINGS)
    full = {**clinical_fidelity(lambda x: x.copy(), table, evs), "recoverability": res}
    assert len(recoverability_markdown(full).splitlines()) == 3 + len(FINDINGS)


def test_command_writes_json(setup, capsys):
    root, evs, vq, _ = setup
    vq.save_pretrained(root / "vq")
    for ev in evs.values():
        ev.save(root / "ev")
    out = root / "fidelity.json"
    assert main(["--vq", str(root / "vq"), "--evaluators", str(root / "ev"), "--data", str(root / "data"),
                 "--split", "train", "--n", "4", "--skip", "1", "--retrain-pairs", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_images"] == 4 and res["image_size"] == SIZE and set(res["criterion"]["holds"]) == set(evs)
    assert res["skip"] == 1 and set(res["recoverability"]["per_class"]) == set(FINDINGS)
    assert "| **sex model** |" in capsys.readouterr().out
