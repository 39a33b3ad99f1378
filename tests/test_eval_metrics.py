"""Metrics on hand-made cases whose answers are known."""

import math

import numpy as np
import pytest

from eval.image_metrics import (
    frechet_distance,
    guidance_scores,
    mask_iou,
    overlay,
    pixel_auroc,
    psnr,
    ssim,
    ssim_outside,
)
from eval.labeler import label_text
from eval.scores import binary_scores, multiclass_scores, multilabel_scores
from eval.text_metrics import bleu_scores, clinical_f1, meteor, rouge_l, text_metrics, wordnet_available


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return ndimage_smooth(rng.random((64, 64)).astype(np.float32))


def ndimage_smooth(a):
    from scipy import ndimage

    return ndimage.gaussian_filter(a, 2).astype(np.float32)


def test_identical_images(image):
    assert ssim(image, image) == pytest.approx(1.0)
    assert math.isinf(psnr(image, image))
    mask = np.zeros_like(image, bool)
    mask[20:40, 20:40] = True
    assert ssim_outside(image, image, mask) == pytest.approx(1.0)
    assert mask_iou(mask, mask) == 1.0


def test_psnr_known_value(image):
    other = np.clip(image + 0.1, 0, None)  # shifted by 0.1 where no clipping happens: MSE = 0.01 -> 20 dB
    assert psnr(image, image + 0.1) == pytest.approx(20.0, abs=1e-4)
    assert ssim(image, other) < 1.0


def test_ssim_outside_ignores_changes_inside(image):
    mask = np.zeros_like(image, bool)
    mask[20:40, 20:40] = True
    edited = image.copy()
    edited[mask] = 1.0 - edited[mask]
    assert ssim_outside(edited, image, mask) == pytest.approx(1.0)  # the dilation margin keeps windows outside
    assert ssim(edited, image) < 0.95
    assert ssim_outside(edited, image, np.ones_like(mask)) is None


def test_iou_and_auroc_known():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True
    b[:, :3] = True
    assert mask_iou(a, b) == pytest.approx(30 / 50)
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert pixel_auroc(a.astype(float), a) == 1.0
    assert pixel_auroc(1 - a.astype(float), a) == 0.0
    assert pixel_auroc(np.ones((10, 10)), np.zeros((10, 10), bool)) is None
    g = guidance_scores(np.kron(a.astype(np.float32), np.ones((2, 2), np.float32)), a)  # guidance at 2x size
    assert g["iou"] == 1.0 and g["auroc"] == 1.0


def test_frechet_distance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # two Gaussians with identity covariance whose means differ by 3 in one axis: distance ~ 9
    assert frechet_distance(rng.normal(size=(4000, 2)), rng.normal(size=(4000, 2)) + [3, 0]) == pytest.approx(9, rel=0.1)


def test_overlay_red_where_heat():
    img = np.full((8, 8), 0.5, np.float32)
    heat = np.zeros((8, 8), np.float32)
    heat[0, 0] = 1
    o = overlay(img, heat)
    assert o.shape == (8, 8, 3) and o.dtype == np.uint8
    assert o[0, 0, 0] > o[0, 0, 1] and (o[1:, 1:, 0] == o[1:, 1:, 1]).all()


def test_text_against_itself():
    text = ["there is a new moderate left pleural effusion with blunting of the costophrenic angle .",
            "the cardiac silhouette has enlarged compared with the prior study and now shows cardiomegaly ."]
    b = bleu_scores(text, text)
    assert all(v == pytest.approx(1.0) for v in b.values())
    assert rouge_l(text, text) == pytest.approx(1.0)
    m = text_metrics(text, text)
    assert m["clinical_f1"] == 1.0 and m["positive_f1"] == 1.0
    if wordnet_available():
        assert m["meteor"] > 0.99
    else:
        assert meteor(text, text) is None and "meteor" not in m and "METEOR" in m["notes"][0]


def test_text_metrics_lower_for_different_text():
    hyp, ref = ["no significant interval change ."], ["there is a new left pleural effusion ."]
    assert bleu_scores(hyp, ref)["bleu4"] < 0.2
    assert rouge_l(hyp, ref) < 0.5
    assert text_metrics(hyp, ref)["clinical_f1"] == 0.0


