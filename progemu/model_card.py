"""The README.md model card of a ProgEmu model folder: what the model is, what it saw, how well it does.

    from progemu.model_card import write_model_card
    write_model_card("runs/finetune-tiny/final", data={"SynthCXR-128": "20,000 pairs, seed 0"},
                     metrics={"test": {"ssim_outside_region": 0.97}}, training={"steps": 3000})

`ProgEmuForCausalLM.save_pretrained` writes a card with the config alone when the folder has none; the
training and evaluation jobs call this again with the data and the metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from progemu.io import write_text_atomic

_LIMITS = """## Intended use and limits
Research on counterfactual chest X-ray generation and its interpretation. **Not a medical device; not
for diagnosis or clinical decisions.** A model trained only on SynthCXR (the project's synthetic
phantoms) has never seen a real radiograph: its images and texts say nothing about real patients.
Models trained on credentialed data (MIMIC-CXR, CheXpert-Plus, ICG-CXR, MIMIC-EDIT-INSTRUCTION) inherit
those data sets' populations, devices and reporting styles, and must be shared under their terms."""

_CREDITS = """## Credits
Sequence layout and training recipe after ProgEmu (arXiv 2503.23149) and Emu3; region-restricted
editing and guidance maps after InstructX2X (arXiv 2603.00423). Backbone: transformers' Llama layers."""


def _table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def _metrics_table(metrics: dict[str, Any]) -> str:
    """``{split: {metric: value}}`` or ``{metric: value}`` -> a markdown table."""
    if metrics and all(isinstance(v, dict) for v in metrics.values()):
        names = sorted({m for v in metrics.values() for m in v})
        head = "| metric | " + " | ".join(metrics) + " |\n| --- |" + " --- |" * len(metrics)
        body = [f"| {m} | " + " | ".join(_fmt(metrics[s].get(m, "")) for s in metrics) + " |" for m in names]
        return "\n".join([head, *body])
    return _table({k: _fmt(v) for k, v in metrics.items()})


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_model_card(config: dict[str, Any], num_parameters: int | None = None, data: Any = None,
                      metrics: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
                      notes: str = "") -> str:
    """The card's markdown from a ``config.json`` dict and whatever is known about data, training, metrics."""
    tc = config.get("text_config", {})
    lay = config.get("vocab_layout") or {}
    vq = config.get("vq_config") or {}
    arch = {
        "backbone": f"Llama decoder, {tc.get('num_hidden_layers')} layers, hidden {tc.get('hidden_size')}, "
                    f"{tc.get('num_attention_heads')} heads ({tc.get('num_key_value_heads')} KV)",
        "context (tokens)": config.get("max_position_embeddings"),
        "vocabulary": f"{tc.get('vocab_size')} = {lay.get('text_vocab_size')} text + {lay.get('codebook_size')} "
                      "image codes" if lay.get("image_token_start") is None else
                      f"{tc.get('vocab_size')}, Emu3's: {lay.get('codebook_size')} visual tokens from id "
                      f"{lay.get('image_token_start')}",
        "image grid": f"{lay.get('grid_h')} x {lay.get('grid_w')} codes per image",
        "sequence order": config.get("sequence_order"),
        "tied embeddings": config.get("tie_word_embeddings"),
    }
    if num_parameters is not None:
        arch["parameters"] = f"{num_parameters / 1e6:.1f} M"
    if vq:
        arch["image tokenizer"] = (f"VQ ({vq.get('quantizer', 'vq')}), codebook {vq.get('codebook_size')}, "
                                   f"{int(vq.get('patch_size', 1)) * 2 ** (len(vq.get('channel_multipliers', [1])) - 1)}x "
                                   "downsampling (vq/)")  # pixel-unshuffle patch x the conv levels
    parts = ["---", "library_name: transformers", "tags: [progemu, chest-x-ray, counterfactual, medical-imaging]",
             "---", "", "# ProgEmu model", "",
             "One decoder-only transformer that reads a prior chest X-ray (as VQ codes) and a what-if prompt, "
             "then writes the counterfactual image and an interpretation text.", "",
             "## Load", "```python", "import progemu  # registers the Auto classes",
             "from transformers import AutoModelForCausalLM, AutoProcessor",
             "model = AutoModelForCausalLM.from_pretrained(PATH)", "processor = AutoProcessor.from_pretrained(PATH)",
             "```", "", "## Architecture", _table(arch), ""]
    parts += ["## Training data", _data_text(data), ""]
    if training:
        parts += ["## Training", _table({k: _fmt(v) for k, v in training.items()}), ""]
    parts += ["## Metrics", _metrics_table(metrics) if metrics else "Not evaluated yet.", ""]
    if notes:
        parts += ["## Notes", notes.strip(), ""]
    parts += [_LIMITS, "", _CREDITS, ""]
    return "\n".join(parts)


def _data_text(data: Any) -> str:
    if not data:
        return "Not recorded (a freshly initialised or converted model)."
    if isinstance(data, dict):
        return _table(data)
    return str(data)


def write_model_card(model_dir: str | Path, config: dict[str, Any] | None = None, num_parameters: int | None = None,
                     data: Any = None, metrics: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
                     notes: str = "") -> Path:
    """Write ``model_dir/README.md`` atomically; ``config`` defaults to the folder's ``config.json``."""
    model_dir = Path(model_dir)
    if config is None:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    text = render_model_card(config, num_parameters, data, metrics, training, notes)
    return write_text_atomic(model_dir / "README.md", text)


__all__ = ["render_model_card", "write_model_card"]
