"""End to end on a hand-made ICG-CXR-format fixture: evaluators, a fake `progemu generate` folder, evaluate,
metrics with known answers (the true follow-up is its own counterfactual), report.html rendered in Chromium."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.data import ImageTable, load_records
from eval.evaluate import evaluate, vq_round_trip
from eval.image_metrics import fit
from eval.train_evaluators import train_all
from progemu.classifier import Evaluator, available

SIZE = 64


def _png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(path)


def _study(rng, male: bool, effusion: bool) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = 0.3 + 0.2 * yy + 0.03 * rng.standard_normal((SIZE, SIZE))
    if male:  # a visible attribute signature
        img[2:8, 8:56] += 0.4
    blob = (yy - 0.75) ** 2 + (xx - 0.7) ** 2 < 0.02
    if effusion:
        img[blob] = 0.95
    return img.astype(np.float32), blob


def make_fixture(root: Path, counts=(("train", 48), ("validate", 16), ("test", 8))) -> Path:
    """ICG-CXR layout with the extra synth-change-mask field; effusion changes between studies."""
    rng = np.random.default_rng(0)
    for split, n in counts:
        for i in range(n):
            pair = f"{split}{i:03d}"
            folder = root / "icg-cxr" / "fixture" / "pa" / pair
            folder.mkdir(parents=True)
            male, before, after = bool(i % 2), bool(i % 4 < 2), bool((i // 2) % 2 == 0) ^ (i % 3 == 0)
            prior, blob = _study(rng, male, before)
            target = prior.copy()
            if before != after:
                target[blob] = 0.95 if after else prior[~blob].mean()
            change = blob if before != after else np.zeros_like(blob)
            _png(folder / f"{pair}-ref-reg.png", prior)
            _png(folder / f"{pair}-flu-reg.png", target)
            _png(folder / f"{pair}-change-mask.png", change.astype(np.float32))
            text = ("New left pleural effusion." if after and not before else "The left pleural effusion has resolved."
                    if before and not after else "No significant interval change.")
            labels = lambda e: {"Pleural Effusion": float(e), "No Finding": float(not e)}  # noqa: E731
            (folder / f"{pair}.json").write_text(json.dumps({
                "progression-description": {(False, True): "A left pleural effusion develops.",
                                            (True, False): "The left pleural effusion resolves."}.get(
                    (before, after), "The chest stays as it is."),
                "changes-of-findings": text, "split": split, "sex": "M" if male else "F", "age": 30 + i,
                "reference-diseases": labels(before), "followup-diseases": labels(after),
                "synth-change-mask": f"{pair}-change-mask.png"}))
    return root


def fake_generation(root: Path, out: Path) -> Path:
    """A `progemu generate` folder: outputs = the true follow-ups, the reference texts, guidance = change mask;
    one item failed."""
    out.mkdir(parents=True)
    rows = []
    for rec in load_records(root, "icg-cxr"):
        if rec.split != "test":
            continue
        if rec.id == "test007":
            rows.append({"id": rec.id, "error": "IngestError: unreadable image"})
            continue
        d = out / rec.id
        d.mkdir()
        shutil.copy(rec.target_image, d / "counterfactual.png")
        (d / "interpretation.txt").write_text(rec.interpretation)
        mask = np.asarray(Image.open(rec.extra["change_mask"]), np.float32) / 255
        np.save(d / "guidance.npy", mask)
        (d / "record.json").write_text(json.dumps({"id": rec.id}))
        rows.append({"id": rec.id, "ok": True})
    (out / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    # tiny networks: one thread avoids contention on a shared 2-core machine (20x slower with 2 under load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _evaluate_fixture(tmp_path_factory.mktemp("eval"))
    finally:
        torch.set_num_threads(threads)


def _evaluate_fixture(tmp):
    data = make_fixture(tmp / "data")
    recs = load_records(data, "icg-cxr")
    train = ImageTable.from_records([r for r in recs if r.split == "train"], SIZE)
    held = ImageTable.from_records([r for r in recs if r.split == "validate"], SIZE)
    evs = train_all(train, held, size=SIZE, epochs=15, width=8, log=lambda s: None)
    for ev in evs.values():
        ev.save(tmp / "evaluators")
    gen = fake_generation(data, tmp / "generated")
    metrics = evaluate(data, tmp / "out", generated=gen, evaluators_dir=tmp / "evaluators", size=SIZE, log=lambda s: None)
    return tmp, metrics


def test_evaluators_saved_with_heldout_accuracy(evaluated):
    tmp, _ = evaluated
    assert set(available(tmp / "evaluators")) >= {"findings", "sex"}
    ev = Evaluator.load(tmp / "evaluators", "findings")
    assert ev.spec.classes == ["No Finding", "Pleural Effusion"] and ev.spec.heldout["auroc"] is not None
    spec = json.loads((tmp / "evaluators" / "findings.json").read_text())
    spec["heldout"] = {}
    (tmp / "evaluators" / "nohold.json").write_text(json.dumps({**spec, "name": "nohold"}))
    shutil.copy(tmp / "evaluators" / "findings.safetensors", tmp / "evaluators" / "nohold.safetensors")
    with pytest.raises(Exception, match="no held-out accuracy"):
        Evaluator.load(tmp / "evaluators", "nohold")
    (tmp / "evaluators" / "nohold.json").unlink()


def test_known_answers(evaluated):
    tmp, m = evaluated
    assert m["n_items"] == 7 and m["n_failed"] == 1 and "test007" in m["failed"]
    model, ident, true = m["systems"]["model"], m["systems"]["identity"], m["systems"]["true_followup"]
    # the fake outputs are the true follow-ups with the reference texts and the true change mask as guidance
    assert model["image"]["ssim"] == pytest.approx(1.0) and true["image"]["ssim"] == pytest.approx(1.0)
    assert model["image"]["guidance_iou"] == 1.0 and model["image"]["guidance_auroc"] == 1.0
    assert model["text"]["bleu1"] == pytest.approx(1.0) and model["text"]["clinical_f1"] == 1.0
    assert ident["image"]["ssim_outside_change"] == pytest.approx(1.0)
    assert ident["text"]["clinical_f1"] < 1.0
    assert json.loads((tmp / "out" / "metrics.json").read_text())["systems"]["model"]["n"] == 7
    md = (tmp / "out" / "metrics.md").read_text()
    assert "SSIM vs true counterfactual" in md and "Evaluators (held-out accuracy)" in md


def test_true_followup_through_the_vq(evaluated, tmp_path):
    from progemu.processing_progemu import ProgEmuProcessor
    from tests._gen_helpers import make_model_dir

    tmp, _ = evaluated
    model = make_model_dir(tmp_path / "model", image_size=32)  # a random tokenizer in model/vq, 32 px
    m = evaluate(tmp / "data", tmp_path / "out", generated=tmp / "generated", model=model,
                 evaluators_dir=tmp / "evaluators", size=SIZE, log=lambda s: None)
    vqf, true = m["systems"]["vq_followup"], m["systems"]["true_followup"]
    assert vqf["text"] == true["text"]  # the same reference interpretations: only the images differ
    assert true["image"]["ssim"] == pytest.approx(1.0) and vqf["image"]["ssim"] < 0.9
    # the images are what generation would show for the true codes: the processor's reading, the model's encoding
    # and decoding (its own image tokenizer, as the pipeline uses it)
    from progemu.image_codes import decode_codes, encode_images
    from progemu.modeling_progemu import ProgEmuForCausalLM

    paths = sorted((tmp / "data").rglob("*.png"))[:3]
    proc = ProgEmuProcessor.from_pretrained(str(model))
    owner = ProgEmuForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    codes = encode_images(owner, proc, paths)
    expect = [fit(im, (SIZE, SIZE)) for im in decode_codes(owner, codes)]
    got = vq_round_trip(model, paths, SIZE)
    assert got.shape == (3, SIZE, SIZE) and np.allclose(got, np.stack(expect), atol=1e-5)
    assert not np.allclose(got, vq_round_trip(model, paths[1:] + paths[:1], SIZE), atol=1e-3)  # per image, in order


def test_report_is_self_contained(evaluated):
    tmp, _ = evaluated
    page = (tmp / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 * 7
    assert "src='http" not in page and 'src="http' not in page
    assert "Prompt:" in page and "Reference:" in page and (tmp / "out" / "metrics.png").is_file()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_chromium(evaluated, tmp_path):
    tmp, _ = evaluated
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", f"--screenshot={shot}",
           (tmp / "out" / "report.html").resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    arr = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert arr.std() > 10, "the screenshot is blank"
    assert (arr < 128).mean() > 0.01  # text and images drawn, not an empty page


def test_read_generated_reasons(tmp_path):
    from eval.outputs import load_guidance, read_generated
    from progemu.errors import ProgEmuError

    (tmp_path / "a").mkdir()
    _png(tmp_path / "a" / "counterfactual.png", np.zeros((8, 8)))  # no record.json: unfinished
    (tmp_path / "results.jsonl").write_text('{"id": "b", "status": "error", "error": "IngestError: x.png: empty"}\n'
                                            "not json\n")
    got = read_generated(tmp_path, ["a", "b", "c"])
    assert "unfinished" in got["a"].error and "empty" in got["b"].error and "not generated" in got["c"].error
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ProgEmuError, match="bad.npy"):
        load_guidance(tmp_path / "bad.npy")
    with pytest.raises(ProgEmuError, match="not found"):
        read_generated(tmp_path / "missing", ["a"])


def test_cli_needs_outputs_or_model(evaluated, capsys):
    from eval.evaluate import main

    tmp, _ = evaluated
    assert main(["--data", str(tmp / "data"), "--out", str(tmp / "cli"), "--evaluators", str(tmp / "evaluators")]) == 2
    assert "--generated" in capsys.readouterr().err
