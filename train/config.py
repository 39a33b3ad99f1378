"""The run config: typed dataclasses filled from a named YAML preset, then from command-line flags.

``--config NAME`` picks ``train/configs/NAME.yaml`` (or any YAML path); every field of ``ModelArgs``,
``DataArgs`` and transformers' ``TrainingArguments`` can be set in the YAML and overridden on the command
line, e.g. ``python -m train.pretrain --config tiny-pretrain --max_steps 50 --deepspeed zero3``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from progemu.errors import ProgEmuError

TRAIN_DIR = Path(__file__).resolve().parent
CONFIG_DIR = TRAIN_DIR / "configs"
DS_CONFIG_DIR = TRAIN_DIR / "ds_configs"
TASKS = ("icg", "edit", "report2image", "image2report")


@dataclass
class ModelArgs:
    """What to train (a preset from scratch, or weights to start from), and where to stop."""

    model_preset: str = field(default="tiny", metadata={"help": "ProgEmuConfig preset when starting from scratch"})
    init_from: str | None = field(
        default=None, metadata={"help": "a pretrain run's final/ folder, any checkpoint folder, or a text LLM folder"})
    model_overrides: str | None = field(
        default=None, metadata={"help": 'JSON of ProgEmuConfig/Llama fields over the preset, e.g. {"num_hidden_layers": 2}'})
    attn_implementation: str = field(
        default="auto", metadata={"help": "auto (flash_attention_2 when installed on GPU, else sdpa), sdpa, eager"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 where the machine has it), bf16, fp32"})
    lora_rank: int = field(default=0, metadata={
        "help": "0: full fine-tuning; > 0: LoRA adapters of this rank (peft) on lora_targets, the rest frozen; "
                "train.consolidate merges them into final/"})
    lora_alpha: float = field(default=32.0,
                              metadata={"help": "LoRA scale numerator (the update is alpha / rank x BA)"})
    lora_targets: str = field(default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                              metadata={"help": "comma-separated module names that get LoRA adapters"})
    stop_at_step: int = field(default=0, metadata={
        "help": "end the run after this step of the max_steps schedule (0: at max_steps); the learning rate stops "
                "where that schedule has it, and final/ holds this step's model"})


@dataclass
class DataArgs:
    """Where the code shards are, how they become sequences and batches."""

    shards: str = field(default="data/shards-128", metadata={
        "help": "folder with one Arrow folder per split; several folders separated by commas are mixed"})
    shard_weights: list[float] | None = field(default=None, metadata={
        "help": "one weight per shard folder: the share of training rows each gives (default: their sizes)"})
    train_split: str = "train"
    eval_split: str | None = field(default=None, metadata={"help": "split for eval_loss (e.g. validate); none: off"})
    tasks: list[str] = field(default_factory=lambda: ["report2image", "image2report"],
                             metadata={"help": f"sequence tasks among {TASKS}"})
    processor: str | None = field(default=None, metadata={"help": "a saved ProgEmuProcessor folder"})
    text_tokenizer: str = field(default="runs/text-tokenizer", metadata={"help": "used when processor is unset"})
    vq: str = field(default="runs/vq-tiny", metadata={"help": "VQ tokenizer folder, used when processor is unset"})
    max_length: int = field(default=1024, metadata={"help": "tokens per packed row / longest padded sequence"})
    packing: str = field(default="pack", metadata={
        "help": "pack: several sequences per row, positions reset, document-masked attention; "
                "group: length-grouped batches padded to the longest; pad_max: pad every sample to max_length"})
    loss_mask: str = field(default="target", metadata={"help": "target | image | text | all"})
    image_loss_weight: float = 1.0
    text_loss_weight: float = 1.0
    changed_code_weight: float = field(default=1.0, metadata={
        "help": "loss weight (x image_loss_weight) of target codes that differ from the prior's (the edit), icg / "
                "edit tasks; the loss is normalised per token, not per weight, so > 1 also raises the loss scale"})
    cfg_dropout: float = field(default=0.1, metadata={"help": "probability of dropping prior and prompt together"})
    prompt_dropout: float = field(default=0.0, metadata={
        "help": "probability of dropping only the prompt of an icg / edit example (trains generate's --cfg-null "
                "prior branch)"})
    prompt_augment: bool = field(default=True, metadata={"help": "sentence shuffle / drop a negative sentence"})
    pack_buffer: int = field(default=512, metadata={
        "help": "sequences built, packed and shuffled together in each data-loader worker (a chunk)"})
    max_samples: int | None = field(default=None, metadata={"help": "use only the first N rows of each shard folder"})


def resolve_path(name: str, folder: Path, suffix: str) -> str:
    """A preset name (``tiny-pretrain``, ``zero3``) or a path -> an existing file path."""
    for cand in (Path(name), folder / name, folder / f"{name}{suffix}"):
        if cand.is_file():
            return str(cand)
    known = sorted(p.stem for p in folder.glob(f"*{suffix}"))
    raise ProgEmuError(f"{name}: no such config file or preset (presets: {', '.join(known)})")


def machine_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def parse_config(argv: list[str] | None = None,
                 default_config: str | None = None) -> tuple[ModelArgs, DataArgs, TrainingArguments]:
    """Parse ``--config`` (YAML preset) plus overrides into the three dataclasses."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=default_config)
    known, rest = pre.parse_known_args(argv)
    values: dict[str, Any] = {}
    if known.config:
        path = resolve_path(known.config, CONFIG_DIR, ".yaml")
        with open(path) as fh:
            values = yaml.safe_load(fh) or {}
        if not isinstance(values, dict):
            raise ProgEmuError(f"{path}: a run config must be a YAML mapping")
    parser = HfArgumentParser((ModelArgs, DataArgs, TrainingArguments))
    dests = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - dests)
    if unknown:
        raise ProgEmuError(f"{known.config}: unknown config keys {unknown}")
    parser.set_defaults(**values)
    ns = vars(parser.parse_args(rest))
    model_args = ModelArgs(**{f.name: ns.pop(f.name) for f in fields(ModelArgs)})
    data_args = DataArgs(**{f.name: ns.pop(f.name) for f in fields(DataArgs)})
    check(model_args, data_args)
    prepare_training_args(ns, model_args)
    # TrainingArguments' __post_init__ reads the DeepSpeed file and the distributed state: all set by now.
    train_args = TrainingArguments(**{f.name: ns[f.name] for f in fields(TrainingArguments) if f.init})
    os.makedirs(train_args.output_dir, exist_ok=True)
    return model_args, data_args, train_args


