"""progemu: interpretable counterfactual chest X-ray generation with one autoregressive transformer.

Importing the package registers its classes with transformers' Auto classes, so that after
``import progemu`` a saved folder loads without ``trust_remote_code``::

    import progemu
    from transformers import AutoModelForCausalLM, AutoProcessor
    model = AutoModelForCausalLM.from_pretrained("runs/finetune-tiny/final")
    processor = AutoProcessor.from_pretrained("runs/finetune-tiny/final")

The registration imports the model, processor and VQ modules (so ``import progemu`` imports torch and
transformers); the other public names are imported on first attribute access. A missing VQ module (or
vector-quantize-pytorch) is skipped rather than breaking ``import progemu``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily on first access)
_EXPORTS: dict[str, str] = {
    "ProgEmuError": "progemu.errors",
    "IngestError": "progemu.errors",
    "RecordError": "progemu.errors",
    "LayoutError": "progemu.errors",
    "SequenceTooLongError": "progemu.errors",
    "VocabLayout": "progemu.vocab",
    "SPECIAL_TOKENS": "progemu.vocab",
    "ProgEmuConfig": "progemu.configuration_progemu",
    "ProgEmuForCausalLM": "progemu.modeling_progemu",
    "ProgEmuProcessor": "progemu.processing_progemu",
    "ProgEmuVQConfig": "progemu.configuration_vq",
    "ProgEmuVQModel": "progemu.modeling_vq",
    "train_bpe_tokenizer": "progemu.tokenization",
    "layout_for_tokenizer": "progemu.tokenization",
    "write_model_card": "progemu.model_card",
}

__all__ = sorted(_EXPORTS)
_REGISTERED = False


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'progemu' has no attribute {name!r}")


def register_auto_classes() -> None:
    """Register ProgEmu (and the VQ tokenizer when installed) with AutoConfig / AutoModel* / AutoProcessor.

    The Auto mappings need the classes themselves, so the model and processor modules are imported here.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    from progemu.configuration_progemu import ProgEmuConfig
    from progemu.modeling_progemu import ProgEmuForCausalLM
    from progemu.processing_progemu import ProgEmuProcessor

    AutoConfig.register(ProgEmuConfig.model_type, ProgEmuConfig, exist_ok=True)
    AutoModelForCausalLM.register(ProgEmuConfig, ProgEmuForCausalLM, exist_ok=True)
    AutoProcessor.register(ProgEmuConfig, ProgEmuProcessor, exist_ok=True)
    try:
        from progemu.modeling_vq import register_auto_classes as register_vq
    except ImportError as err:  # the VQ module (or vector-quantize-pytorch) is missing: the rest still loads
        if not (err.name or "").startswith(("progemu.modeling_vq", "progemu.configuration_vq", "vector_quantize")):
            raise
    else:
        register_vq()
    _REGISTERED = True


register_auto_classes()
