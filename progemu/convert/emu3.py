"""Convert Emu3-Gen / ProgEmu weights into a progemu model folder: Emu3's token ids and logits, kept.

    progemu convert emu3 Emu3-Gen-hf runs/emu3-gen                              # transformers' Emu3 format
    progemu convert emu3 progemu/lm runs/progemu --vq progemu/vq              # Emu3's original layout

SRC is either ``Emu3ForConditionalGeneration.save_pretrained`` + ``Emu3Processor`` (the VQ-VAE inside, keys
``model.text_model.*`` / ``model.vqmodel.*``, or the older ``text_model.model.*`` / ``vqmodel.*``) or Emu3's
original layout: an ``Emu3ForCausalLM`` folder (Llama key names ``model.*``, ``lm_head.*``) plus the vision
tokenizer's folder (``encoder.*``, ``decoder.*``, ``quantize.*``, ...), mapped as transformers' own Emu3
conversion maps them. The backbone becomes a `ProgEmuForCausalLM` (a Llama model: Emu3's text model is one; its
residual dropout acts only in training), the VQ-VAE goes to ``OUT/vq`` behind `progemu.emu3_vq.Emu3GrayVQ`,
and the layout is `progemu.tokenization.emu3_layout`. The original LM folder's tiktoken text tokenizer
(``emu3.tiktoken``) is converted offline with the same ids (`progemu.convert.emu3_tiktoken`); ``--tokenizer``
names another folder (transformers' format or the original one). Weights are read and written one safetensors
shard at a time, so an 8B checkpoint never holds two full copies in memory. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from progemu.errors import ConversionError, LayoutError

# transformers' Emu3 format (current, then pre-5.x names) -> progemu's names; the original LM's names are Llama's
TEXT_KEY_RULES = ((r"^model\.text_model\.", "model."), (r"^text_model\.model\.", "model."),
                  (r"^text_model\.lm_head\.", "lm_head."), (r"^model\.(?!vqmodel\.)", "model."),
                  (r"^lm_head\.", "lm_head."))
VQ_KEY_RULES = ((r"^model\.vqmodel\.", ""), (r"^vqmodel\.", ""))
SKIPPED_KEYS = re.compile(r"rotary_emb\.inv_freq$")  # buffers some old checkpoints saved; recomputed on load
# Emu3's original vision-tokenizer config names -> transformers' Emu3VQVAEConfig names
VQ_CONFIG_NAMES = {"z_channels": "latent_channels", "double_z": "double_latent", "ch": "base_channels",
                   "ch_mult": "channel_multiplier"}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def map_key(key: str, vq_folder: bool = False) -> tuple[str | None, str]:
    """``(kind, progemu name)`` of a source weight; kind "text", "vq", or None (skipped)."""
    if SKIPPED_KEYS.search(key):
        return None, key
    if vq_folder:  # the original vision tokenizer's names are Emu3VQVAE's
        return "vq", key
    for pattern, repl in VQ_KEY_RULES:
        if re.match(pattern, key):
            return "vq", re.sub(pattern, repl, key)
    for pattern, repl in TEXT_KEY_RULES:
        if re.match(pattern, key):
            return "text", re.sub(pattern, repl, key)
    raise ConversionError(key, "unknown Emu3 weight name (expected model.text_model.*, model.vqmodel.*, "
                               "text_model.*, vqmodel.*, model.* or lm_head.*)")


def _shards(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, in index order."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ConversionError(index, f"names shards that are not there: {missing[:3]}")
        return [folder / n for n in names]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    raise ConversionError(folder, "no safetensors weights (model.safetensors or an index); convert .bin "
                                  "checkpoints to safetensors first: pickled weights are not loaded")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConversionError(path, "missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConversionError(path, f"not valid JSON ({err})") from err


def llama_config(tc: dict[str, Any]) -> Any:
    """Emu3's text config (transformers' or the original's) -> the `LlamaConfig` of the same network."""
    from transformers import LlamaConfig

    rope = dict(tc.get("rope_parameters") or tc.get("rope_scaling") or {})
    rope.setdefault("rope_type", rope.pop("type", "default"))
    rope.setdefault("rope_theta", float(tc.get("rope_theta", 1000000.0)))
    kw = {k: tc[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                             "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
                             "rms_norm_eps", "attention_bias", "mlp_bias", "head_dim", "initializer_range") if k in tc}
    # Emu3's attention_dropout also drops its residuals in training; the Llama model keeps the attention's only
    return LlamaConfig(**kw, rope_parameters=rope, attention_dropout=0.0,
                       tie_word_embeddings=bool(tc.get("tie_word_embeddings", False)))


