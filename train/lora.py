"""LoRA fine-tuning (peft): low-rank adapters on the backbone's projections, every other weight frozen.

Set ``lora_rank`` in a run config (or ``--lora_rank 16``): `add_lora` wraps the model, each checkpoint holds the
whole model's state (ZeRO) plus ``adapter_config.json`` and the base ``config.json``, and `train.consolidate` merges
the adapters into the weights (`merge_lora`), so ``final/`` is a plain model folder that loads like any other.
"""

from __future__ import annotations

from pathlib import Path

import torch

PEFT_PREFIX = "base_model.model."


def add_lora(model: torch.nn.Module, rank: int, alpha: float, targets: str) -> torch.nn.Module:
    """``model`` wrapped by peft with rank-``rank`` adapters on the modules named in ``targets`` (comma-separated)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                        target_modules=[t.strip() for t in targets.split(",") if t.strip()])
    # frozen embeddings give checkpointed blocks inputs without gradients: let the adapters' gradients through
    model.enable_input_require_grads()
    return get_peft_model(model, config)


def is_lora_state(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(PEFT_PREFIX) for k in state)


def merge_lora(model: torch.nn.Module, state: dict[str, torch.Tensor], adapter_dir: str | Path,
               base_dir: str | Path | None) -> torch.nn.Module:
    """The plain ``model`` with the LoRA run's adapters merged into its weights.

    ``state``: the run's weights in peft's names (ZeRO's fp32 partitions hold the trained adapters only: frozen
    weights are not in the optimizer); the frozen weights come from ``base_dir``, the run's ``init_from``.
    """
    from peft import LoraConfig, get_peft_model

    from progemu.errors import ProgEmuError
    from train.consolidate import load_weights

    if base_dir is None or not Path(base_dir).is_dir():
        raise ProgEmuError(f"{adapter_dir}: a LoRA checkpoint needs the weights it started from (the run's init_from "
                           f"{base_dir}), which are missing")
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing, unexpected = model.load_state_dict(load_weights(Path(base_dir)), strict=False)
    if [k for k in missing if k not in tied] or unexpected:
        raise ProgEmuError(f"{base_dir}: weights do not match the model (missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]})")
    peft_model = get_peft_model(model, LoraConfig.from_pretrained(str(adapter_dir)))
    missing, unexpected = peft_model.load_state_dict(state, strict=False)
    lost = [k for k in missing if "lora_" in k]
    if lost or unexpected:
        raise ProgEmuError(f"{adapter_dir}: LoRA weights do not match the model (adapters missing {lost[:5]}, "
                           f"unexpected {unexpected[:5]})")
    return peft_model.merge_and_unload()
