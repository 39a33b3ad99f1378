"""The batch command and pipeline on a random tiny model folder: outputs, error records, resume, regions."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from progemu.cli import main
from progemu.generation import CounterfactualPipeline, DecodeOptions, GenerationItem, PipelineOptions, SamplingOptions
from progemu.generation.guidance import change_grid, upsample
from progemu.generation.region import anatomy_map, coverage_grid
from progemu.image_codes import decode_codes, encode_images
from tests._gen_helpers import make_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return CounterfactualPipeline.from_pretrained(model_dir, device="cpu")


def _image(path, seed=0, size=(40, 52)):
    Image.fromarray((np.random.default_rng(seed).random(size) * 255).astype(np.uint8)).save(path)
    return path


def _manifest(tmp_path):
    _image(tmp_path / "p1.png", 1)
    _image(tmp_path / "p2.png", 2, (64, 64))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    mask = np.zeros((100, 100), np.uint8)
    mask[:50, :50] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    colour = np.zeros((10, 10, 3), np.uint8)
    colour[..., 1] = 255
    Image.fromarray(colour).save(tmp_path / "colour.png")
    lines = [
        {"id": "ok1", "image": "p1.png", "prompt": "moderate left pleural effusion has developed."},
        {"id": "ok2", "image": "p2.png", "prompt": "the right lung is clear.", "mask": "mask.png"},
        {"id": "bad-image", "image": "broken.png", "prompt": "cardiomegaly is unchanged."},
        {"id": "bad-prompt", "image": "p1.png", "prompt": "  "},
        {"id": "bad-mask", "image": "p1.png", "prompt": "cardiomegaly is unchanged.", "mask": "colour.png"},
        {"id": "no-file", "image": "missing.png", "prompt": "cardiomegaly is unchanged."},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{not json\n" + json.dumps(lines[0]) + "\n"  # + a duplicate
    (tmp_path / "manifest.jsonl").write_text(text)
    return tmp_path / "manifest.jsonl"


def test_batch_command_records_errors_and_resumes(model_dir, tmp_path):
    manifest, out = _manifest(tmp_path), tmp_path / "out"
    args = ["generate", "--model", str(model_dir), "--input", str(manifest), "--out", str(out), "--no-progress",
            "--batch-size", "4", "--num-samples", "2", "--cfg-image", "2.0", "--max-text-tokens", "6",
            "--device", "cpu"]
    assert main(args) == 1  # some items failed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    status = {r["id"]: r["status"] for r in rows}
    assert status == {"ok1": "ok", "ok2": "ok", "bad-image": "error", "bad-prompt": "error", "bad-mask": "error",
                      "no-file": "error", "line-7": "error", "line-8": "error"}
    assert len(rows) == 8 and "duplicate id 'ok1'" in next(r["error"] for r in rows if r["id"] == "line-8")
    errors = {r["id"]: r["error"] for r in rows if r["status"] == "error"}
    assert "broken.png" in errors["bad-image"] and "colour.png" in errors["bad-mask"]
    assert "missing.png" in errors["no-file"] and "prompt" in errors["bad-prompt"]
    for item in ("ok1", "ok2"):
        folder = out / item
        for name in ("counterfactual.png", "counterfactual-1.png", "interpretation.txt", "guidance.png",
                     "guidance.npy", "record.json"):
            assert (folder / name).is_file(), name
        g = np.load(folder / "guidance.npy")
        assert g.dtype == np.float32 and g.shape == (32, 32) and 0 <= g.min() and g.max() <= 1
        rec = json.loads((folder / "record.json").read_text())
        assert len(set(rec["seeds"])) == 2 and rec["options"]["decode"]["cfg_image"] == 2.0
    assert json.loads((out / "ok2" / "record.json").read_text())["region"]["source"] == "mask"
    assert not list(out.rglob(".*tmp*"))  # no temporary files left behind

    before = (out / "ok1" / "counterfactual.png").read_bytes()
    stamp = (out / "ok2" / "record.json").stat().st_mtime_ns
    (out / "ok1" / "record.json").unlink()  # as if interrupted before ok1 finished
    main(args)
    assert (out / "ok2" / "record.json").stat().st_mtime_ns == stamp  # finished item skipped
    assert (out / "ok1" / "counterfactual.png").read_bytes() == before  # redone, same seed, same image
    assert len((out / "results.jsonl").read_text().splitlines()) == 8

    # other options, another input file or other weights: the finished items are redone, not reused
    record = out / "ok2" / "record.json"

    def redone(*extra: str) -> bool:
        before = record.stat().st_mtime_ns
        main([*args[:-2], "--cfg-text", "1.5", *extra, "--device", "cpu"])
        return record.stat().st_mtime_ns != before

    assert redone()  # other options
    assert json.loads(record.read_text())["options"]["decode"]["cfg_text"] == 1.5
    assert not redone()  # the same job again: skipped
    assert not redone("--cache", "dynamic")  # a speed-only setting
    assert redone("--cfg-null", "prior")  # another CFG branch
    assert not redone("--cfg-null", "prior")
    assert redone("--cfg-null", "both", "--cfg-prior", "2")
    assert not redone("--cfg-null", "both", "--cfg-prior", "2")
    assert redone("--cfg-null", "both", "--cfg-prior", "1.5")
    assert redone("--cfg-null", "prior")

    def written_before_cfg_null() -> None:  # a record from before the options existed means the old branch
        data = json.loads(record.read_text())
        data["options"].pop("cfg_null")
        data["options"]["decode"].pop("cfg_prior", None)
        record.write_text(json.dumps(data))

    written_before_cfg_null()
    assert redone("--cfg-null", "prior") and not redone("--cfg-null", "prior")
    written_before_cfg_null()
    assert not redone()  # the default branch is the old one: not redone
    _image(tmp_path / "p2.png", 9, (64, 64))  # another image under the same path
    assert redone()
    weights = model_dir / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # "retrained"
    assert redone()


def test_pipeline_region_keeps_prior_codes_outside(pipe):
    lay = pipe.layout
    prior = np.random.default_rng(3).random((32, 32)).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[24:, 24:] = True
    opts = PipelineOptions(decode=DecodeOptions(cfg_image=3.0, max_text_tokens=4), dilate=0, num_samples=2)
    res = pipe([GenerationItem("x", image=prior, prompt="new consolidation in the right lower lung.", mask=mask)],
               opts)
    codes = encode_images(pipe.model, pipe.processor, [prior])[0]
    for r in res:
        assert r.edit_mask.shape == (lay.grid_h, lay.grid_w) and int(r.edit_mask.sum()) == 1
        assert torch.equal(r.codes[~r.edit_mask], codes[~r.edit_mask])
    prompt = "moderate left pleural effusion has developed."
    cov = coverage_grid(anatomy_map("pleural_effusion", 32, "left"), lay.grid_h, lay.grid_w)
    anat = pipe([GenerationItem("z", image=prior, prompt=prompt)],
                PipelineOptions(region="anatomy", dilate=0, decode=DecodeOptions(max_text_tokens=2)))[0]
    assert anat.region["finding"] == "pleural_effusion" and anat.region["laterality"] == "left"
    assert torch.equal(anat.edit_mask, cov > 0.5)
    auto = pipe([GenerationItem("y", image=prior, prompt=prompt)],
                PipelineOptions(region="auto", tau=0.2, dilate=0, decode=DecodeOptions(max_text_tokens=2)))[0]
    assert auto.region["source"] == "auto" and not (auto.edit_mask & (cov == 0)).any()  # G = R x anatomy
    for r in (anat, auto):
        assert torch.equal(r.codes[~r.edit_mask], codes[~r.edit_mask])
    # a prompt that changes two findings: the region is the union of both priors, each on its own side
    two = "moderate left pleural effusion has developed. moderate cardiomegaly has appeared. no pneumothorax."
    both = pipe([GenerationItem("w", image=prior, prompt=two)],
                PipelineOptions(region="anatomy", dilate=0, decode=DecodeOptions(max_text_tokens=2)))[0]
    heart = coverage_grid(anatomy_map("cardiomegaly", 32, None), lay.grid_h, lay.grid_w)
    union = coverage_grid(np.maximum(anatomy_map("pleural_effusion", 32, "left"), anatomy_map("cardiomegaly", 32)),
                          lay.grid_h, lay.grid_w)
    assert both.region["findings"] == [["pleural_effusion", "left"], ["cardiomegaly", None]]
    assert torch.equal(both.edit_mask, union > 0.5) and (both.edit_mask & (heart > 0.5) & (cov <= 0.5)).any()
    assert torch.equal(both.codes[~both.edit_mask], codes[~both.edit_mask])
    # a prompt that changes nothing edits nothing: the prior's codes and, pasted, its pixels
    same = pipe([GenerationItem("v", image=prior, prompt="No significant change. Stable moderate cardiomegaly.")],
                PipelineOptions(region="auto", tau=0.2, paste_prior=True, decode=DecodeOptions(max_text_tokens=2)))[0]
    assert not same.edit_mask.any() and torch.equal(same.codes, codes) and np.array_equal(same.image, prior)
    assert "nothing edited" in same.region["note"]


def test_paste_prior_keeps_every_pixel_outside_the_region(pipe):
    prior = np.random.default_rng(4).random((32, 32)).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 16:] = True
    item = GenerationItem("p", image=prior, prompt="new consolidation in the right lower lung.", mask=mask)
    base = PipelineOptions(decode=DecodeOptions(max_text_tokens=2), dilate=0, seed=7)
    plain = pipe([item], base)[0]
    pasted = pipe([item], PipelineOptions(decode=DecodeOptions(max_text_tokens=2), dilate=0, seed=7, region="mask",
                                          paste_prior=True))[0]
    cell = 32 // pipe.layout.grid_h
    inside = np.kron(pasted.edit_mask.numpy(), np.ones((cell, cell))).astype(bool)
    assert np.array_equal(pasted.image[~inside], prior[~inside])  # outside: the prior, bit for bit
    assert not np.allclose(plain.image[~inside], prior[~inside], atol=1e-3)  # which the VQ decoder alone is not
    assert torch.equal(pasted.codes, plain.codes) and pasted.text == plain.text  # pasting touches pixels only


def test_paste_prior_inside_the_mask_keeps_the_cells_whose_codes_were_kept(pipe, monkeypatch):
    """Only changed codes and the one-cell ring around them come from the VQ decoder."""
    prior = np.random.default_rng(6).random((32, 32)).astype(np.float32)
    generate = pipe.generator.generate

    def keep_left_half(*a, **kw):  # as if the model had copied the prior's codes in the left half of the grid
        out = generate(*a, **kw)
        out.codes[..., :2] = kw["prior_codes"][..., :2]
        return out

    monkeypatch.setattr(pipe.generator, "generate", keep_left_half)
    item = GenerationItem("k", image=prior, prompt="new consolidation in the right lower lung.",
                          mask=np.ones((32, 32), bool))
    res = pipe([item], PipelineOptions(decode=DecodeOptions(max_text_tokens=1), dilate=0, region="mask",
                                       paste_prior=True))[0]
    changed = res.codes != encode_images(pipe.model, pipe.processor, [prior])[0]
    assert bool(res.edit_mask.all()) and not changed[:, :2].any() and changed[:, 2:].all()
    cell = 32 // pipe.layout.grid_w
    assert np.array_equal(res.image[:, :cell], prior[:, :cell])  # two cells from any change: the prior's pixels
    assert not np.allclose(res.image[:, 3 * cell:], prior[:, 3 * cell:], atol=1e-3)  # the edit is kept


@pytest.mark.parametrize("null", ["unconditional", "prior"])
def test_cfg_null_branch_is_the_one_asked_for(pipe, null, monkeypatch):
    """The null rows are the ones asked for, and the first guided code is argmax(null + s (cond - null)) of two
    plain forwards."""
    lay, proc = pipe.layout, pipe.processor
    prior = np.random.default_rng(5).random((32, 32)).astype(np.float32)
    item = GenerationItem("c", image=prior, prompt="new consolidation in the right lower lung.")
    codes = encode_images(pipe.model, proc, [prior])[0]
    cond_ids = proc.build_generation_prompt("icg", prior_codes=codes, prompt=item.prompt)
    null_ids = (proc.build_generation_prompt("icg", prior_codes=codes, prompt="") if null == "prior"
                else proc.build_generation_prompt("icg", unconditional=True))
    lo, hi = lay.image_token_offset, lay.image_token_offset + lay.codebook_size
    with torch.no_grad():
        cond, ref = (pipe.model(input_ids=torch.tensor([ids])).logits[0, -1, lo:hi].float() for ids in (cond_ids, null_ids))
    seen, generate = [], pipe.generator.generate
    monkeypatch.setattr(pipe.generator, "generate", lambda *a, **kw: seen.append(kw["null_prompts"]) or generate(*a, **kw))
    for scale in (1.0, 6.0):
        decode = DecodeOptions(image=SamplingOptions(greedy=True), cfg_image=scale, max_text_tokens=1)
        out = pipe([item], PipelineOptions(decode=decode, guidance="none", cfg_null=null))[0]
        assert int(out.codes.flatten()[0]) == int(torch.argmax(ref + scale * (cond - ref)))
    assert seen == [[null_ids], [null_ids]]
    with pytest.raises(ValueError, match="cfg_null"):
        PipelineOptions(mode="report2image", cfg_null="prior")


def test_three_branch_pipeline_passes_both_nulls(pipe, monkeypatch):
    """--cfg-null both: the unconditional and the prompt-free prior rows both reach the generator, and with
    cfg_prior = cfg_image the codes are those of plain CFG against the unconditional rows."""
    proc = pipe.processor
    prior = np.random.default_rng(6).random((32, 32)).astype(np.float32)
    item = GenerationItem("t", image=prior, prompt="new consolidation in the right lower lung.")
    codes = encode_images(pipe.model, proc, [prior])[0]
    seen, generate = [], pipe.generator.generate
    monkeypatch.setattr(pipe.generator, "generate", lambda *a, **kw: seen.append(kw) or generate(*a, **kw))
    outs = {}
    for null, s_p in (("both", 3.0), ("unconditional", 1.0)):  # cfg_prior belongs to "both" alone
        decode = DecodeOptions(image=SamplingOptions(greedy=True), cfg_image=3.0, cfg_prior=s_p, max_text_tokens=2)
        outs[null] = pipe([item], PipelineOptions(decode=decode, guidance="none", cfg_null=null))[0]
    assert seen[0]["null_prompts"] == [proc.build_generation_prompt("icg", unconditional=True)]
    assert seen[0]["prior_null_prompts"] == [proc.build_generation_prompt("icg", prior_codes=codes, prompt="")]
    assert seen[1]["prior_null_prompts"] is None
    assert torch.equal(outs["both"].codes, outs["unconditional"].codes)
    assert outs["both"].text == outs["unconditional"].text
    with pytest.raises(ValueError, match="cfg_null 'both'"):
        PipelineOptions(mode="image2report", cfg_null="both")


def test_generate_command_rejects_contradicting_options(model_dir, tmp_path, capsys):
    args = ["generate", "--model", str(model_dir), "--input", str(_manifest(tmp_path)), "--out", str(tmp_path / "o")]
    assert main([*args, "--mode", "report2image", "--cfg-null", "prior"]) == 2
    assert main([*args, "--region", "auto", "--guidance", "none"]) == 2
    assert main([*args, "--cfg-prior", "2"]) == 2  # a three-branch scale without three branches
    assert main([*args, "--paste-prior"]) == 2  # nothing to paste outside of without a region
    err = capsys.readouterr().err
    assert "paste_prior keeps the prior's pixels outside the edit region" in err
    assert "cfg_null 'prior' needs a prior" in err and "region 'auto' needs a guidance map" in err
    assert "cfg_prior is the prior branch's scale" in err
    assert not (tmp_path / "o").exists()  # nothing started


def test_report_to_image_and_image_to_report(pipe):
    items = [GenerationItem("r", prompt="cardiomegaly is unchanged.")]
    img = pipe(items, PipelineOptions(mode="report2image", decode=DecodeOptions(max_text_tokens=0)))[0]
    assert img.image.shape == (32, 32) and img.guidance is None
    prior = np.random.default_rng(4).random((32, 32)).astype(np.float32)
    rep = pipe([GenerationItem("i", image=prior)], PipelineOptions(mode="image2report",
                                                                   decode=DecodeOptions(max_text_tokens=5)))[0]
    assert rep.image is None and isinstance(rep.text, str)


def test_change_map_is_where_the_codes_changed_and_empty_when_nothing_changes(pipe, monkeypatch):
    """guidance = where the model changed the image (its decoded codes against the prior's); relevance = where the
    prompt asked for a change; a prompt that changes nothing leaves both empty."""
    prior = np.random.default_rng(8).random((32, 32)).astype(np.float32)
    codes = encode_images(pipe.model, pipe.processor, [prior])[0]
    mask = np.zeros((32, 32), bool)
    mask[:, 16:] = True  # the right half may change
    item = GenerationItem("c", image=prior, prompt="new consolidation in the right lower lung.", mask=mask)
    res = pipe([item], PipelineOptions(region="mask", dilate=0, decode=DecodeOptions(max_text_tokens=1)))[0]
    changed = (res.codes != codes).numpy()  # (h, w)
    assert changed.any() and not changed[:, : changed.shape[1] // 2].any()
    # the change is the model's: decoded codes against the prior's decoded codes (not the raw prior, which the VQ
    # never reproduces exactly); locality with a trained VQ: test_embedded_assets
    dec = decode_codes(pipe.model, torch.stack([res.codes, codes]))
    want = upsample(change_grid(dec[0], dec[1], changed.shape), (32, 32))
    assert res.guidance.shape == (32, 32) and res.guidance.max() > 0
    np.testing.assert_allclose(res.guidance, want, atol=1e-5)
    assert res.relevance is not None and res.relevance.max() > 0
    same = pipe([GenerationItem("s", image=prior, prompt="No significant change. Stable moderate cardiomegaly.")],
                PipelineOptions(region="auto", tau=0.2, decode=DecodeOptions(max_text_tokens=1)))[0]
    assert same.guidance.max() == 0.0 and same.relevance.max() == 0.0


def test_prior_reconstruction_is_recorded_and_an_unfamiliar_input_warned(model_dir, tmp_path):
    """record.json holds the prior's PSNR / SSIM through the tokenizer; below the VQ's validation figures the
    results line and the console carry a warning that names the figure and the training data."""
    from progemu.generation.fidelity import reconstruction_scores

    manifest, out = _manifest(tmp_path), tmp_path / "out"
    args = ["generate", "--model", str(model_dir), "--input", str(manifest), "--out", str(out), "--no-progress",
            "--max-text-tokens", "2", "--device", "cpu"]
    main(args)
    rec = json.loads((out / "ok1" / "record.json").read_text())
    pipe = CounterfactualPipeline.from_pretrained(model_dir, device="cpu")
    prior = pipe.load_prior(tmp_path / "p1.png")
    recon = decode_codes(pipe.model, encode_images(pipe.model, pipe.processor, [prior]))[0]
    assert rec["prior_reconstruction"] == reconstruction_scores(prior, recon)
    assert all("warning" not in json.loads(x) for x in (out / "results.jsonl").read_text().splitlines())

    vq_config = model_dir / "vq" / "config.json"
    saved = vq_config.read_text()
    try:  # a tokenizer whose own validation images reconstruct far better than these random priors
        config = json.loads(saved)
        config["validation"] = {"data": "SynthCXR 32 px", "psnr": 40.0, "psnr_p01": 38.0, "ssim": 0.99,
                                "ssim_p01": 0.98}
        vq_config.write_text(json.dumps(config))
        result = subprocess_run(args[:6] + [str(tmp_path / "out2"), *args[7:]])
    finally:
        vq_config.write_text(saved)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "out2" / "results.jsonl").read_text().splitlines())}
    assert "PSNR" in rows["ok1"]["warning"] and "SynthCXR 32 px" in rows["ok1"]["warning"]
    assert "warning: item 'ok1'" in result.stderr


def subprocess_run(argv):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "progemu", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
