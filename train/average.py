"""Average the weights of several checkpoints of one model (a "model soup") into one Hugging Face folder.

    python -m train.average runs/demo-candidate-5 runs/demo-candidate-6 OUT [--weights 0.5 0.5] [--dtype bf16]

Each input is what ``train.consolidate`` reads (a ZeRO checkpoint-N or a model folder). Averaging helps where the
runs share their start, e.g. a later fine-tuning stage and the stage it began from: the demo model's stage 6 alone
finds fewer prompted states on validate than stage 5, their average more than either. Configs and weight names
and shapes must agree; the processor and VQ come from the first input, the card names every input's shards.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from progemu.errors import ProgEmuError
from train.consolidate import consolidate, load_weights, read_run_info

# config keys that may differ between runs of one model (bookkeeping, not the architecture)
FREE_KEYS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "image_loss_weight",
             "text_loss_weight", "attn_implementation", "_attn_implementation_autoset"}


def architecture(folder: Path) -> dict:
    from transformers import AutoConfig

    import progemu  # noqa: F401  (registers the config class)

    cfg = AutoConfig.from_pretrained(folder).to_dict()
    return {k: v for k, v in cfg.items() if k not in FREE_KEYS}


def shards_of(path: Path) -> str:
    """The code shards a checkpoint was trained on: its run config, or the card `train.consolidate` wrote."""
    run = read_run_info(path).get("run", {})
    if run.get("data", {}).get("shards"):
        return str(run["data"]["shards"])
    card = path / "README.md"
    found = re.search(r"\| code shards \| `([^`]+)`", card.read_text()) if card.is_file() else None
    return found.group(1) if found else "not recorded"


def average(inputs: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean (fp32) of the inputs' state dicts, after checking they are one architecture."""
    if len(inputs) < 2 or len(weights) != len(inputs):
        raise ProgEmuError("give at least two checkpoints and one weight per checkpoint")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ProgEmuError(f"weights must be >= 0 with a positive sum, got {weights}")
    ref = architecture(inputs[0])
    for other in inputs[1:]:
        arch = architecture(other)
        diff = sorted(k for k in ref.keys() | arch.keys() if ref.get(k) != arch.get(k))
        if diff:
            raise ProgEmuError(f"{other}: not the architecture of {inputs[0]} (config differs in {diff[:5]})")
    total = float(sum(weights))
    out: dict[str, torch.Tensor] = {}
    for path, w in zip(inputs, weights):
        state = load_weights(path)
        if out and state.keys() != out.keys():
            raise ProgEmuError(f"{path}: weight names differ from {inputs[0]}'s "
                               f"({sorted(state.keys() ^ out.keys())[:5]})")
        for k, v in state.items():
            if k in out and v.shape != out[k].shape:
                raise ProgEmuError(f"{path}: {k} has shape {tuple(v.shape)}, {inputs[0]} {tuple(out[k].shape)}")
            out[k] = out.get(k, 0) + v.float() * (w / total)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", help="checkpoints or model folders, then the output folder")
    ap.add_argument("--weights", type=float, nargs="+", help="one per input (default: equal)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    a = ap.parse_args(argv)
    if len(a.inputs) < 3:
        ap.error("give at least two checkpoints and the output folder")
    inputs, out = [Path(p) for p in a.inputs[:-1]], Path(a.inputs[-1])
    weights = a.weights or [1.0] * len(inputs)
    state = average(inputs, weights)
    note = {"weights": "average of " + ", ".join(f"{p} ({w / sum(weights):.2f})" for p, w in zip(inputs, weights))}
    data = {"code shards": "; ".join(f"{p}: `{shards_of(p)}`" for p in inputs)}
    print(consolidate(inputs[0], out, a.dtype, state=state, card_note=note, card_data=data))


if __name__ == "__main__":
    main()
