"""The field's standard evaluators from local weights: each built here with random weights of the real
architecture (a reduced DenseNet through the same code path, a small Dinov2Config, a small BertConfig with the 14
CheXbert heads), saved in its original on-disk format, then loaded and run through the whole path."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from eval.backends import STANDARD_LAYOUT, parse_evaluators
from eval.image_metrics import frechet_distance
from progemu.errors import ProgEmuError

RNG = np.random.default_rng(0)
SET_A = RNG.random((6, 80, 64)).astype(np.float32)  # not square: the crops must handle it
SET_B = (SET_A * 0.5 + 0.5 * np.linspace(0, 1, 64, dtype=np.float32)).astype(np.float32)


def small_xrv(tmp_path, name="xrv.safetensors", op=True):
    from eval.xrv import XRVDenseNet

    net = XRVDenseNet(growth=8, blocks=(2, 2, 2, 2), init_features=16)
    for m in net.modules():  # non-trivial BatchNorm statistics, so that eval mode differs from identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    if op:
        net.op_threshs = torch.rand(18) * 0.2 + 0.05
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net.eval(), path


def test_xrv_full_size_has_torchxrayvision_names():
    from eval.xrv import XRVDenseNet

    net = XRVDenseNet()
    net.op_threshs = torch.zeros(18)
    state = net.state_dict()
    assert len(state) == 728 and sum(p.numel() for p in net.parameters()) == 6_966_034  # DenseNet-121, 1 ch, 18 out
    for key in ("op_threshs", "features.conv0.weight", "features.denseblock3.denselayer24.conv2.weight",
                "features.transition3.conv.weight", "features.norm5.running_var", "classifier.weight"):
        assert key in state
    again = XRVDenseNet.from_state_dict(state)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in state.items()}


def test_xrv_preprocessing():
    from eval.xrv import op_norm, preprocess

    x = preprocess(np.stack([np.zeros((80, 64)), np.ones((80, 64))]).astype(np.float32))
    assert x.shape == (2, 1, 224, 224) and x[0].max() == -1024 and x[1].min() == 1024  # intensities to [-1024, 1024]
    img = np.zeros((80, 64), np.float32)
    img[:8] = 1.0  # only in the rows the centre crop of the long side removes
    assert preprocess(img[None]).max() == -1024
    t = torch.tensor([[0.2, float("nan")]])
    assert torch.allclose(op_norm(torch.tensor([[0.2, 0.3]]), t), torch.tensor([[0.5, 0.3]]))


def test_xrv_loads_predicts_and_features(tmp_path):
    from eval.xrv import XRVEvaluator, preprocess

    net, path = small_xrv(tmp_path)
    ev = XRVEvaluator.load(path)
    assert "Pleural Effusion" in ev.spec.classes and "Pleural Other" in ev.spec.classes
    assert "Effusion" not in ev.spec.classes and "Infiltration" not in ev.spec.classes and len(ev.spec.classes) == 12
    prob, feats = ev.predict_proba(SET_A), ev.features(SET_A)
    assert prob.shape == (6, 12) and ((prob >= 0) & (prob <= 1)).all()
    c = net.classifier.in_features
    assert feats.shape == (6, c)
    with torch.no_grad():  # the same numbers as the network on torchxrayvision's preprocessing
        raw = torch.sigmoid(net(preprocess(SET_A)))
    j = [i for i, n in enumerate(("Atelectasis", "Consolidation", "Infiltration")) if n != "Infiltration"]
    thr = net.op_threshs[j]
    expect = torch.where(raw[:, j] < thr, raw[:, j] / (2 * thr), 1 - (1 - raw[:, j]) / (2 * (1 - thr)))
    assert np.allclose(prob[:, :2], expect.numpy(), atol=1e-5)
    assert frechet_distance(feats.astype(np.float64), feats.astype(np.float64)) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(feats.astype(np.float64), ev.features(SET_B).astype(np.float64)) > 1e-3
    # a .pt state dict loads the same; a pickled module (torchxrayvision's own file) is refused, not unpickled
    torch.save(net.state_dict(), tmp_path / "xrv.pt")
    assert np.allclose(XRVEvaluator.load(tmp_path / "xrv.pt").predict_proba(SET_A), prob, atol=1e-6)
    torch.save(net, tmp_path / "module.pt")
    with pytest.raises(ProgEmuError, match="not a plain state dict"):
        XRVEvaluator.load(tmp_path / "module.pt")
    with pytest.raises(ProgEmuError, match="nowhere.safetensors.*not found"):
        XRVEvaluator.load(tmp_path / "nowhere.safetensors")
    net.op_threshs[14] = float("nan")  # weights with no Lung Lesion labels: that output is untrained, left out
    assert "Lung Lesion" not in XRVEvaluator(net).spec.classes and len(XRVEvaluator(net).spec.classes) == 11


def make_raddino(folder, size=56):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=size)
    Dinov2Model(cfg).save_pretrained(str(folder))
    BitImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                      image_mean=[0.5307] * 3, image_std=[0.2583] * 3, resample=3).save_pretrained(str(folder))
    return folder


def test_raddino_features_as_chexgenbench(tmp_path):
    from eval.raddino import RAD_DINO_PROCESSOR, RadDino

    assert RAD_DINO_PROCESSOR["crop_size"] == {"height": 518, "width": 518}
    assert RAD_DINO_PROCESSOR["image_mean"][0] == 0.5307 and RAD_DINO_PROCESSOR["image_std"][0] == 0.2583
    rd = RadDino.load(make_raddino(tmp_path / "rad-dino"))
    pil = rd.to_pil(SET_A[:2])
    assert pil[0].size == (299, 299) and pil[0].mode == "RGB"
    feats = rd.features(SET_A)
    assert feats.shape == (6, 32)
    with torch.no_grad():  # the CLS (pooler) output of the processor's pixels
        pix = rd.processor(images=pil, return_tensors="pt")["pixel_values"]
        assert pix.shape == (2, 3, 56, 56)
        got = rd.model(pixel_values=pix.to(rd.device)).pooler_output.cpu().numpy()
        assert np.allclose(got, feats[:2], atol=1e-5)
    f64 = feats.astype(np.float64)
    assert frechet_distance(f64, f64) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(f64, rd.features(SET_B).astype(np.float64)) > 1e-3
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProgEmuError, match="model.safetensors"):
        RadDino.load(tmp_path / "empty")


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "pleural", "effusion", "new", "left", "the", "is",
         "heart", "enlarged", ".", ","]


def make_chexbert(folder, extra_position_ids=True):
    from transformers import BertConfig

    from eval.chexbert import BertLabeler

    bert = folder / "bert-base-uncased"
    bert.mkdir(parents=True)
    (bert / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    cfg.save_pretrained(str(bert))
    model = BertLabeler(cfg).eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # DataParallel names, as the original
    if extra_position_ids:  # older transformers saved this buffer
        state["module.bert.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save({"epoch": 7, "model_state_dict": state}, folder / "chexbert.pth")
    return model, folder / "chexbert.pth", bert


def test_chexbert_labels_from_original_checkpoint(tmp_path):
    from eval.chexbert import CONDITIONS, CheXbert

    model, ckpt, bert = make_chexbert(tmp_path)
    cb = CheXbert.load(ckpt, bert)
    texts = ["No pleural effusion.", "The heart is enlarged, new left effusion.", "", "  \n "]
    y = cb.label(texts)
    assert y.shape == (4, 14) and y.max() <= 3 and set(y[:, 13]) <= {0, 1}  # No Finding has two classes
    assert (y[2] == y[3]).all()  # blank texts are [CLS] [SEP] alike
    ids = cb.encode(texts[0])
    assert ids == [2, 5, 6, 7, 14, 3]
    with torch.no_grad():
        out = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert [int(o.argmax(-1)) for o in out] == list(y[0])
    assert len(cb.encode(" ".join(["effusion"] * 600))) == 512 and cb.encode("effusion " * 600)[-1] == 3
    assert len(cb.label_dicts(texts)) == 4 and all(set(d) <= set(CONDITIONS) for d in cb.label_dicts(texts))


def test_chexbert_missing_and_wrong_files(tmp_path):
    from eval.chexbert import CheXbert

    _, ckpt, bert = make_chexbert(tmp_path)
    with pytest.raises(ProgEmuError, match="missing.pth.*not found"):
        CheXbert.load(tmp_path / "missing.pth", bert)
    with pytest.raises(ProgEmuError, match="vocab.txt"):
        CheXbert.load(ckpt, tmp_path / "nobert")
    torch.save({"model_state_dict": {"module.bert.x": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(ProgEmuError, match="linear_heads"):
        CheXbert.load(tmp_path / "bad.pth", bert)


def test_chexbert_f1_by_hand():
    from eval.chexbert import CONDITIONS, chexbert_f1

    hyp, ref = np.zeros((2, 14), int), np.zeros((2, 14), int)
    eff, card, ptx = (CONDITIONS.index(c) for c in ("Pleural Effusion", "Cardiomegaly", "Pneumothorax"))
    hyp[0, [eff, card]] = 1  # one right (effusion), one wrong (cardiomegaly)
    ref[0, eff] = 1
    hyp[1, ptx], ref[1, ptx] = 3, 1  # uncertain is not positive: a miss
    f = chexbert_f1(hyp, ref)  # tp 1, fp 1, fn 1 -> 0.5; top 5: the same minus pneumothorax -> 2/3
    assert f["chexbert_f1"] == pytest.approx(0.5) and f["chexbert_f1_5"] == pytest.approx(2 / 3)


def test_parse_evaluators(tmp_path):
    c = parse_evaluators("runs/evaluators")
    assert str(c.own) == "runs/evaluators" and not c.standard
    c = parse_evaluators(f"runs/ev, standard={tmp_path}")
    assert c.xrv == tmp_path / STANDARD_LAYOUT["xrv"] and c.bert == tmp_path / "bert-base-uncased" and c.standard
    c = parse_evaluators("chexbert=/w/chexbert.pth,xrv=/w/x.pt")
    assert c.own is None and str(c.bert) == "/w/bert-base-uncased" and str(c.xrv) == "/w/x.pt"
    with pytest.raises(ProgEmuError, match="unknown evaluator 'inception'"):
        parse_evaluators("inception=x")
    with pytest.raises(ProgEmuError, match="two folders"):
        parse_evaluators("a,b")


def test_evaluate_with_standard_evaluators(tmp_path):
    """End to end on the ICG-CXR fixture with only the standard networks: which evaluator made each number is
    recorded and shown; the model's outputs are the true follow-ups, so their scores match the ceiling's."""
    from eval.evaluate import evaluate
    from tests.test_eval_report import SIZE, fake_generation, make_fixture

    data = make_fixture(tmp_path / "data", counts=(("validate", 4), ("test", 8)))
    gen = fake_generation(data, tmp_path / "generated")
    w = tmp_path / "weights"
    w.mkdir()
    small_xrv(w, STANDARD_LAYOUT["xrv"])
    make_raddino(w / "rad-dino")
    make_chexbert(w)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = evaluate(data, tmp_path / "out", generated=gen, evaluators_dir=f"standard={w}", size=SIZE,
                     log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    model, true = m["systems"]["model"], m["systems"]["true_followup"]
    assert model["image"]["fid_raddino"] == pytest.approx(true["image"]["fid_raddino"])
    assert model["findings"]["gfid"] == pytest.approx(true["findings"]["gfid"])
    assert model["text"]["chexbert_f1"] == 1.0 and "chexbert_f1_5" in m["systems"]["identity"]["text"]
    assert "demographics" not in model  # no own folder given: no attribute models
    assert m["produced_by"]["findings"] == "xrv-densenet121" and m["produced_by"]["image.fid_raddino"] == "rad-dino"
    assert set(m["evaluators"]) == {"xrv-densenet121", "rad-dino", "chexbert"}
    md = (tmp_path / "out" / "metrics.md").read_text()
    assert "| evaluator |" in md and "F1-CheXbert" in md and "FID (RAD-DINO" in md
    row = next(line for line in md.splitlines() if line.startswith("| FID (RAD-DINO"))
    assert row.rstrip(" |").endswith("rad-dino")
    assert "torchxrayvision" in (tmp_path / "out" / "report.html").read_text()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["produced_by"]["text.chexbert"] == "chexbert"
    (w / "chexbert.pth").unlink()  # a missing weight fails before anything is evaluated, naming the file
    with pytest.raises(ProgEmuError, match="chexbert.pth"):
        evaluate(data, tmp_path / "out2", generated=gen, evaluators_dir=f"standard={w}", size=SIZE, log=lambda s: None)
    assert not (tmp_path / "out2" / "metrics.json").exists()


def test_report_names_the_evaluator_of_each_metric():
    from eval.report import evaluator_rows, markdown, produced_by

    m = {"n_items": 2, "split": "test", "notes": [],
         "produced_by": {"image": "pixels (scikit-image)", "text.bleu": "sacrebleu", "text.chexbert": "chexbert",
                         "findings": "xrv-densenet121", "image.fid_raddino": "rad-dino"},
         "evaluators": {"findings": {"classes": ["a"], "heldout": {"auroc": 0.9, "reliable": True, "n": 8},
                                     "replaced_by": "xrv-densenet121"},
                        "chexbert": {"classes": ["14"], "heldout": {"reliable": True, "source": "published"}}},
         "systems": {"model": {"image": {"ssim": 0.5, "fid_raddino": 3.0}, "text": {"bleu4": 0.2, "chexbert_f1_5": 0.4},
                               "findings": {"gfid": 1.0}}}}
    assert [produced_by(m, *k) for k in (("text", "bleu4"), ("text", "chexbert_f1_5"), ("image", "fid_raddino"),
                                          ("image", "ssim_outside_change"), ("findings", "gfid"), ("text", "meteor"))] \
        == ["sacrebleu", "chexbert", "rad-dino", "pixels (scikit-image)", "xrv-densenet121", "–"]
    rows = {r[0]: r for r in evaluator_rows(m)}
    assert rows["findings"][-1] == "no (replaced by xrv-densenet121)" and rows["chexbert"][5] == "published"
    md = markdown(m)
    assert "| BLEU-4 ↑ | 0.200 | sacrebleu |" in md and "| FID (RAD-DINO features, as CheXGenBench) ↓ | 3.000 | rad-dino |" in md
