"""`ProgEmuForCausalLM`: one decoder-only transformer that reads and writes interleaved text and image codes.

The backbone is transformers' `LlamaModel` (imported, not copied) built from ``config.text_config``; the
class adds the LM head, a loss that weighs and reports image and text tokens separately, and
`from_text_llm` to start from a pretrained Llama-family text LLM. It is a `GenerationMixin`, so
``model.generate(...)`` and transformers' `Cache` classes work unchanged.

    from progemu import ProgEmuConfig, ProgEmuForCausalLM
    model = ProgEmuForCausalLM(ProgEmuConfig.from_preset("tiny", layout=layout))
    out = model(input_ids, attention_mask=mask, labels=labels, loss_weights=weights)
    out.loss, out.image_loss, out.text_loss
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel
from transformers.utils.import_utils import is_flash_attn_2_available

from progemu.configuration_progemu import ProgEmuConfig
from progemu.vocab import VocabLayout


@contextmanager
def no_cudnn_attention() -> Iterator[None]:
    """SDPA without its cuDNN backend inside the block (the caller's other backend choices are kept).

    Why: cuDNN attention (which torch picks first for bf16 on Hopper) builds an execution plan for every new
    query / key length, and decoding makes a new key length every step: measured on an H100, bf16 HF generate ran
    38.7 ms/step against 8.7 ms/step over lengths already planned. Inference forwards (`ProgEmuForCausalLM` out of
    training mode, `generation.stream.TokenStream`) run inside it; training keeps torch's choice (fixed shapes,
    where cuDNN is fastest).
    """
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def default_attn_implementation(dtype: Any = None) -> str:
    """``flash_attention_2`` on a CUDA machine that has it and a half-precision dtype, else ``sdpa``."""
    half = dtype in (torch.bfloat16, torch.float16, "bfloat16", "float16")
    if half and torch.cuda.is_available() and is_flash_attn_2_available():
        return "flash_attention_2"
    return "sdpa"


def image_block_mask(input_ids: torch.Tensor, boi_id: int, eoi_id: int) -> torch.Tensor:
    """(B, T) bool: True on every token of a ``<boi> ... <eoi>`` block (both ends included).

    Positional (by counting ``<boi>`` / ``<eoi>``) rather than by id, so the size-marker text tokens
    inside the block count as image tokens. Works on packed rows holding several sequences.
    """
    is_boi, is_eoi = input_ids == boi_id, input_ids == eoi_id
    opened = is_boi.long().cumsum(-1)
    closed_before = is_eoi.long().cumsum(-1) - is_eoi.long()
    return opened > closed_before


@dataclass
class ProgEmuCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the mean cross-entropy of the supervised image and text tokens.

    ``image_loss`` / ``text_loss`` are unweighted means over their tokens (detached, for logging);
    ``num_image_tokens`` / ``num_text_tokens`` count them. With weights w_i, w_t per modality,
    ``loss == (w_i*image_loss*n_i + w_t*text_loss*n_t) / (w_i*n_i + w_t*n_t)``.
    """

    image_loss: torch.Tensor | None = None
    text_loss: torch.Tensor | None = None
    num_image_tokens: torch.Tensor | None = None
    num_text_tokens: torch.Tensor | None = None


class ProgEmuPreTrainedModel(LlamaPreTrainedModel):
    """Llama's pretrained-model settings (SDPA / flash / flex attention, gradient checkpointing) for ProgEmuConfig."""

    config_class = ProgEmuConfig
    config: ProgEmuConfig
    base_model_prefix = "model"