def test_clinical_f1_counts():
    hyp = [label_text("New left pleural effusion. No pneumothorax.")]
    ref = [label_text("New left pleural effusion. Small pneumothorax.")]
    f = clinical_f1(hyp, ref)
    # facts hyp: effusion positive, effusion new, pneumothorax negative; ref: effusion +, new, pneumothorax +
    assert f["clinical_precision"] == pytest.approx(2 / 3) and f["clinical_recall"] == pytest.approx(2 / 3)
    assert f["positive_f1"] == pytest.approx(2 / 3)


def test_scores():
    s = binary_scores(np.array([0.1, 0.9, 0.8, 0.3]), np.array([0, 1, 1, 0]))
    assert s["auroc"] == 1.0 and s["accuracy"] == 1.0 and s["f1"] == 1.0
    assert binary_scores(np.array([0.2]), np.array([1]))["auroc"] is None
    truth = np.array([[1, np.nan], [0, 1], [1, 0]])
    m = multilabel_scores(np.array([[0.9, 0.5], [0.1, 0.9], [0.8, 0.1]]), truth, ["a", "b"])
    assert m["per_class"]["a"]["n"] == 3 and m["per_class"]["b"]["n"] == 2 and m["auroc"] == 1.0
    c = multiclass_scores(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, -1]), ["x", "y"])
    assert c["accuracy"] == 1.0 and c["n"] == 2 and c["chance_accuracy"] == 0.5


@pytest.mark.skipif(not wordnet_available(), reason="WordNet not installed (make wordnet)")
def test_meteor_hand_checked():
    """hyp 'the left thorax has liquid' vs ref 'liquid in the left chest': exact the, left, liquid and the WordNet
    synonym thorax~chest: m = 4, P = R = 4/5, Fmean = PR / (0.9 P + 0.1 R) = 0.8; chunks (the left thorax)
    (liquid) = 2, fragmentation 2/4, penalty 0.5 * 0.5^3 = 0.0625; METEOR = 0.8 * (1 - 0.0625) = 0.75.
    Without the synonym stage: m = 3, P = R = 0.6, Fmean 0.6, chunks 2, penalty 0.5 * (2/3)^3, 0.511."""
    assert meteor(["the left thorax has liquid"], ["liquid in the left chest"]) == pytest.approx(0.75)
    # partial match, stems only: small, left, effusion; P 3/4, R 1/2, Fmean 0.375 / 0.725; chunks 2 of 3
    assert meteor(["small left pleural effusion"], ["there is a small left effusion"]) == pytest.approx(
        0.375 / 0.725 * (1 - 0.5 * (2 / 3) ** 3))
    m = text_metrics(["the left thorax has liquid", "a b"], ["liquid in the left chest", "a b"])
    assert m["meteor"] == pytest.approx((0.75 + meteor(["a b"], ["a b"])) / 2) and "notes" not in m


def test_wordnet_layout(tmp_path):
    """eval.wordnet copies the dict files and writes the 45 lexicographer names NLTK's reader checks."""
    from eval import wordnet

    lines = wordnet.lexnames_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[44] == "44\tadj.ppl\t3"
    with pytest.raises(FileNotFoundError, match="data.noun"):
        wordnet.install(tmp_path / "nowhere", tmp_path / "nltk")
    src = tmp_path / "dict"
    src.mkdir()
    for f in wordnet.DATA_FILES:
        (src / f).write_text(f)
    dest = wordnet.install(src, tmp_path / "nltk")
    assert dest == tmp_path / "nltk" / "corpora" / "wordnet"
    assert all((dest / f).read_text() == f for f in wordnet.DATA_FILES) and (dest / "lexnames").is_file()


def test_guidance_mass_where_nothing_changes():
    """``guidance_mass_no_change``: the mean map over items whose true change region is empty; the items with a
    change give IoU / AUROC and do not enter it."""
    from eval.metrics import EvalData, System, image_metrics

    s = 16
    change = np.zeros((s, s), bool)
    change[4:8, 4:8] = True
    data = EvalData(ids=["a", "b", "c"], priors=np.zeros((3, s, s), np.float32), targets=None,
                    masks=[change, np.zeros((s, s), bool), np.zeros((s, s), bool)], references=[""] * 3,
                    prompted=[{}] * 3, target_labels=[{}] * 3, attributes={})
    maps = [change.astype(np.float32), np.full((s, s), 0.2, np.float32), np.zeros((s, s), np.float32)]
    out = image_metrics(System("m", np.zeros((3, s, s), np.float32), [""] * 3, maps), data)
    assert out["guidance_iou"] == 1.0 and out["n_guidance"] == 1
    assert out["guidance_mass_no_change"] == pytest.approx(0.1) and out["n_guidance_no_change"] == 2