def vq_config(cfg: dict[str, Any]) -> Any:
    """A VQ-VAE config (transformers' or the original's names) -> `Emu3VQVAEConfig`."""
    from transformers import Emu3VQVAEConfig

    known = set(Emu3VQVAEConfig().to_dict())
    kw = {VQ_CONFIG_NAMES.get(k, k): v for k, v in cfg.items()}
    if "hidden_size" not in kw and "base_channels" in kw:  # the original's attention width: the last level's
        kw["hidden_size"] = int(kw["base_channels"]) * int(list(kw.get("channel_multiplier", (1, 2, 2, 4)))[-1])
    return Emu3VQVAEConfig(**{k: v for k, v in kw.items() if k in known and k not in (
        "model_type", "architectures", "transformers_version", "dtype", "torch_dtype")})


def _image_stats(*candidates: Path) -> tuple[list[float], list[float]] | None:
    """image_mean / image_std of the first Emu3 image-processor config found (None: none)."""
    for path in candidates:
        if path.is_file():
            d = json.loads(path.read_text(encoding="utf-8"))
            d = d.get("image_processor", d)
            if "image_mean" in d and "image_std" in d:
                return d["image_mean"], d["image_std"]
    return None


def _load_tokenizer(folder: Path) -> Any:
    """A transformers-format tokenizer (``tokenizer.json``) when there is one, else Emu3's tiktoken one, converted."""
    from transformers import AutoTokenizer

    from progemu.convert.emu3_tiktoken import TIKTOKEN_FILE, convert_tiktoken_tokenizer, has_tiktoken_tokenizer

    if not folder.is_dir():
        raise ConversionError(folder, "no such folder (the tokenizer given with --tokenizer)")
    if not (folder / "tokenizer.json").is_file():
        if has_tiktoken_tokenizer(folder):
            return convert_tiktoken_tokenizer(folder)  # Emu3's original layout: same ids, no remote code run
        config = folder / "tokenizer_config.json"
        if not config.is_file() or _read_json(config).get("tokenizer_class") == "Emu3Tokenizer":
            raise ConversionError(folder / TIKTOKEN_FILE, "missing, and so is tokenizer.json: neither Emu3's "
                                                          "original text tokenizer nor one in transformers' format; "
                                                          "pass --tokenizer with a folder that has one")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 - any failure means: no tokenizer loadable without remote code here
        raise ConversionError(folder, f"no tokenizer that loads without trust_remote_code and no {TIKTOKEN_FILE}; "
                                      "pass --tokenizer with a tokenizer in transformers' format (e.g. a local "
                                      f"copy of BAAI/Emu3-Gen-hf) or Emu3's original one: {err}") from err


class Emu3Source:
    """What a source folder holds: configs, weight shards, tokenizer, VQ location; its format is detected."""

    def __init__(self, src: str | Path, vq: str | Path | None = None, tokenizer: str | Path | None = None):
        self.src = Path(src)
        if not self.src.is_dir():
            raise ConversionError(self.src, "no such folder (nothing is downloaded: give a local Emu3 checkpoint)")
        cfg = _read_json(self.src / "config.json")
        archs = cfg.get("architectures") or []
        self.vq_dir = Path(vq) if vq is not None else None
        if cfg.get("model_type") == "emu3":  # transformers' Emu3ForConditionalGeneration
            if self.vq_dir is not None:
                raise ConversionError(self.vq_dir, "--vq is for Emu3's original layout; this SRC is transformers' "
                                                   "format, whose VQ-VAE is inside it")
            self.format = "transformers"
            self.text_cfg, self.vq_cfg = cfg["text_config"], cfg["vq_config"]
            self.vocabulary_map = cfg.get("vocabulary_map")
            self.stats = _image_stats(self.src / "preprocessor_config.json", self.src / "processor_config.json")
        elif cfg.get("model_type") in ("Emu3", "emu3_text_model") or "Emu3ForCausalLM" in archs:
            if self.vq_dir is None:
                raise ConversionError(self.src, "Emu3's original layout: give the vision tokenizer's folder with --vq")
            if not self.vq_dir.is_dir():
                raise ConversionError(self.vq_dir, "no such folder (the vision tokenizer given with --vq)")
            self.format = "original"
            self.text_cfg, self.vq_cfg = cfg, _read_json(self.vq_dir / "config.json")
            self.vocabulary_map = None
            self.stats = _image_stats(self.vq_dir / "preprocessor_config.json")
        else:
            raise ConversionError(self.src / "config.json", f"model_type {cfg.get('model_type')!r} is neither "
                                                            "transformers' 'emu3' nor Emu3's original 'Emu3'")
        self.tokenizer = _load_tokenizer(Path(tokenizer) if tokenizer is not None else self.src)
        self.shards = _shards(self.src)
        self.vq_shards = _shards(self.vq_dir) if self.format == "original" else []

    def tensors(self, shard: Path, vq_folder: bool = False) -> Iterator[tuple[str | None, str, torch.Tensor]]:
        """``(kind, progemu name, tensor)`` of one shard, read lazily."""
        from safetensors import safe_open

        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                kind, name = map_key(key, vq_folder)
                if kind is not None:
                    yield kind, name, f.get_tensor(key)


