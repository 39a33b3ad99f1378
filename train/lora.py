"""LoRA fine-tuning (peft): low-rank adapters on the backbone's projections, every other weight frozen.

Set ``lora_rank`` in a run config (or ``--lora_rank 16``): `add_lora` wraps the model, each checkpoint holds the
whole model's state (ZeRO) plus ``adapter_config.json`` and the base ``config.json``, and `train.consolidate` merges
the adapters into the weights (`merge_lora`), so ``final/`` is a plain model folder that loads like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

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


def merge_lora(model: torch.nn.Module, state: dict[str, torch.Tensor], adapter_dir: str | Path) -> torch.nn.Module:
    """The plain ``model`` (built from the base config) with the LoRA run's ``state`` loaded and merged into it."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig.from_pretrained(str(adapter_dir))
    peft_model = get_peft_model(model, config)
    missing, unexpected = peft_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # a tied head is the embedding
    if missing or unexpected:
        from progemu.errors import ProgEmuError

        raise ProgEmuError(f"{adapter_dir}: LoRA weights do not match the model (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")
    return peft_model.merge_and_unload()


class SaveBaseConfig(TrainerCallback):
    """peft saves only the adapters' config: put the base model's ``config.json`` into each checkpoint as well."""

    def __init__(self, config: Any):
        self.config = config

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.config.save_pretrained(str(Path(args.output_dir) / f"checkpoint-{state.global_step}"))
