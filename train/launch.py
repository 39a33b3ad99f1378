"""What `make pretrain` / `make finetune` run: build missing default inputs, then launch the stage on every rank.

    python -m train.launch pretrain [--config tiny-pretrain] [--ngpus N] [--nnodes N] [--hostfile FILE]
                                    [--resume] [--dry-run] [-- extra run-config flags]

One node: ``torchrun --standalone`` with N ranks (N = all GPUs; on a CPU-only machine 1 rank, or ``--ngpus``
ranks on gloo, each with cores/N OpenMP threads). Several nodes (``--nnodes`` > 1 or ``--hostfile``): this
environment's own DeepSpeed launcher (``python -m deepspeed.launcher.runner``), which starts the ranks on the
hosts of the hostfile over ssh/pdsh with the same Python; ``--ngpus`` is then required where this node has no
GPU to count. On one node the documented default inputs (docs/architecture.md "Default local paths") and a
missing earlier stage of the demo recipe are built first; a multi-node launch never builds or trains anything
implicitly (an error names what is missing and the command that makes it). ``--dry-run`` prints the commands
instead of running them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from train.config import CONFIG_DIR, resolve_path

REPO = Path(__file__).resolve().parents[1]
STAGES = {"pretrain": ("train.pretrain", "tiny-pretrain"), "finetune": ("train.finetune", "tiny-finetune")}
# default path -> the command that builds it (docs/architecture.md)
BUILDERS = {
    # 12,000 pairs: the size the demo model's recipe (tiny-demo*.yaml) was trained on (~2 min on 2 cores)
    "data/synthcxr-128": [sys.executable, "-m", "progemu", "synth", "--out", "data/synthcxr-128", "--size", "128",
                          "--pairs", "12000", "--workers", "2"],
    # the tiny VQ in two stages (tokenizer/vq_presets.py): plain, then with the perceptual loss of its own networks
    "runs/vq-tiny-base": [sys.executable, "-m", "tokenizer.train_vq", "--preset", "tiny-base", "--out",
                          "runs/vq-tiny-base"],
    "runs/vq-perceptual": [sys.executable, "-m", "eval.train_evaluators", "--data", "data/synthcxr-128", "--out",
                           "runs/vq-perceptual", "--seed", "1"],
    "runs/vq-tiny": [sys.executable, "-m", "tokenizer.train_vq", "--preset", "tiny", "--out", "runs/vq-tiny"],
    "runs/text-tokenizer": [sys.executable, "-m", "tokenizer.train_text_tokenizer", "--out", "runs/text-tokenizer"],
    "data/shards-128": [sys.executable, "-m", "tokenizer.encode_dataset"],
    # the laptop smoke path of tiny-pretrain / tiny-finetune: a small set encoded with the embedded checkpoint's VQ,
    # so that no tokenizer has to be trained before the first step (~1 min on 2 cores)
    "data/synthcxr-128-smoke": [sys.executable, "-m", "progemu", "synth", "--out", "data/synthcxr-128-smoke",
                                "--size", "128", "--pairs", "1000", "--workers", "2"],
    "data/shards-128-smoke": [sys.executable, "-m", "tokenizer.encode_dataset", "--model",
                              "progemu/assets/tiny-synthcxr/vq", "--data", "data/synthcxr-128-smoke/icg-cxr", "--out",
                              "data/shards-128-smoke"],
    "data/shards-128-base": [sys.executable, "-m", "tokenizer.encode_dataset", "--model", "runs/vq-tiny-base", "--out",
                             "data/shards-128-base"],
}
NEEDS = {"data/shards-128": ["data/synthcxr-128", "runs/vq-tiny"], "runs/vq-tiny": ["runs/vq-tiny-base", "runs/vq-perceptual"],
         "runs/vq-tiny-base": ["data/synthcxr-128"], "runs/vq-perceptual": ["data/synthcxr-128"],
         "data/shards-128-base": ["data/synthcxr-128", "runs/vq-tiny-base"],
         "data/shards-128-smoke": ["data/synthcxr-128-smoke"]}
# the file each builder writes last (a half-written folder does not count)
DONE = {"data/synthcxr-128": "manifest.json", "runs/vq-tiny": "metrics.json", "runs/vq-tiny-base": "metrics.json",
        "runs/vq-perceptual": "summary.json", "runs/text-tokenizer": "tokenizer.json",
        "data/shards-128": "encode_info.json", "data/shards-128-base": "encode_info.json",
        "data/synthcxr-128-smoke": "manifest.json", "data/shards-128-smoke": "encode_info.json"}
# fresh patients (another seed) for each later stage of the demo model, so that longer training does not memorise
# one set: stage 4 trains on seed 2, stage 5 on seed 3, stages 6 and 7 on seeds 4-7
for _seed in range(2, 8):
    _data, _shards = f"data/synthcxr-128-s{_seed}", f"data/shards-128-s{_seed}"
    BUILDERS[_data] = [sys.executable, "-m", "progemu", "synth", "--out", _data, "--size", "128", "--pairs", "12000",
                       "--seed", str(_seed), "--workers", "2"]
    BUILDERS[_shards] = [sys.executable, "-m", "tokenizer.encode_dataset", "--data", f"{_data}/icg-cxr", "--out", _shards]
    NEEDS[_shards] = [_data, "runs/vq-tiny"]
    DONE[_data], DONE[_shards] = "manifest.json", "encode_info.json"
# init_from folders that an earlier stage of the recipe writes: the stage's launch arguments
INIT_STAGES = {"runs/pretrain-tiny/final": ["pretrain"],
               "runs/pretrain-tiny-full/final": ["pretrain", "--config", "tiny-pretrain-full"],
               "runs/finetune-demo/final": ["finetune", "--config", "tiny-demo"],
               "runs/finetune-demo-2/final": ["finetune", "--config", "tiny-demo-2"],
               "runs/finetune-demo-3/final": ["finetune", "--config", "tiny-demo-3"],
               "runs/finetune-demo-4/final": ["finetune", "--config", "tiny-demo-4"],
               "runs/finetune-demo-5/final": ["finetune", "--config", "tiny-demo-5"],
               "runs/finetune-demo-6/final": ["finetune", "--config", "tiny-demo-6"],
               "runs/finetune-demo-7/final": ["finetune", "--config", "tiny-demo-7"]}
# init_from folders that a tool makes from earlier stages' models: (the folders it reads, the command)
DERIVED = {"runs/demo-average-5-6": (["runs/finetune-demo-5/final", "runs/finetune-demo-6/final"],
                                     [sys.executable, "-m", "train.average", "runs/finetune-demo-5/final",
                                      "runs/finetune-demo-6/final", "runs/demo-average-5-6"]),
           "runs/demo-grown-10": (["runs/demo-average-5-6"], [sys.executable, "-m", "train.grow",
                                                              "runs/demo-average-5-6", "runs/demo-grown-10",
                                                              "--layers", "10"])}


class LaunchError(SystemExit):
    """A launch that cannot go on as asked: the message says what to change (no traceback)."""


DRY_RUN = False  # --dry-run: print every command instead of running it
_planned: set[str] = set()  # what a dry run has "built" already, so that a shared input is listed once


def sh(cmd: list[str], env: dict[str, str] | None = None) -> None:
    changed = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}  # what this launch sets
    prefix = [f"{k}={shlex.quote(v)}" for k, v in sorted(changed.items())]
    print("+", " ".join([*prefix, *(shlex.quote(c) for c in cmd)]), flush=True)
    if not DRY_RUN:
        subprocess.run(cmd, cwd=REPO, env=env, check=True)


def _done(path: str) -> bool:
    return path in _planned or (REPO / path / DONE[path]).exists()


def ensure(path: str, multinode: bool = False) -> None:
    """Build a documented default input (and what it needs) when it is missing; ``a,b`` builds each.

    ``multinode``: never build (the other nodes would not wait for it, and a tokenizer is a training run of its
    own): a missing input is an error giving the command that makes it."""
    if "," in path:
        for part in path.split(","):
            ensure(part.strip(), multinode)
        return
    if path not in BUILDERS or _done(path):
        return
    if multinode:
        raise LaunchError(f"{path} is missing: a multi-node launch does not build its inputs. Build it first on "
                          f"this node (its folder must be visible to every node): {_show(BUILDERS[path])} "
                          "(DRY_RUN=1 without NNODES / HOSTFILE lists every step)")
    for dep in NEEDS.get(path, []):
        ensure(dep)
    sh(BUILDERS[path])
    if DRY_RUN:
        _planned.add(path)


def _show(cmd: list[str]) -> str:
    return " ".join(shlex.quote("python" if c == sys.executable else c) for c in cmd)


def ensure_init(init: str | None, ngpus: int | None, multinode: bool = False) -> None:
    """Make a missing ``init_from`` folder of the demo recipe: run its stage, or its tool after its inputs.

    ``multinode``: never train a stage implicitly; a missing folder is an error naming the stage to run."""
    if not init or init in _planned or (REPO / init / "config.json").exists():
        return
    if multinode:
        if init in INIT_STAGES:
            stage = INIT_STAGES[init]
            how = f"make {stage[0]}" + (f" CONFIG={stage[2]}" if len(stage) > 2 else "")
        elif init in DERIVED:
            how = _show(DERIVED[init][1])
        else:
            how = "the stage whose output_dir holds it"
        raise LaunchError(f"init_from {init} is missing (no config.json): a multi-node launch does not train an "
                          f"earlier stage implicitly. Run that stage first ({how}, with the same NNODES / HOSTFILE "
                          "if it needs them), or pass another --init_from")
    if init in INIT_STAGES:
        print(f"{init} is missing: running its stage first ({' '.join(INIT_STAGES[init])})", flush=True)
        main([*INIT_STAGES[init], *(["--ngpus", str(ngpus)] if ngpus else []), *(["--dry-run"] if DRY_RUN else [])])
    elif init in DERIVED:
        inputs, cmd = DERIVED[init]
        for src in inputs:
            ensure_init(src, ngpus)
        sh(cmd)
    if DRY_RUN:
        _planned.add(init)


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def check_multinode(ngpus: int | None, nnodes: int, hostfile: str | None) -> None:
    """What a multi-node launch needs, checked before anything runs."""
    if not ngpus and not gpu_count():
        raise LaunchError("a multi-node launch needs NGPUS= (--ngpus, ranks per node): this node has no GPU to "
                          "count them from")
    if nnodes > 1 and not hostfile:
        raise LaunchError(f"NNODES={nnodes} needs HOSTFILE= (the deepspeed launcher reaches the hosts listed "
                          "there); under SLURM run torchrun on every node instead (train/README.md)")
    if hostfile and not Path(hostfile).is_file():
        raise LaunchError(f"{hostfile}: hostfile not found (one line per node: `HOST slots=GPUS`)")


def launch_command(module: str, run_args: list[str], ngpus: int | None, nnodes: int, hostfile: str | None,
                   env: dict[str, str]) -> list[str]:
    """torchrun on one node; on several, this environment's DeepSpeed launcher (never another ``deepspeed``
    that happens to come first on PATH: the remote ranks run the Python that runs the launcher)."""
    gpus = gpu_count()
    if nnodes > 1 or hostfile:
        check_multinode(ngpus, nnodes, hostfile)
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ngpus or gpus)]
        if nnodes > 1:
            cmd += ["--num_nodes", str(nnodes)]
        return [*cmd, "--hostfile", str(Path(str(hostfile)).resolve()), "--module", module, *run_args]
    nproc = ngpus or (gpus if gpus else 1)
    if not gpus:  # CPU ranks share the cores: one OpenMP pool each, not one per core each
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *run_args]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--config", help="a preset in train/configs/ or a YAML path")
    ap.add_argument("--ngpus", type=int, help="ranks per node (GPUs; CPU processes on a machine without GPU)")
    ap.add_argument("--nnodes", type=int, default=1)
    ap.add_argument("--hostfile")
    ap.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    ap.add_argument("--dry-run", action="store_true", help="print the commands (builds, stages, launch), run none")
    argv = list(sys.argv[1:] if argv is None else argv)
    # run-config overrides come after "--"; split them off by hand, since an argparse REMAINDER positional
    # would also swallow this launcher's own flags (--config, --ngpus, ...) given after the stage
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    a.rest = argv[cut + 1:]
    global DRY_RUN
    DRY_RUN = DRY_RUN or a.dry_run
    multinode = a.nnodes > 1 or bool(a.hostfile)
    if multinode:
        check_multinode(a.ngpus, a.nnodes, a.hostfile)
    module, default = STAGES[a.stage]
    config = a.config or default
    values = yaml.safe_load(Path(resolve_path(config, CONFIG_DIR, ".yaml")).read_text()) or {}
    rest = [x for x in a.rest if x != "--"]
    for i, flag in enumerate(rest):  # command-line overrides of the input paths (--key value or --key=value)
        key, eq, val = flag.lstrip("-").partition("=")
        if key in ("shards", "processor", "text_tokenizer", "vq", "init_from") and (eq or i + 1 < len(rest)):
            values[key] = val if eq else rest[i + 1]
    for key in ("shards", "text_tokenizer", "vq"):
        if "processor" not in values or key == "shards":
            ensure(str(values.get(key, "")), multinode)
    ensure_init(values.get("init_from"), a.ngpus, multinode)
    run_args = ["--config", config, *(["--resume_from_checkpoint", "auto"] if a.resume else []), *rest]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    sh(launch_command(module, run_args, a.ngpus, a.nnodes, a.hostfile, env), env=env)


if __name__ == "__main__":
    main()
