"""What `make pretrain` / `make finetune` run: build missing default inputs, then launch the stage on every rank.

    python -m train.launch pretrain [--config tiny-pretrain] [--ngpus N] [--nnodes N] [--hostfile FILE]
                                    [--resume] [--dry-run] [-- extra run-config flags]

One node: ``torchrun --standalone`` with N ranks (N = all GPUs; on a CPU-only machine 1 rank, or ``--ngpus``
ranks on gloo, each with cores/N OpenMP threads). Several nodes (``--nnodes`` > 1 or ``--hostfile``): this
environment's own DeepSpeed launcher (``python -m deepspeed.launcher.runner``), which starts the ranks on the
hosts of the hostfile over ssh/pdsh with the same Python; ``--ngpus`` is then required where this node has no
GPU to count. On one node a missing input (shards, tokenizers) or ``init_from`` folder that a step of a recipe
(``train/recipes/*.yaml``: the laptop default's inputs, the demo model's stages) makes is made first, after what
that step needs; a multi-node launch never builds or trains anything implicitly (an error names what is missing
and the command that makes it). ``--dry-run`` prints the commands instead of running them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from train.config import CONFIG_DIR, resolve_path

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
STAGES = {"pretrain": ("train.pretrain", "tiny-pretrain"), "finetune": ("train.finetune", "tiny-finetune")}


class LaunchError(SystemExit):
    """A launch that cannot go on as asked: the message says what to change (no traceback)."""


@dataclass(frozen=True)
class Step:
    """One step of a recipe (train/recipes/*.yaml): what it makes, from what, and how."""

    makes: str  # the folder it writes
    done: str  # the file it writes last (a half-written folder does not count)
    needs: tuple[str, ...]  # folders made by other steps, made first when missing
    run: tuple[str, ...] = ()  # a command, or
    stage: tuple[str, ...] = ()  # this launcher's own arguments of a training stage

    def how(self) -> str:
        """What a user runs to make it by hand."""
        if self.stage:
            return f"make {self.stage[0]}" + (f" CONFIG={self.stage[2]}" if len(self.stage) > 2 else "")
        return _show(list(self.run))


def _read_recipe(file: Path) -> list[Step]:
    def bad(problem: str) -> LaunchError:
        return LaunchError(f"{file}: {problem}")

    try:
        doc = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise bad(f"not valid YAML ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise bad("expected a mapping with a list `steps`")
    steps = []
    for i, raw in enumerate(doc["steps"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("makes"), str):
            raise bad(f"step {i + 1}: expected a mapping with `makes: PATH`")
        makes = raw["makes"]
        unknown = set(raw) - {"makes", "done", "needs", "run", "stage", "config"}
        if unknown:
            raise bad(f"step {makes}: unknown keys {sorted(unknown)}")
        if ("run" in raw) == ("stage" in raw) or ("config" in raw and "stage" not in raw):
            raise bad(f"step {makes}: give either `run: COMMAND` or `stage: {'|'.join(STAGES)}` [`config:`]")
        if "stage" in raw and raw["stage"] not in STAGES:
            raise bad(f"step {makes}: stage {raw['stage']!r} is not one of {sorted(STAGES)}")
        needs = raw.get("needs") or []
        if not isinstance(needs, list):
            raise bad(f"step {makes}: `needs` must be a list of paths")
        try:
            run = tuple(shlex.split(str(raw.get("run", ""))))
        except ValueError as e:  # unbalanced quotes
            raise bad(f"step {makes}: `run` is not a command line ({e})") from None
        if "run" in raw and not run:
            raise bad(f"step {makes}: `run` is empty")
        if run[:1] == ("python",):  # the interpreter that runs this launcher (the project's venv)
            run = (sys.executable, *run[1:])
        stage = (raw["stage"], *(("--config", str(raw["config"])) if raw.get("config") else ())) if "stage" in raw \
            else ()
        steps.append(Step(makes, str(raw.get("done", "config.json")), tuple(map(str, needs)), run, stage))
    return steps


def load_recipes(folder: Path = RECIPE_DIR) -> dict[str, Step]:
    """Every step of every recipe in ``folder`` (``*.yaml``), by the path it makes, in the files' order."""
    steps: dict[str, Step] = {}
    origin: dict[str, Path] = {}
    for file in sorted(folder.glob("*.yaml")):
        for step in _read_recipe(file):
            if step.makes in steps:
                raise LaunchError(f"{file}: step {step.makes}: already made by a step of {origin[step.makes]}")
            steps[step.makes], origin[step.makes] = step, file
    for step in steps.values():
        for need in step.needs:
            if need not in steps:
                raise LaunchError(f"{origin[step.makes]}: step {step.makes} needs {need}, which no step makes")
    return steps


RECIPE = load_recipes()
DRY_RUN = False  # --dry-run: print every command instead of running it
_planned: set[str] = set()  # what a dry run has "built" already, so that a shared input is listed once


def sh(cmd: list[str], env: dict[str, str] | None = None) -> None:
    changed = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}  # what this launch sets
    prefix = [f"{k}={shlex.quote(v)}" for k, v in sorted(changed.items())]
    print("+", " ".join([*prefix, *(shlex.quote(c) for c in cmd)]), flush=True)
    if not DRY_RUN:
        subprocess.run(cmd, cwd=REPO, env=env, check=True)


def _done(path: str) -> bool:
    return path in _planned or (REPO / path / RECIPE[path].done).exists()


def _show(cmd: list[str]) -> str:
    return " ".join(shlex.quote("python" if c == sys.executable else c) for c in cmd)


def make(path: str, ngpus: int | None = None) -> None:
    """Run the recipe step that makes ``path`` when it is missing, after the steps it needs."""
    step = RECIPE[path]
    if _done(path):
        return
    for need in step.needs:
        make(need, ngpus)
    if step.stage:
        print(f"{path} is missing: running its stage first ({' '.join(step.stage)})", flush=True)
        main([*step.stage, *(["--ngpus", str(ngpus)] if ngpus else []), *(["--dry-run"] if DRY_RUN else [])])
    else:
        sh(list(step.run))
    if DRY_RUN:
        _planned.add(path)


def ensure(path: str, multinode: bool = False) -> None:
    """Make a missing input (shards, tokenizer) that a recipe step makes; ``a,b`` makes each.

    ``multinode``: never build (the other nodes would not wait for it, and a tokenizer is a training run of its
    own): a missing input is an error giving the command that makes it."""
    if "," in path:
        for part in path.split(","):
            ensure(part.strip(), multinode)
        return
    if path not in RECIPE or _done(path):
        return
    if multinode:
        raise LaunchError(f"{path} is missing: a multi-node launch does not build its inputs. Build it first on "
                          f"this node (its folder must be visible to every node): {RECIPE[path].how()} "
                          "(DRY_RUN=1 without NNODES / HOSTFILE lists every step)")
    make(path)


def ensure_init(init: str | None, ngpus: int | None, multinode: bool = False) -> None:
    """Make a missing ``init_from`` folder: the recipe step (a stage, or a tool after its inputs) that makes it.

    ``multinode``: never train a stage implicitly; a missing folder is an error naming the stage to run."""
    if not init or init in _planned or (REPO / init / "config.json").exists():
        return
    if multinode:
        how = RECIPE[init].how() if init in RECIPE else "the stage whose output_dir holds it"
        raise LaunchError(f"init_from {init} is missing (no config.json): a multi-node launch does not train an "
                          f"earlier stage implicitly. Run that stage first ({how}, with the same NNODES / HOSTFILE "
                          "if it needs them), or pass another --init_from")
    if init in RECIPE:
        make(init, ngpus)


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
    """torchrun on one node; on several (`check_multinode` passed), this environment's DeepSpeed launcher (never
    another ``deepspeed`` that happens to come first on PATH: the remote ranks run the Python that runs the
    launcher)."""
    gpus = gpu_count()
    if nnodes > 1 or hostfile:
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