class ProgEmuForCausalLM(ProgEmuPreTrainedModel, GenerationMixin):
    """Llama backbone + LM head over the whole layout vocabulary (text ids, specials, image codes)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: ProgEmuConfig):
        super().__init__(config)
        self.model = LlamaModel(config.text_config)
        self.vocab_size = config.text_config.vocab_size
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    @property
    def layout(self) -> VocabLayout:
        return self.config.layout

    @classmethod
    def from_pretrained(cls, *args: Any, load_vq: bool = True, **kwargs: Any) -> ProgEmuForCausalLM:
        """transformers' `from_pretrained`, defaulting to flash_attention_2 where it runs, else SDPA; the image
        tokenizer saved in the folder's ``vq/`` becomes `vqmodel` (unless ``load_vq=False``)."""
        if kwargs.get("attn_implementation") is None:
            kwargs["attn_implementation"] = default_attn_implementation(kwargs.get("dtype"))
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading info) when asked for
        vq_dir = Path(str(args[0] if args else kwargs.get("pretrained_model_name_or_path", ""))) / "vq"
        if load_vq and (vq_dir / "config.json").is_file():
            from progemu.emu3_vq import load_image_tokenizer

            model.set_image_tokenizer(load_image_tokenizer(vq_dir))
        return loaded

    # ---- the image tokenizer, as Emu3's `model.vqmodel` ---------------------------------------------------------
    @property
    def vqmodel(self) -> nn.Module | None:
        """The image tokenizer saved with the model (``vq/``): progemu's VQ or Emu3's VQ-VAE (`progemu.emu3_vq`), or
        None. Not a submodule: it is frozen, so it is never trained, ZeRO-partitioned or part of the state dict."""
        return self.__dict__.get("_vqmodel")

    def set_image_tokenizer(self, vq: nn.Module | None) -> None:
        object.__setattr__(self, "_vqmodel", vq)  # bypasses nn.Module's submodule registration on purpose

    def to(self, *args: Any, **kwargs: Any) -> ProgEmuForCausalLM:
        """`nn.Module.to`; the image tokenizer follows to the same device (its dtype stays: it is no submodule)."""
        moved = super().to(*args, **kwargs)
        if self.vqmodel is not None:
            self.vqmodel.to(next(self.parameters()).device)
        return moved

    def _need_vq(self) -> nn.Module:
        if self.vqmodel is None:
            from progemu.errors import LayoutError

            raise LayoutError("this model has no image tokenizer: load a folder with vq/ or call set_image_tokenizer")
        return self.vqmodel

    @torch.no_grad()
    def get_image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Grayscale pixel values (B, 1, H, W) in [-1, 1] -> (B, image_length) token ids of full image blocks."""
        vq = self._need_vq()
        param = next(vq.parameters())
        codes = vq.encode(pixel_values.to(param.device, param.dtype))  # (B, h, w)
        return self.layout.codes_to_ids(codes.long().cpu())

    @torch.no_grad()
    def decode_image_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, image_length) image-block ids, or (B, h, w) codes -> grayscale pixel values (B, 1, H, W) in [-1, 1]."""
        vq = self._need_vq()
        lay = self.layout
        tokens = torch.as_tensor(image_tokens).long().cpu()
        codes = lay.ids_to_codes(tokens) if tokens.shape[-1] == lay.image_length and tokens.ndim == 2 else tokens
        return vq.decode(codes.to(next(vq.parameters()).device))

    def save_pretrained(self, save_directory: str | Path, *args: Any, model_card: dict[str, Any] | None = None,
                        **kwargs: Any) -> None:
        """transformers' `save_pretrained`, plus a README.md model card (`progemu.model_card`).

        ``model_card`` holds `write_model_card` arguments (``data``, ``metrics``, ``training``, ``notes``);
        without it an existing README.md (e.g. one with metrics) is kept and a missing one is written.
        """
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and self.vqmodel is not None:
            self.vqmodel.save_pretrained(str(Path(save_directory) / "vq"))  # inside the model folder, as Emu3
        if kwargs.get("is_main_process", True) and (model_card is not None
                                                     or not (Path(save_directory) / "README.md").exists()):
            from progemu.model_card import write_model_card

            write_model_card(save_directory, self.config.to_dict(), num_parameters=self.num_parameters(),
                             **(model_card or {}))

    # ---- forward and loss --------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        loss_weights: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ProgEmuCausalLMOutput:
        """Causal LM forward. ``labels`` (B, T) are the input ids with -100 where no loss is wanted (the
        shift happens here); ``loss_weights`` (B, T) float weighs each labelled token (train/examples.py puts
        its image / text weights there); without it, tokens inside ``<boi>...<eoi>`` blocks weigh
        ``config.image_loss_weight`` and the others ``config.text_loss_weight``. ``num_items_in_batch`` (from the HF Trainer under gradient
        accumulation) replaces the per-batch normaliser ``sum(weights)``."""
        with no_cudnn_attention() if not self.training else nullcontext():
            outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 inputs_embeds=inputs_embeds, use_cache=use_cache, cache=cache, **kwargs)
        hidden = outputs.last_hidden_state  # (B, T, D)
        slice_ = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, slice_, :])  # (B, T', V)

        result = ProgEmuCausalLMOutput(logits=logits, hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions, cache=outputs.cache)
        if labels is not None:
            self._loss(result, logits, labels, input_ids, loss_weights, num_items_in_batch)
        return result

    def _loss(self, out: ProgEmuCausalLMOutput, logits: torch.Tensor, labels: torch.Tensor,
              input_ids: torch.Tensor | None, loss_weights: torch.Tensor | None,
              num_items_in_batch: int | torch.Tensor | None) -> None:
        labels = labels.to(logits.device)
        tgt = labels[:, 1:]  # (B, T-1): token t+1 is predicted at position t
        ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                             ignore_index=-100, reduction="none").view_as(tgt)  # (B, T-1)
        valid = tgt != -100
        layout = self.config.layout
        if input_ids is not None:
            is_img = image_block_mask(input_ids.to(labels.device), layout.boi_id, layout.eoi_id)[:, 1:]
        else:  # only embeddings given: classify by id (codes and structural tokens are image)
            struct = torch.tensor(layout.structural_ids, device=tgt.device)
            is_img = layout.is_image_code(tgt) | torch.isin(tgt, struct)
        if loss_weights is None:  # the config's per-modality weights
            wi, wt = float(self.config.image_loss_weight), float(self.config.text_loss_weight)
            weights = torch.where(is_img, wi, wt).to(ce) * valid
        else:
            weights = loss_weights.to(ce)[:, 1:] * valid
        denom = weights.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch).to(ce)
        out.loss = (ce * weights).sum() / denom.clamp_min(1e-8)
        with torch.no_grad():
            img, txt = valid & is_img, valid & ~is_img
            out.num_image_tokens, out.num_text_tokens = img.sum(), txt.sum()
            out.image_loss = (ce * img).sum() / img.sum().clamp_min(1)
            out.text_loss = (ce * txt).sum() / txt.sum().clamp_min(1)

    # ---- starting from a text LLM ----------------------------------------------------------------------------
    @classmethod
    def from_text_llm(cls, path: str | Path, layout: VocabLayout | dict, sequence_order: str = "prompt_prior",
                      vq_config: Any = None, **load_kwargs: Any) -> ProgEmuForCausalLM:
        """A ProgEmu model whose backbone is the Llama-family text LLM saved at ``path``.

        The embeddings and LM head are resized to ``layout.vocab_size``: rows of the LLM's text ids are
        kept, new rows (special tokens, image codes) start at the mean of the old ones (transformers'
        ``mean_resizing``). ``layout`` must come from the LLM's own tokenizer with
        `progemu.tokenization.add_special_tokens` applied, so that text ids mean the same thing.
        """
        layout = VocabLayout.from_dict(layout) if isinstance(layout, dict) else layout
        src_cfg = LlamaConfig.from_pretrained(path)
        if src_cfg.model_type != "llama":
            raise ValueError(f"{path}: from_text_llm needs a Llama-architecture LLM, found model_type "
                             f"{src_cfg.model_type!r}")
        load_kwargs.setdefault("attn_implementation", default_attn_implementation(load_kwargs.get("dtype")))
        src = LlamaForCausalLM.from_pretrained(path, **load_kwargs)
        # rows past the tokenizer (LLMs often pad their embedding matrix) are reused or cut: never looked up
        src.resize_token_embeddings(layout.vocab_size, mean_resizing=True)
        config = ProgEmuConfig(text_config=src.config, vq_config=vq_config, vocab_layout=layout.to_dict(),
                               sequence_order=sequence_order,
                               max_position_embeddings=src.config.max_position_embeddings,
                               tie_word_embeddings=bool(src.config.tie_word_embeddings))
        with torch.device("meta"):  # no second copy of the weights: the LLM's modules are moved in below
            model = cls(config)
        model.model, model.lm_head = src.model, src.lm_head
        model.vocab_size = layout.vocab_size
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.generation_config = model.generation_config.from_model_config(config)
        return model


__all__ = ["ProgEmuCausalLMOutput", "ProgEmuForCausalLM", "ProgEmuPreTrainedModel", "default_attn_implementation",
           "image_block_mask", "no_cudnn_attention"]
