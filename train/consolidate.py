"""ZeRO (or plain) training checkpoint -> one Hugging Face folder: model, processor, VQ tokenizer, model card.

    python -m train.consolidate runs/pretrain-tiny/checkpoint-200 runs/pretrain-tiny/final [--dtype bf16]

The weights are the fp32 master weights gathered from every rank's ZeRO-1/2/3 partition (DeepSpeed's
``zero_to_fp32``), so nothing of bf16 training is rounded away unless ``--dtype`` asks for it. The folder loads
with ``AutoModelForCausalLM.from_pretrained`` / ``AutoProcessor.from_pretrained`` after ``import progemu``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from progemu.errors import ProgEmuError

# files of a checkpoint that belong to the run, not to the model folder
RUN_FILES = {"adapter_config.json", "trainer_state.json", "training_args.bin",  # a LoRA run's adapters are merged
             "scheduler.pt", "optimizer.pt", "latest", "zero_to_fp32.py",
             "zero_to_torch.py", "config.json", "generation_config.json", "README.md",
             "model.safetensors.index.json", "pytorch_model.bin.index.json"}  # save_pretrained writes its own
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def is_zero_checkpoint(ckpt: Path) -> bool:
    return (ckpt / "latest").is_file() or any(ckpt.glob("global_step*"))


def load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of a ZeRO checkpoint, or the safetensors weights of a plain one."""
    if is_zero_checkpoint(ckpt):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(ckpt / f).items()}
    if (ckpt / "model.safetensors").is_file():
        return load_file(ckpt / "model.safetensors")
    raise ProgEmuError(f"{ckpt}: neither a ZeRO checkpoint (latest, global_step*/) nor safetensors weights")


def read_run_info(ckpt: Path) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for cand in (ckpt / "run_config.json", ckpt.parent / "run_config.json"):
        if cand.is_file():
            info["run"] = json.loads(cand.read_text())
            break
    state = ckpt / "trainer_state.json"
    if state.is_file():
        hist = json.loads(state.read_text()).get("log_history", [])
        info["global_step"] = json.loads(state.read_text()).get("global_step")
        last = [h for h in hist if "loss" in h]
        if last:
            info["final_log"] = {k: last[-1][k] for k in ("step", "loss", "image_loss", "text_loss", "learning_rate")
                                 if k in last[-1]}
    return info


def card_sections(info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data, training) tables of the model card from the run's config and last log; empty for a folder that
    holds no run (a model folder rather than a training checkpoint)."""
    if not info:
        return {}, {}
    run = info.get("run", {})
    data, model = run.get("data", {}), run.get("model", {})
    data_rows = {"code shards": f"`{data.get('shards', '?')}` (split `{data.get('train_split', 'train')}`)",
                 "tasks": ", ".join(data.get("tasks", [])) or "?", "loss mask": data.get("loss_mask", "?"),
                 "packing": data.get("packing", "?"), "max length": data.get("max_length", "?")} if data else {}
    training = {"stage": run.get("stage", "?"), "initialised from": model.get("init_from") or
                f"random ({model.get('model_preset', '?')} preset)", "DeepSpeed config": Path(
                    run["deepspeed"]).name if run.get("deepspeed") else "none", "steps": info.get("global_step", "?")}
    training.update({f"last {k.replace('_', ' ')}": v for k, v in info.get("final_log", {}).items() if k != "step"})
    return data_rows, training


def consolidate(ckpt_dir: str | Path, out_dir: str | Path, dtype: str = "fp32",
                processor_dir: str | Path | None = None, state: dict[str, torch.Tensor] | None = None,
                card_note: dict[str, Any] | None = None, card_data: dict[str, Any] | None = None,
                config: Any = None) -> Path:
    """Write the HF folder ``out_dir`` from ``ckpt_dir`` (atomically: built beside it, then renamed); ``state``
    replaces the checkpoint's weights (train/average.py) and ``config`` its config (train/grow.py), ``card_note`` /
    ``card_data`` replace the card's training / data tables (otherwise read from the checkpoint's run)."""
    import progemu  # noqa: F401  (registers the Auto classes)

    ckpt, out = Path(ckpt_dir), Path(out_dir)
    if not (ckpt / "config.json").is_file():
        raise ProgEmuError(f"{ckpt}: no config.json; not a training checkpoint folder")
    config = AutoConfig.from_pretrained(ckpt) if config is None else config
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    if is_deepspeed_zero3_enabled():  # called at the end of a ZeRO-3 run: build the full model on this rank alone
        unset_hf_deepspeed_config()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = load_weights(ckpt) if state is None else state
    from train.lora import is_lora_state, merge_lora

    if is_lora_state(state):  # a LoRA run: the adapters merged into the weights, a plain model folder out
        base = read_run_info(ckpt).get("run", {}).get("model", {}).get("init_from")
        model = merge_lora(model, state, ckpt, base)
        state = model.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not (k.endswith("lm_head.weight") and config_ties(model))]
    if missing or unexpected:
        raise ProgEmuError(f"{ckpt}: weights do not match the config (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    src = Path(processor_dir) if processor_dir else ckpt
    for item in src.iterdir():  # processor and text tokenizer saved by the Trainer, the model's vq/ beside them
        if item.name in RUN_FILES or item.name == "vq" or item.name.startswith(
                ("rng_state", "global_step", "checkpoint-", "data_state")):
            continue
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(item, tmp / item.name)
        elif item.is_dir():
            shutil.copytree(item, tmp / item.name)
    # the image tokenizer: the run's own (the shards' VQ, in each checkpoint), else the processor folder's
    vq = next((d / "vq" for d in (ckpt, src) if (d / "vq").is_dir()), None)
    if vq is not None:
        shutil.copytree(vq, tmp / "vq")
    from progemu.model_card import write_model_card

    data_rows, training = card_sections(read_run_info(ckpt))
    data_rows, training = card_data or data_rows, card_note or training  # an average is no single run
    write_model_card(tmp, num_parameters=sum(p.numel() for p in model.parameters()), data=data_rows or None,
                     training=training or None)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def config_ties(model: torch.nn.Module) -> bool:
    cfg = model.config
    return bool(getattr(cfg, "tie_word_embeddings", False) or getattr(getattr(cfg, "text_config", None),
                                                                       "tie_word_embeddings", False))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt_dir", help="a checkpoint-N folder (ZeRO or plain) or a run folder (its last checkpoint)")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--processor", help="take the processor files from this folder instead of the checkpoint")
    a = ap.parse_args(argv)
    ckpt = Path(a.ckpt_dir)
    if not (ckpt / "config.json").is_file():
        from train.engine import last_checkpoint

        found = last_checkpoint(ckpt)
        if found is None:
            raise SystemExit(f"{ckpt}: no config.json and no checkpoint-N folder inside")
        ckpt = Path(found)
    print(consolidate(ckpt, a.out_dir, a.dtype, a.processor))


if __name__ == "__main__":
    main()
