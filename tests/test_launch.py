"""train/launch.py (what `make pretrain` / `make finetune` run): the exact commands of a dry run (torchrun on one
node, this environment's own DeepSpeed launcher with the hostfile on several), nothing built or run by a dry run,
and the clear errors of a multi-node launch (no GPU count, missing inputs, a missing earlier stage)."""

from __future__ import annotations

import os
import shlex
import sys

import pytest

from train import launch


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """An empty checkout on a machine without GPU; every command is recorded instead of run."""
    monkeypatch.setattr(launch, "REPO", tmp_path)
    monkeypatch.setattr(launch, "DRY_RUN", False)
    monkeypatch.setattr(launch, "_planned", set())
    monkeypatch.setattr(launch, "gpu_count", lambda: 0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    ran: list[list[str]] = []
    monkeypatch.setattr(launch.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    return tmp_path, ran


def _printed(capsys) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]


def _made(root, *paths):
    for p in paths:
        (root / p).mkdir(parents=True, exist_ok=True)
        (root / p / (launch.RECIPE[p].done if p in launch.RECIPE else "config.json")).write_text("{}")


def test_dry_run_single_node_prints_the_builds_then_torchrun_and_runs_nothing(repo, capsys):
    root, ran = repo
    launch.main(["pretrain", "--ngpus", "2", "--dry-run", "--", "--max_steps", "5"])
    cmds = _printed(capsys)
    assert ran == [] and list(root.iterdir()) == []
    # the laptop default needs no tokenizer training: the small set, then its codes with the embedded VQ
    assert [c[c.index("--out") + 1] for c in cmds[:-1]] == ["data/synthcxr-128-smoke", "data/shards-128-smoke"]
    assert "progemu/assets/tiny-synthcxr/vq" in cmds[1]
    env = cmds[-1][: cmds[-1].index(sys.executable)]  # the variables the launch sets, printed as a prefix
    assert f"OMP_NUM_THREADS={max(1, (os.cpu_count() or 1) // 2)}" in env
    assert cmds[-1][len(env):] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node=2", "-m", "train.pretrain", "--config", "tiny-pretrain",
                                   "--max_steps", "5"]


def test_dry_run_lists_a_missing_earlier_stage_once_on_one_node(repo, capsys):
    root, ran = repo
    launch.main(["finetune", "--dry-run", "--", "--init_from", "runs/pretrain-tiny/final"])
    cmds = _printed(capsys)
    assert ran == [] and list(root.iterdir()) == []
    stages = [c[c.index("-m", c.index("torch.distributed.run")) + 1] for c in cmds if "torch.distributed.run" in c]
    assert stages == ["train.pretrain", "train.finetune"]
    assert sum("data/shards-128-smoke" in c for c in cmds) == 1  # shared input listed once


def test_multi_node_runs_the_environments_deepspeed_launcher_with_the_hostfile(repo, capsys):
    root, ran = repo
    _made(root, "data/shards-128-smoke", "runs/pretrain-tiny/final")
    hosts = root / "hosts"
    hosts.write_text("node1 slots=8\nnode2 slots=8\n")
    launch.main(["finetune", "--ngpus", "8", "--nnodes", "2", "--hostfile", str(hosts), "--resume",
                 "--", "--init_from", "runs/pretrain-tiny/final"])
    assert len(ran) == 1
    assert ran[0] == [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "8", "--num_nodes", "2",
                      "--hostfile", str(hosts.resolve()), "--module", "train.finetune", "--config", "tiny-finetune",
                      "--resume_from_checkpoint", "auto", "--init_from", "runs/pretrain-tiny/final"]
    assert _printed(capsys)[-1][-len(ran[0]):] == ran[0]


def test_multi_node_errors_name_what_to_do(repo):
    root, ran = repo
    hosts = root / "hosts"
    hosts.write_text("node1 slots=8\nnode2 slots=8\n")
    with pytest.raises(SystemExit, match="needs NGPUS"):  # no GPU here to count the ranks per node
        launch.main(["pretrain", "--nnodes", "2", "--hostfile", str(hosts), "--dry-run"])
    with pytest.raises(SystemExit, match="NNODES=2 needs HOSTFILE"):
        launch.main(["pretrain", "--nnodes", "2", "--ngpus", "8"])
    with pytest.raises(SystemExit, match="nohosts: hostfile not found"):
        launch.main(["pretrain", "--hostfile", "nohosts", "--ngpus", "8"])
    with pytest.raises(SystemExit, match="data/shards-128-smoke is missing: a multi-node launch does not build"):
        launch.main(["pretrain", "--hostfile", str(hosts), "--ngpus", "8"])
    _made(root, "data/shards-128-smoke")
    with pytest.raises(SystemExit, match=r"runs/pretrain-tiny/final is missing.*\(make pretrain,"):
        launch.main(["finetune", "--hostfile", str(hosts), "--ngpus", "8", "--", "--init_from",
                     "runs/pretrain-tiny/final"])
    with pytest.raises(SystemExit, match=r"runs/finetune-demo-6/final is missing.*make finetune CONFIG=tiny-demo-6"):
        launch.main(["finetune", "--config", "tiny-demo-7", "--hostfile", str(hosts), "--ngpus", "8", "--",
                     "--shards", "data/shards-128-smoke", "--processor", "p", "--init_from",
                     "runs/finetune-demo-6/final"])
    with pytest.raises(SystemExit, match=r"runs/pretrain-base/final is missing"):  # not a stage launch.py knows
        launch.main(["finetune", "--config", "base-finetune", "--hostfile", str(hosts), "--ngpus", "8", "--",
                     "--shards", "data/shards-128-smoke"])
    with pytest.raises(SystemExit, match=r"data/shards-128 is missing.*: python -m tokenizer.encode_dataset"):
        launch.main(["pretrain", "--config", "tiny-pretrain-full", "--hostfile", str(hosts), "--ngpus", "8"])
    assert ran == [] and sorted(p.name for p in root.iterdir()) == ["data", "hosts"]