def _check_keys(got: set[str], want: set[str], what: str, optional: set[str] = frozenset()) -> None:
    missing, extra = sorted(want - got - optional), sorted(got - want)
    if missing or extra:
        raise ConversionError(what, f"weights do not match the converted model: missing {missing[:5]}, "
                                    f"unexpected {extra[:5]}")


def convert_emu3(src: str | Path, out: str | Path, vq: str | Path | None = None, tokenizer: str | Path | None = None,
                 image_size: int = 512, sequence_order: str = "prior_prompt", dtype: str | None = None) -> Path:
    """Write the progemu folder ``out`` for the Emu3 checkpoint ``src`` (see the module docstring); returns ``out``.

    ``sequence_order`` defaults to ProgEmu's (prior image, then prompt); ``dtype`` (bfloat16, float16, float32)
    casts the weights, default: as stored.
    """
    from safetensors.torch import save_file
    from transformers import Emu3VQVAE, GenerationConfig

    from progemu.configuration_progemu import ProgEmuConfig
    from progemu.emu3_vq import CLIP_MEAN, CLIP_STD, Emu3GrayVQ
    from progemu.modeling_progemu import ProgEmuForCausalLM
    from progemu.processing_progemu import ProgEmuProcessor
    from progemu.tokenization import emu3_layout

    out = Path(out)
    if out.exists():
        raise ConversionError(out, "already exists; remove it or choose another output folder")
    source = Emu3Source(src, vq, tokenizer)
    text_config, vqc = llama_config(source.text_cfg), vq_config(source.vq_cfg)
    factor = 2 ** (len(vqc.channel_multiplier) - 1)
    if image_size % factor:
        raise ConversionError(out, f"--image-size {image_size} is not divisible by the VQ-VAE's spatial factor "
                                   f"{factor}")
    try:
        layout = emu3_layout(source.tokenizer, image_size // factor, image_size // factor, source.vocabulary_map,
                             text_vocab_size=text_config.vocab_size)
    except LayoutError as err:
        raise ConversionError(source.src, str(err)) from err
    if layout.codebook_size != vqc.codebook_size:
        raise ConversionError(source.src, f"{layout.codebook_size} visual tokens but a VQ-VAE codebook of "
                                          f"{vqc.codebook_size}")
    if layout.vocab_size > text_config.vocab_size:
        raise ConversionError(source.src, f"the tokenizer's ids reach {layout.vocab_size}, the embeddings only "
                                          f"{text_config.vocab_size}")
    config = ProgEmuConfig(text_config=text_config, vocab_layout=layout.to_dict(), sequence_order=sequence_order,
                           max_position_embeddings=text_config.max_position_embeddings,
                           tie_word_embeddings=text_config.tie_word_embeddings)
    with torch.device("meta"):
        want = set(ProgEmuForCausalLM(config).state_dict())
    cast = DTYPES[dtype] if dtype else None

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        weight_map, vq_state, total, stored = {}, {}, 0, None
        n = len(source.shards)
        for k, shard in enumerate(source.shards):  # one source shard in memory at a time
            name = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            part = {}
            for kind, key, t in source.tensors(shard):
                if kind == "vq":
                    vq_state[key] = t
                    continue
                stored = stored or t.dtype
                part[key] = (t.to(cast) if cast is not None and t.is_floating_point() else t).contiguous()
            if part:
                save_file(part, str(tmp / name), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(part, name))
                total += sum(t.numel() * t.element_size() for t in part.values())
            del part
        _check_keys(set(weight_map), want, str(source.src), optional={"lm_head.weight"}
                    if config.tie_word_embeddings else set())
        if n > 1:
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        for shard in source.vq_shards:
            vq_state.update({key: t for _, key, t in source.tensors(shard, vq_folder=True)})
        vqmodel = Emu3VQVAE(vqc)
        _check_keys(set(vq_state), set(vqmodel.state_dict()), str(source.vq_dir or source.src) + " (VQ-VAE)")
        vqmodel.load_state_dict(vq_state, strict=True)
        mean, std = source.stats or (CLIP_MEAN, CLIP_STD)
        gray = Emu3GrayVQ(vqmodel.eval(), mean, std)

        config.dtype = cast or stored or torch.float32
        config.save_pretrained(str(tmp))
        GenerationConfig.from_model_config(config).save_pretrained(str(tmp))
        proc = ProgEmuProcessor(source.tokenizer, vocab_layout=layout.to_dict(), sequence_order=sequence_order,
                                max_length=int(config.max_position_embeddings), ingest_options={"size": image_size})
        proc.save_pretrained(str(tmp))  # tokenizer, processor_config.json
        gray.save_pretrained(str(tmp / "vq"))  # the model's image tokenizer, inside its folder as Emu3's vqmodel
        from progemu.model_card import write_model_card

        write_model_card(tmp, config.to_dict(), notes=f"Converted from the Emu3 checkpoint {source.src.name} "
                                                      f"({source.format} format) with `progemu convert emu3`.")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = ["Emu3Source", "convert_emu3", "llama_config", "map_key", "vq_config"]
