"""`ProgEmuConfig`: the configuration that ships with a ProgEmu checkpoint, and its size presets.

A composite config in the style of transformers' Emu3 / Chameleon: a nested Llama ``text_config`` (the
decoder-only backbone), an optional nested ``vq_config`` (the image tokenizer the codes come from), the
vocabulary layout (``progemu.vocab.VocabLayout.to_dict()``) and the order of the training sequence.

    from progemu import ProgEmuConfig
    cfg = ProgEmuConfig.from_preset("tiny", layout=layout, sequence_order="prior_prompt")
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from transformers import LlamaConfig, PreTrainedConfig

try:  # transformers >= 5.2x declares sub-configs as specs; earlier 5.x releases as a plain dict
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # pragma: no cover - depends on the installed transformers
    SubConfigSpec = None

from progemu.errors import LayoutError
from progemu.vocab import VocabLayout

try:  # the VQ tokenizer's config is optional: a model folder without a VQ still loads
    from progemu.configuration_vq import ProgEmuVQConfig
except ImportError:  # pragma: no cover - only while the VQ module is not installed
    ProgEmuVQConfig = None

SEQUENCE_ORDERS = ("prompt_prior", "prior_prompt")

# Backbone sizes. `tiny` trains in minutes on a laptop CPU (about 5M parameters plus embeddings), `small`
# and `base` are single-GPU sizes, `emu3-8b` is the Emu3-Gen / ProgEmu backbone (32 layers, hidden 4096,
# GQA with 8 KV heads, RoPE theta 1e6, context 9,216 as ProgEmu's training sequences).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=1024, rope_theta=10000.0),
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=8, max_position_embeddings=2048, rope_theta=10000.0),
    "base": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
                 num_key_value_heads=8, max_position_embeddings=4096, rope_theta=100000.0),
    "emu3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, max_position_embeddings=9216, rope_theta=1000000.0,
                    rms_norm_eps=1e-5),
}


class ProgEmuConfig(PreTrainedConfig):
    """Config of `ProgEmuForCausalLM`.

    Args:
        text_config: the Llama backbone (`vocab_size` must equal the layout's `vocab_size`).
        vq_config: the VQ tokenizer's config (`ProgEmuVQConfig`), or None.
        vocab_layout: `VocabLayout.to_dict()`; None only for a backbone not yet tied to a tokenizer.
        sequence_order: ``"prompt_prior"`` (default): ``<bos> prompt IMG(prior) IMG(target) text <eos>``;
            ``"prior_prompt"`` (ProgEmu as published): ``<bos> IMG(prior) prompt IMG(target) text <eos>``.
            The default keeps the distance from each prior code to the target code at the same place
            constant (one image block) whatever the prompt's length, which made copying the unchanged
            anatomy easy for RoPE in the feasibility run; ProgEmu's order is kept for fidelity.
        max_position_embeddings: the context (tokens); longer sequences are refused by the processor.
        tie_word_embeddings: share input embeddings and LM head (False, as Emu3).
        image_loss_weight, text_loss_weight: weights of supervised tokens inside / outside image blocks,
            used by the model's loss when the batch brings no per-token ``loss_weights``.
    """

    model_type = "progemu"
    if SubConfigSpec is not None:
        sub_configs_defaults: ClassVar[dict[str, Any]] = {"text_config": LlamaConfig}
        if ProgEmuVQConfig is not None:
            sub_configs_defaults["vq_config"] = SubConfigSpec(config_class=ProgEmuVQConfig, optional=True)
    else:  # pragma: no cover - older transformers 5.x
        sub_configs: ClassVar[dict[str, Any]] = {"text_config": LlamaConfig}
        if ProgEmuVQConfig is not None:
            sub_configs["vq_config"] = ProgEmuVQConfig

    text_config: dict | LlamaConfig | None = None
    vq_config: dict | PreTrainedConfig | None = None
    vocab_layout: dict | None = None
    sequence_order: str = "prompt_prior"
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool = False
    image_loss_weight: float = 1.0
    text_loss_weight: float = 1.0

    def __post_init__(self, **kwargs):
        # build the sub-configs here: older transformers 5.x releases leave dicts as they are
        if self.text_config is None:
            self.text_config = LlamaConfig()
        elif isinstance(self.text_config, dict):
            self.text_config = LlamaConfig(**self.text_config)
        if isinstance(self.vq_config, dict) and ProgEmuVQConfig is not None:
            self.vq_config = ProgEmuVQConfig(**self.vq_config)
        super().__post_init__(**kwargs)
        if self.sequence_order not in SEQUENCE_ORDERS:
            raise ValueError(f"sequence_order must be one of {SEQUENCE_ORDERS}, got {self.sequence_order!r}")
        tc = self.text_config
        if self.max_position_embeddings is None:
            self.max_position_embeddings = tc.max_position_embeddings
        tc.max_position_embeddings = self.max_position_embeddings
        tc.tie_word_embeddings = self.tie_word_embeddings
        if self.vocab_layout is not None:
            layout = VocabLayout.from_dict(self.vocab_layout)  # validates
            self.vocab_layout = layout.to_dict()
            if tc.vocab_size < layout.vocab_size:
                raise LayoutError(f"text_config.vocab_size {tc.vocab_size} is smaller than the layout's "
                                  f"{layout.vocab_size} (text {layout.text_vocab_size} + codes {layout.codebook_size})")
            tc.pad_token_id, tc.bos_token_id, tc.eos_token_id = layout.pad_id, layout.bos_id, layout.eos_id

    # ---- conveniences -----------------------------------------------------------------------------------
    @property
    def layout(self) -> VocabLayout:
        """The vocabulary layout object (raises LayoutError when the config has none)."""
        if self.vocab_layout is None:
            raise LayoutError("this ProgEmuConfig has no vocab_layout; build it with a tokenizer and a codebook")
        return VocabLayout.from_dict(self.vocab_layout)

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:  # e.g. `resize_token_embeddings` on code that sets it here
        self.text_config.vocab_size = int(value)

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def initializer_range(self) -> float:
        return self.text_config.initializer_range

    @classmethod
    def from_preset(cls, name: str, layout: VocabLayout | dict | None = None, vq_config: Any = None,
                    **overrides: Any) -> ProgEmuConfig:
        """A config of the named size (`tiny`, `small`, `base`, `emu3-8b`) for ``layout``.

        ``overrides`` may name top-level fields (``sequence_order``, ``max_position_embeddings``,
        ``tie_word_embeddings``, ``image_loss_weight``, ``text_loss_weight``) or any `LlamaConfig` field (``hidden_size``, ``num_hidden_layers``, ...).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        text = copy.deepcopy(PRESETS[name])
        top = {k: overrides.pop(k) for k in ("sequence_order", "tie_word_embeddings", "image_loss_weight",
                                             "text_loss_weight") if k in overrides}
        text.update(overrides)
        rope_theta = text.pop("rope_theta")
        text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": rope_theta})
        if isinstance(layout, VocabLayout):
            layout = layout.to_dict()
        if layout is not None:
            text.setdefault("vocab_size", VocabLayout.from_dict(layout).vocab_size)
        max_pos = text.pop("max_position_embeddings")
        return cls(text_config=LlamaConfig(**text, max_position_embeddings=max_pos), vq_config=vq_config,
                   vocab_layout=layout, max_position_embeddings=max_pos, **top)


__all__ = ["PRESETS", "SEQUENCE_ORDERS", "ProgEmuConfig"]
