"""`make demo`: the whole pipeline offline on SynthCXR, from a fresh clone to a visual report.

    python -m eval.demo                  # embedded checkpoint (progemu/assets/tiny-synthcxr), a few minutes
    python -m eval.demo --from-scratch   # builds data, tokenizers and the model (`make finetune CONFIG=tiny-demo-7`)

Steps: (1) build a SynthCXR test set of unseen patients, (2) load the embedded tiny model and evaluators, or
train them, (3) batch-generate counterfactuals with interpretations and guidance maps, region-specific editing
on, (4) evaluate against the true counterfactuals and write ``report.html``, (5) print the headline metrics and
the issue's quality bar.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_MODEL = REPO / "progemu" / "assets" / "tiny-synthcxr"
EMBEDDED_EVALUATORS = REPO / "eval" / "assets" / "evaluators"
# Generation settings of the demo: greedy codes (greedy beat sampling at this scale), CFG 2 on the image,
# edits restricted to the guidance map x anatomical prior (InstructX2X's rule) at tau 0.05, grown by one code cell
# (the VQ's measured reach), the prior's pixels kept wherever its codes were kept. Chosen on 96 *validate* pairs of
# data/synthcxr-128, never on the demo's test set (README "Demo results": the settings compared).
GENERATE_ARGS = "--greedy --cfg-image 2.0 --region auto --tau 0.05 --dilate 1 --paste-prior --batch-size 8"
# (metric path under metrics.json's systems.<system>, label, bar; higher is better for all)
BAR = [
    (("findings", "prompted_state_found"), "prompted state found by the classifier", 0.80),
    (("text", "clinical_f1"), "clinical label F1 of the interpretations", 0.80),
    (("image", "ssim_outside_change"), "SSIM outside the true change region", 0.90),
    (("demographics", "sex_accuracy"), "sex preserved (attribute model on the output = true sex)", 0.95),
    (("demographics", "age_group_accuracy"), "age group preserved (= true age group)", 0.95),
]


def step(n: int, text: str) -> None:
    print(f"\n[demo {n}/5] {text}", flush=True)


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def lookup(d: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def headline(metrics: dict) -> list[str]:
    """The quality-bar table: model, identity floor, true follow-up ceiling, its VQ round trip, bar, pass."""
    rows = ["| metric | model | identity (floor) | true follow-up (ceiling) | through the VQ | bar | met |",
            "|---|---|---|---|---|---|---|"]
    for path, label, bar in BAR:
        vals = [lookup(metrics, ("systems", s, *path)) for s in ("model", "identity", "true_followup", "vq_followup")]
        fmt = ["-" if v is None else f"{v:.3f}" for v in vals]
        met = "-" if vals[0] is None else ("yes" if vals[0] >= bar else "no")
        rows.append(f"| {label} | {' | '.join(fmt)} | >= {bar} | {met} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-scratch", action="store_true", help="train everything instead of the embedded checkpoint")
    ap.add_argument("--out", default="runs/demo")
    # ~300 test items: about 200 carry a prompted finding, enough to read a rate to +-0.03 (76 items gave +-0.06)
    ap.add_argument("--items", type=int, default=0,
                    help="test counterfactuals to generate and evaluate (0: the whole test split, ~300; else >= 32)")
    ap.add_argument("--pairs", type=int, default=2400, help="pairs of the demo's SynthCXR data set")
    a = ap.parse_args(argv)
    if 0 < a.items < 32:
        ap.error("--items: at least 32 counterfactuals (or 0 for the whole test split)")
    t0, py, out = time.time(), sys.executable, REPO / a.out

    step(1, "SynthCXR: a data set of unseen patients (seed 1234) with true counterfactuals and change masks")
    data = REPO / "data" / "synthcxr-demo"
    manifest = data / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("pairs") != a.pairs:
        shutil.rmtree(data)  # another size (an older default): rebuild, so that the test split is the documented one
    if not manifest.is_file():
        run([py, "-m", "progemu", "synth", "--out", str(data), "--pairs", str(a.pairs), "--size", "128",
             "--seed", "1234", "--workers", "2"])

    if a.from_scratch:
        step(2, "training: SynthCXR 12,000 pairs, VQ and text tokenizers, then the tiny model (make finetune)")
        # train.launch builds what is missing (data/synthcxr-128 with 12,000 pairs included), then stages 1 to 6,
        # their mean grown to 10 blocks (train.average, train.grow) and stage 7 from it
        run([py, "-m", "train.launch", "finetune", "--config", "tiny-demo-7"])
        model, evaluators = REPO / "runs" / "finetune-demo-7" / "final", REPO / "runs" / "evaluators"
        if not (evaluators / "findings.json").is_file():
            run([py, "-m", "eval.train_evaluators", "--data", "data/synthcxr-128", "--out", str(evaluators)])
    else:
        step(2, f"loading the embedded checkpoint {EMBEDDED_MODEL.relative_to(REPO)} and evaluators")
        model, evaluators = EMBEDDED_MODEL, EMBEDDED_EVALUATORS

    step(3, f"generating {a.items or 'all test'} counterfactuals (region-specific editing on: {GENERATE_ARGS})")
    step(4, "evaluating against the true counterfactuals; writing report.html")
    if (out / "generated").exists() and not (out / "generated" / "results.jsonl").exists():
        shutil.rmtree(out / "generated")
    run([py, "-m", "eval.evaluate", "--model", str(model), "--data", str(data), "--out", str(out),
         "--evaluators", str(evaluators), "--limit", str(a.items), "--generate-args", GENERATE_ARGS])

    step(5, "headline metrics")
    metrics = json.loads((out / "metrics.json").read_text())
    print("\n".join(headline(metrics)))
    print(f"\n{metrics.get('n_items')} items evaluated, {metrics.get('n_failed')} failed; "
          f"finished in {(time.time() - t0) / 60:.1f} min")
    print(f"report: {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
