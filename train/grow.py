"""Deepen a trained model without changing what it computes (LLaMA Pro's block expansion), to train it further.

    python -m train.grow progemu/assets/tiny-synthcxr runs/demo-grown-10 --layers 10 [--dtype bf16]

Each new decoder block is a copy of the block before it with its two output projections (attention ``o_proj``,
MLP ``down_proj``) set to zero, so it adds nothing to the residual stream: the grown model's logits equal the
input's exactly, and fine-tuning starts from what the input already knows instead of from scratch. The new blocks
are spread evenly between the old ones; the last block stays last. Why: the demo model's fine-tuning plateaued at
6 blocks (stage 6 traded findings for others), and a model trained from scratch at the larger size would repeat
the whole ~11 h recipe.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from progemu.errors import ProgEmuError
from train.consolidate import consolidate, load_weights

LAYER_PREFIX = "model.layers."
ZEROED = ("self_attn.o_proj.", "mlp.down_proj.")  # the block's writes into the residual stream


def layer_plan(old: int, new: int) -> list[tuple[int, bool]]:
    """For each block of the grown model: (the old block it copies, whether it is a new, zero-output copy)."""
    if new < old:
        raise ProgEmuError(f"--layers {new} is fewer than the model's {old} blocks")
    extra = new - old
    # new block k follows old block (k+1) * old // (extra+1) - 1: spread over the depth (6 -> 10: after blocks
    # 0-3, the plan stage 7 of the demo model was trained from), kept within blocks 0 .. old-2 so the last stays last
    after = [min(max((k + 1) * old // (extra + 1) - 1, 0), max(old - 2, 0)) for k in range(extra)]
    plan: list[tuple[int, bool]] = []
    for i in range(old):
        plan.append((i, False))
        plan += [(i, True)] * after.count(i)
    return plan


def grow_state(state: dict[str, torch.Tensor], old: int, new: int) -> dict[str, torch.Tensor]:
    """The state dict of the grown model (fp32), block ``j`` taken from old block ``plan[j]``."""
    out = {k: v for k, v in state.items() if not k.startswith(LAYER_PREFIX)}
    for j, (i, fresh) in enumerate(layer_plan(old, new)):
        src = f"{LAYER_PREFIX}{i}."
        for k, v in state.items():
            if k.startswith(src):
                rest = k[len(src):]
                out[f"{LAYER_PREFIX}{j}.{rest}"] = torch.zeros_like(v) if fresh and rest.startswith(ZEROED) else v
    return out


def grow(src: str | Path, out: str | Path, layers: int, dtype: str = "fp32") -> Path:
    """Write the grown model folder ``out`` (processor and VQ copied from ``src``)."""
    from transformers import AutoConfig

    import progemu  # noqa: F401  (registers the config class)

    src = Path(src)
    config = AutoConfig.from_pretrained(src)
    text = config.text_config
    old = text.num_hidden_layers
    state = load_weights(src)
    if not any(k.startswith(LAYER_PREFIX) for k in state):
        raise ProgEmuError(f"{src}: no '{LAYER_PREFIX}*' weights; not a ProgEmu / Llama decoder")
    plan = layer_plan(old, layers)
    grown = copy.deepcopy(config)
    grown.text_config.num_hidden_layers = layers
    if getattr(grown.text_config, "layer_types", None):  # per-block attention kinds, one per block
        grown.text_config.layer_types = [text.layer_types[i] for i, _ in plan]
    note = {"grown from": f"{src} ({old} blocks -> {layers}; new blocks `*` copy the one before with zero outputs)",
            "blocks": ", ".join(f"{j}<-{i}{'*' if fresh else ''}" for j, (i, fresh) in enumerate(plan))}
    return consolidate(src, out, dtype, state=grow_state({k: v.float() for k, v in state.items()}, old, layers),
                       card_note=note, config=grown,
                       card_data={"training data": f"that of {src} (its model card); the new blocks are untrained"})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="a model folder or checkpoint (what train.consolidate reads)")
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, required=True, help="decoder blocks of the grown model")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    a = ap.parse_args(argv)
    print(grow(a.src, a.out, a.layers, a.dtype))


if __name__ == "__main__":
    main()