def _step_of(cmd: list[str]):
    """The recipe step a printed command is: a tool's command, or the launch of a stage with its config."""
    if "torch.distributed.run" in cmd:
        stage = cmd[cmd.index("-m", cmd.index("torch.distributed.run")) + 1].removeprefix("train.")
        argv = [stage, *(["--config", cmd[cmd.index("--config") + 1]] if "--config" in cmd else [])]
        return next(s for s in launch.RECIPE.values() if list(s.stage) == argv)
    return next(s for s in launch.RECIPE.values() if list(s.run) == cmd)


def test_dry_run_of_the_demo_follows_its_recipe_file(repo, capsys):
    """`make finetune CONFIG=tiny-demo-7` on a fresh clone runs exactly the steps of train/recipes/tiny-demo.yaml,
    each once and after everything it needs; its models (stages, average, grow) in the file's order."""
    import yaml

    from train.config import CONFIG_DIR

    recipe = yaml.safe_load((launch.RECIPE_DIR / "tiny-demo.yaml").read_text())["steps"]
    in_file = [s["makes"] for s in recipe]
    launch.main(["finetune", "--config", "tiny-demo-7", "--dry-run"])
    ran = [_step_of(c).makes for c in _printed(capsys)]
    assert sorted(ran) == sorted(in_file) and len(ran) == len(set(ran))

    def inputs(step) -> list[str]:  # what must exist before the step: its needs, or its stage config's inputs
        if not step.stage:
            return list(step.needs)
        cfg = yaml.safe_load((CONFIG_DIR / f"{step.stage[2]}.yaml").read_text())
        assert step.makes == f"{cfg['output_dir']}/final"  # the stage writes what the recipe says it makes
        paths = [*cfg["shards"].split(","), cfg.get("text_tokenizer"), cfg.get("vq"), cfg.get("init_from")]
        return [p for p in paths if p in launch.RECIPE]

    for i, path in enumerate(ran):
        assert set(inputs(launch.RECIPE[path])) <= set(ran[:i]), path
        assert set(inputs(launch.RECIPE[path])) <= set(in_file[: in_file.index(path)]), path  # the file is in order
    models = [p for p in in_file if launch.RECIPE[p].done == "config.json"]  # the stages and the tools between
    assert len(models) == 9 and [p for p in ran if p in models] == models


def test_the_launcher_runs_what_the_recipe_says(repo, tmp_path_factory, monkeypatch, capsys):
    """A changed recipe changes the launch: nothing about the steps is known to the Python."""
    folder = tmp_path_factory.mktemp("recipes")
    (folder / "mine.yaml").write_text(
        "steps:\n"
        "  - {makes: data/raw, done: manifest.json, run: python -m progemu synth --out data/raw --pairs 7}\n"
        "  - {makes: data/shards-128-smoke, done: encode_info.json, needs: [data/raw],\n"
        "     run: 'python -m tokenizer.encode_dataset --data data/raw/icg-cxr --out data/shards-128-smoke'}\n")
    monkeypatch.setattr(launch, "RECIPE", launch.load_recipes(folder))
    launch.main(["pretrain", "--dry-run"])
    cmds = _printed(capsys)
    assert cmds[:2] == [[sys.executable, "-m", "progemu", "synth", "--out", "data/raw", "--pairs", "7"],
                        [sys.executable, "-m", "tokenizer.encode_dataset", "--data", "data/raw/icg-cxr", "--out",
                         "data/shards-128-smoke"]]
    assert len(cmds) == 3 and "torch.distributed.run" in cmds[2]


@pytest.mark.parametrize("steps, problem", [
    ("[{makes: a, run: x, stage: finetune}]", "either `run: COMMAND` or `stage"),
    ("[{makes: a, stage: train}]", "stage 'train' is not one of"),
    ("[{makes: a, run: x, needs: [b]}]", "step a needs b, which no step makes"),
    ("[{makes: a, run: x}, {makes: a, run: y}]", "step a: already made by a step of"),
    ("[{makes: a, run: x, neds: [b]}]", r"unknown keys \['neds'\]"),
    ("[a, b]", "step 1: expected a mapping"),
    ("[{makes: a, run: ''}]", "step a: `run` is empty"),
])
def test_a_bad_recipe_is_an_error_naming_the_file_and_the_step(tmp_path, steps, problem):
    (tmp_path / "r.yaml").write_text(f"steps: {steps}\n")
    with pytest.raises(SystemExit, match=f"r.yaml: .*{problem}"):
        launch.load_recipes(tmp_path)