def check(model_args: ModelArgs, data_args: DataArgs) -> None:
    bad = [t for t in data_args.tasks if t not in TASKS]
    if bad or not data_args.tasks:
        raise ProgEmuError(f"unknown tasks {bad or '(none)'}; choose among {TASKS}")
    if data_args.packing not in ("pack", "group", "pad_max"):
        raise ProgEmuError(f"packing must be pack, group or pad_max, not {data_args.packing!r}")
    if data_args.loss_mask not in ("target", "image", "text", "all"):
        raise ProgEmuError(f"loss_mask must be target, image, text or all, not {data_args.loss_mask!r}")
    n_folders = len([r for r in str(data_args.shards).split(",") if r.strip()])
    if data_args.shard_weights is not None and (len(data_args.shard_weights) != n_folders
                                                or min(data_args.shard_weights) <= 0):
        raise ProgEmuError(f"shard_weights {data_args.shard_weights}: need one positive weight per shard folder "
                           f"({n_folders} in {data_args.shards!r})")
    if data_args.pack_buffer < 1:
        raise ProgEmuError(f"pack_buffer must be at least 1, not {data_args.pack_buffer}")
    if model_args.precision not in ("auto", "bf16", "fp32"):
        raise ProgEmuError(f"precision must be auto, bf16 or fp32, not {model_args.precision!r}")


def prepare_training_args(ns: dict[str, Any], model_args: ModelArgs) -> None:
    """Machine-dependent choices, made before ``TrainingArguments`` is built (it reads them at init)."""
    # bf16 halves step time on GPUs (and on CPUs with DeepSpeed's bf16 mode); "auto" uses it where the GPU has it.
    ns["bf16"] = model_args.precision == "bf16" or (model_args.precision == "auto" and machine_has_bf16())
    ns["fp16"] = False
    ds = ns.get("deepspeed")
    if isinstance(ds, str) and ds.lower() in ("", "none", "zero0-off"):
        ns["deepspeed"] = ds = None
    if isinstance(ds, str) and not ds.strip().startswith("{"):
        ns["deepspeed"] = resolve_path(ds, DS_CONFIG_DIR, ".json")
    if not torch.cuda.is_available():
        ns["use_cpu"] = True
    # Our collator emits only model inputs; the Trainer must not drop columns it cannot see in forward().
    ns["remove_unused_columns"] = False
    # The training stream resumes from its own saved position (train.data.StreamState): the Trainer must not
    # also skip the batches before the checkpoint (it would re-read them all, then start past the position).
    ns["ignore_data_skip"] = True
    if ns["deepspeed"]:
        single_process_env()
    if ns["deepspeed"] and not torch.cuda.is_available():
        # On CPU, accelerate would otherwise pick a backend DeepSpeed cannot use and fail its batch-size check:
        # create the process group ourselves (gloo) and tell the Trainer to use that state.
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
        acc = dict(ns.get("accelerator_config") or {})
        acc["use_configured_state"] = True
        ns["accelerator_config"] = acc


def single_process_env() -> None:
    """DeepSpeed needs a process group even for one process: without a launcher, make a one-rank world."""
    if "WORLD_SIZE" in os.environ:
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
