"""One training stage from its run config: processor, data, model, Trainer, train, save, consolidate.

``python -m train.pretrain`` and ``python -m train.finetune`` both run `main` with their stage's name; everything
that differs between the stages (tasks, data, initial weights, schedule) is in the YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed

from progemu.errors import ProgEmuError
from train.config import DataArgs, ModelArgs, parse_config
from train.data import PackedStream, build_rows, load_sources
from train.engine import (
    StopAtStep,
    attn_implementation,
    last_checkpoint,
    make_trainer,
    plot_loss_curve,
    write_json,
)
from train.examples import Collator, ExampleBuilder

log = logging.getLogger("progemu.train")


def load_processor(model_args: ModelArgs, data_args: DataArgs, rows: Any) -> tuple[Any, Any]:
    """The run's processor and image tokenizer (saved in each checkpoint's ``vq/``, the model folder's layout):
    the given processor folder's, else the init_from folder's, else text tokenizer + VQ + shard grid."""
    from progemu.emu3_vq import load_image_tokenizer
    from progemu.processing_progemu import ProgEmuProcessor

    for src in (data_args.processor, model_args.init_from):
        if src and (Path(src) / "processor_config.json").is_file():
            proc = ProgEmuProcessor.from_pretrained(src)
            vq_dir = Path(src) / "vq"
            vq = load_image_tokenizer(vq_dir) if (vq_dir / "config.json").is_file() else None
            break
    else:
        from transformers import AutoTokenizer

        for need in (data_args.text_tokenizer, data_args.vq):
            if not Path(need).is_dir():
                raise ProgEmuError(f"{need}: missing (text tokenizer / VQ folder); `make pretrain` builds them")
        tok = AutoTokenizer.from_pretrained(data_args.text_tokenizer)
        vq = load_image_tokenizer(data_args.vq)
        row = rows[0]
        # images must be read at the size the shards were encoded at (IngestOptions defaults to 512 px, which
        # would give `progemu generate` a different code grid): the grid times the VQ's downsampling factor
        f = vq.downsample_factor
        if int(row["grid_h"]) != int(row["grid_w"]):
            raise ProgEmuError(f"{data_args.shards}: non-square code grid {row['grid_h']}x{row['grid_w']}")
        proc = ProgEmuProcessor(tok, codebook_size=vq.config.codebook_size, grid_h=int(row["grid_h"]),
                                grid_w=int(row["grid_w"]), ingest_options={"size": int(row["grid_h"]) * f})
    return proc, _use_the_shards_vq(vq, data_args, explicit=bool(data_args.processor))


def shards_vq(shards: str) -> Path | None:
    """The VQ folder that encoded the code shards (``encode_info.json``), when they name one that exists."""
    models = set()
    for folder in str(shards).split(","):
        info = Path(folder.strip()) / "encode_info.json"
        if info.is_file():
            models.add(json.loads(info.read_text()).get("model"))
    if len(models) != 1 or not models or None in models:
        return None
    path = Path(models.pop())
    return path if (path / "config.json").is_file() else None


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def _use_the_shards_vq(vq: Any, data_args: DataArgs, explicit: bool) -> Any:
    """The image tokenizer saved with the model must be the VQ whose codes the model learnt: one inherited from
    ``init_from`` (e.g. a stage trained on another VQ's codes) gives way to the shards' VQ; a processor folder named
    explicitly whose VQ disagrees with the shards is an error."""
    from progemu.emu3_vq import load_image_tokenizer

    src = shards_vq(data_args.shards)
    if vq is None:  # a processor folder without vq/ (processors carry no network): the shards' VQ, else `vq`
        if src is None and data_args.vq and (Path(data_args.vq) / "config.json").is_file():
            src = Path(data_args.vq)
        return None if src is None else load_image_tokenizer(src)
    if src is None:
        return vq
    shards = load_image_tokenizer(src)
    if _same_weights(shards, vq):
        return vq
    if explicit:
        raise ProgEmuError(f"{data_args.processor}: its VQ is not the one that encoded {data_args.shards} ({src}); "
                           "re-encode the shards or use that VQ's processor")
    log.info("the processor's VQ did not encode %s: using the shards' VQ %s", data_args.shards, src)
    return shards


def example_builder(processor: Any, data_args: DataArgs, train: bool = True) -> ExampleBuilder:
    """The run's sequences: its loss mask and weights, and (for training only) its random augmentations."""
    aug = {"cfg_dropout": data_args.cfg_dropout, "prompt_augment": 0.5 if data_args.prompt_augment else 0.0,
           "changed_code_weight": data_args.changed_code_weight, "prompt_dropout": data_args.prompt_dropout}
    return ExampleBuilder(processor, mask_mode=data_args.loss_mask, image_loss_weight=data_args.image_loss_weight,
                          text_loss_weight=data_args.text_loss_weight, **(aug if train else {}))


def train_stream(data_args: DataArgs, args: TrainingArguments, processor: Any,
                 sources: list[Any] | None = None) -> PackedStream:
    """This rank's training stream. It reads nothing and builds nothing before the first batch is asked for, and
    does not depend on ``max_steps`` (the Trainer stops it)."""
    sources = sources or load_sources(data_args.shards, data_args.train_split, data_args.max_samples)
    return PackedStream(sources, example_builder(processor, data_args), data_args.tasks, data_args.max_length,
                        data_args.packing, seed=args.seed, weights=data_args.shard_weights,
                        rank=args.process_index, world=args.world_size,
                        batch_size=args.per_device_train_batch_size, buffer=data_args.pack_buffer,
                        where=f"{data_args.shards} ({data_args.train_split})")


def build_model(model_args: ModelArgs, processor: Any, max_length: int, image_loss_weight: float = 1.0,
                text_loss_weight: float = 1.0, image_tokenizer: Any = None) -> torch.nn.Module:
    """From scratch (preset; its config names ``image_tokenizer``'s, when progemu's VQ), from a ProgEmu folder or
    checkpoint, or from a Llama text LLM folder; its config gets the run's loss weights."""
    from transformers import AutoConfig

    from progemu.modeling_progemu import ProgEmuForCausalLM

    impl = attn_implementation(model_args.attn_implementation)
    src = model_args.init_from
    if src is None:
        overrides = json.loads(model_args.model_overrides) if model_args.model_overrides else {}
        cfg = processor.model_config(model_args.model_preset, image_tokenizer, **overrides)
        if cfg.max_position_embeddings < max_length:
            cfg = processor.model_config(model_args.model_preset, image_tokenizer,
                                         **{**overrides, "max_position_embeddings": max_length})
        # _from_config mutates the config it is given (attention implementation): hand it a copy
        model = ProgEmuForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation=impl)
    else:
        if not (Path(src) / "config.json").is_file():
            raise ProgEmuError(f"{src}: init_from needs a folder with config.json (a final/ folder, a checkpoint "
                               "or a text LLM)")
        kind = AutoConfig.from_pretrained(src).model_type
        if kind == "llama":
            model = ProgEmuForCausalLM.from_text_llm(src, processor.layout, sequence_order=processor.sequence_order,
                                                     attn_implementation=impl)
        elif kind == "progemu" and any((Path(src) / f).is_file() for f in ("model.safetensors",
                                                                            "model.safetensors.index.json")):
            # a model folder, one file or sharded (a converted Emu3): from_pretrained partitions it under ZeRO-3
            model, info = ProgEmuForCausalLM.from_pretrained(src, attn_implementation=impl, dtype=torch.float32,
                                                             output_loading_info=True, load_vq=False)
            _check_loaded(src, info["missing_keys"], info["unexpected_keys"],
                          [str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys", [])])
        elif kind == "progemu":  # a ZeRO (or sharded) checkpoint folder: gather its fp32 weights
            from train.consolidate import load_weights

            model = ProgEmuForCausalLM._from_config(AutoConfig.from_pretrained(src), attn_implementation=impl)
            missing, unexpected = model.load_state_dict(load_weights(Path(src)), strict=False)
            # a tied head is the embedding itself: a checkpoint may store it once
            tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
            _check_loaded(src, [k for k in missing if k not in tied], unexpected)
        else:
            raise ProgEmuError(f"{src}: model_type {kind!r} is neither progemu nor llama")
        processor.check_model_config(model.config)
    model.config.image_loss_weight = image_loss_weight
    model.config.text_loss_weight = text_loss_weight
    if model.config.max_position_embeddings < max_length:
        raise ProgEmuError(f"max_length {max_length} exceeds the model's context {model.config.max_position_embeddings}")
    return model


def _check_loaded(src: str, missing: Any, unexpected: Any, mismatched: Any = ()) -> None:
    """``init_from`` must hold exactly the model's weights: a missing one would silently stay random."""
    problems = [f"{what} {sorted(keys)[:8]}{' ...' if len(keys) > 8 else ''} ({len(keys)})"
                for what, keys in (("missing", list(missing)), ("unexpected", list(unexpected)),
                                   ("shape-mismatched", list(mismatched))) if keys]
    if problems:
        raise ProgEmuError(f"{src}: init_from weights do not match the model: " + "; ".join(problems))


def run_stage(stage: str, argv: list[str] | None = None, default_config: str | None = None,
              callbacks: list[Any] | None = None) -> Path | None:
    """Train one stage; returns the consolidated ``OUTPUT_DIR/final`` folder (on rank 0).

    ``callbacks``: extra `transformers.TrainerCallback` objects (the tests use them to probe the model)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model_args, data_args, args = parse_config(argv, default_config)
    if args.max_steps <= 0:
        raise ProgEmuError(f"max_steps must be set (> 0, not {args.max_steps}): the training data is an endless "
                           "stream (epochs reshuffle), the run ends after max_steps steps")
    if model_args.stop_at_step and not 0 < model_args.stop_at_step < args.max_steps:
        raise ProgEmuError(f"stop_at_step {model_args.stop_at_step} must lie between 0 and max_steps ({args.max_steps})")
    if model_args.lora_rank > 0:  # checked before any work: the merge at the end needs a progemu folder to start from
        from transformers import AutoConfig

        if not model_args.init_from or AutoConfig.from_pretrained(model_args.init_from).model_type != "progemu":
            raise ProgEmuError(f"lora_rank {model_args.lora_rank} adapts trained progemu weights: init_from must be a "
                               f"progemu folder or checkpoint (e.g. a converted Emu3 / ProgEmu), not "
                               f"{model_args.init_from!r}")
    set_seed(args.seed)
    sources = load_sources(data_args.shards, data_args.train_split, data_args.max_samples)
    processor, image_tokenizer = load_processor(model_args, data_args, sources[0])
    processor.max_length = data_args.max_length
    pad = processor.layout.pad_id
    train_ds = train_stream(data_args, args, processor, sources)
    eval_ds = None
    if data_args.eval_split:
        eval_ds = build_rows(load_sources(data_args.shards, data_args.eval_split, data_args.max_samples),
                             example_builder(processor, data_args, train=False), data_args.tasks,
                             data_args.max_length, data_args.packing, args.seed, args.per_device_eval_batch_size,
                             where=f"{data_args.shards} ({data_args.eval_split})")
    if args.process_index == 0:
        log.info("%s: rows of %d tokens streamed from %s shard rows (%s), %d data-loader workers per rank", stage,
                 data_args.max_length, "+".join(str(n) for n in train_ds.sizes()), data_args.shards,
                 args.dataloader_num_workers)
    set_seed(args.seed)
    model = build_model(model_args, processor, data_args.max_length, data_args.image_loss_weight,
                        data_args.text_loss_weight, image_tokenizer)
    # a model folder keeps its frozen image tokenizer in vq/ (no submodule of the trained model); peft saves only
    # the adapters' config, so a LoRA checkpoint gets the base model's config.json as well
    extras = [] if image_tokenizer is None else [lambda folder: image_tokenizer.save_pretrained(str(folder / "vq"))]
    if model_args.lora_rank > 0:
        from train.lora import add_lora

        base_config = model.config
        extras.append(lambda folder: base_config.save_pretrained(str(folder)))
        model = add_lora(model, model_args.lora_rank, model_args.lora_alpha, model_args.lora_targets)
    save_run_config(args, stage, model_args, data_args)
    trainer = make_trainer(model, args, train_ds, Collator(pad, data_args.max_length, data_args.packing),
                           eval_ds=eval_ds, processing_class=processor)
    trainer.checkpoint_extras += extras
    if model_args.stop_at_step:
        trainer.add_callback(StopAtStep(model_args.stop_at_step))
    for cb in callbacks or []:
        trainer.add_callback(cb)
    resume = resolve_resume(args)
    if resume is not None and trainer.stream_state.restore(resume, train_ds):
        log.info("rank %d: data stream resumes after %d batches (%s)", args.process_index,
                 trainer.stream_state.batches, resume)
    trainer.train(resume_from_checkpoint=resume)
    return finish(trainer, args)


def resolve_resume(args: TrainingArguments) -> str | None:
    """``--resume_from_checkpoint auto|true|1`` (``RESUME=1``): the run folder's last checkpoint, if any."""
    want = args.resume_from_checkpoint
    if not want or str(want).lower() in ("0", "false", "no", "none"):
        return None
    if str(want).lower() in ("auto", "true", "1", "yes"):
        found = last_checkpoint(args.output_dir)
        if found is None:
            log.warning("no checkpoint in %s: starting from scratch", args.output_dir)
        return found
    return str(want)


def save_run_config(args: TrainingArguments, stage: str, model_args: ModelArgs, data_args: DataArgs) -> None:
    if args.process_index == 0:
        write_json(Path(args.output_dir) / "run_config.json",
                   {"stage": stage, "model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args),
                    "deepspeed": args.deepspeed if isinstance(args.deepspeed, str) else None, "seed": args.seed})


def finish(trainer: Any, args: TrainingArguments) -> Path | None:
    """Loss curve, log history and the consolidated HF folder, written by rank 0 once every rank is done."""
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return None
    out = Path(args.output_dir)
    write_json(out / "log_history.json", trainer.state.log_history)
    plot_loss_curve(trainer.state.log_history, out / "loss_curve.png")
    ckpt = last_checkpoint(out)
    if ckpt is None:
        log.warning("no checkpoint saved (save_strategy=no): nothing to consolidate")
        return None
    from train.consolidate import consolidate

    final = consolidate(ckpt, out / "final")
    log.info("consolidated %s -> %s", ckpt, final)
    return final


# the preset a stage's command runs without --config
DEFAULT_CONFIGS: dict[str, str] = {"pretrain": "tiny-pretrain", "finetune": "tiny-finetune"}


def main(stage: str, argv: list[str] | None = None) -> None:
    """The command line of one stage (``train.pretrain`` / ``train.finetune``)."""
    run_stage(stage, argv, default_config=DEFAULT_CONFIGS[stage])
