"""The training engine: transformers' Trainer driving DeepSpeed ZeRO (``TrainingArguments.deepspeed``).

Why the HF Trainer rather than ``deepspeed.initialize`` by hand: it fills the DeepSpeed JSON's ``"auto"``
fields from one set of arguments, saves and resumes ZeRO checkpoints together with the scheduler, the RNG
states of every rank, and brings
``report_to`` (TensorBoard, W&B), the progress bar and gradient accumulation. We override only the loss
(image and text cross-entropy, weighted and logged separately), the log (tokens per second) and the training
data loader: our stream (`train.data.PackedStream`) is already split by rank, and resumes from its own saved
position (`train.data.StreamState`) instead of replaying the batches before the checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from progemu.io import write_json_atomic
from train.data import PackedStream, StreamState

log = logging.getLogger("progemu.train")


class ProgEmuTrainer(Trainer):
    """A Trainer that logs the model's image and text losses separately, and real tokens per second.

    The loss itself is the model's (``ProgEmuForCausalLM``: weighted image/text cross-entropy), normalised by
    the Trainer's ``num_items_in_batch`` so that gradient accumulation and several ranks give the same loss as
    one large batch.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # image CE sum, image tokens, text CE sum, text tokens, real input tokens (since the last log)
        self._acc: torch.Tensor | None = None
        self._last_log_time: float | None = None
        self.stream_state: StreamState | None = None
        # writers of a checkpoint's further parts, called with its folder before the Trainer saves (rank 0)
        self.checkpoint_extras: list[Callable[[Path], None]] = []
        if isinstance(self.train_dataset, PackedStream):
            ds = self.train_dataset
            self.stream_state = StreamState(self.args.process_index, self.args.world_size,
                                            self.args.dataloader_num_workers, ds.sizes(), ds.seed)

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """Our stream as it is: accelerate's preparation would make every rank read the whole stream and keep
        every world-th batch; the stream already gives each rank (and worker) its own rows. The Trainer moves
        the batches to the device (``_prepare_inputs``)."""
        ds = self.train_dataset
        if not isinstance(ds, PackedStream):
            return super().get_train_dataloader()
        return stream_loader(ds, self.args, self.data_collator, self._train_batch_size)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """What a resume or `train.consolidate` needs beside the Trainer's own files first (each rank's data-stream
        position ``data_state/rank{R}.json``; on rank 0 ``checkpoint_extras``: the image tokenizer's ``vq/``, a LoRA
        run's base ``config.json``), then the Trainer's checkpoint, whose ``trainer_state.json`` comes last: a
        checkpoint complete enough to resume from has them all."""
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.stream_state is not None:
            self.stream_state.save(folder)
        if self.is_world_process_zero():
            for write in self.checkpoint_extras:
                write(folder)
        super()._save_checkpoint(model, trial)

    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        if isinstance(self.train_dataset, PackedStream):  # (the run config also sets ignore_data_skip)
            return dataloader  # the stream starts where the checkpoint's data state says: nothing to skip
        return super().get_resumed_dataloader(dataloader, num_batches)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        for batch in batches:
            state = batch.pop("data_state", None)
            if state is not None and self.stream_state is not None:
                self.stream_state.record(state)
        return batches, num_items

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        num_tokens = inputs.pop("num_tokens", None)
        inputs["use_cache"] = False
        loss, out = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and getattr(out, "image_loss", None) is not None:
            with torch.no_grad():  # kept on the device: no host sync per step
                n_tok = torch.as_tensor(inputs["input_ids"].numel() if num_tokens is None else num_tokens,
                                        device=loss.device)
                n_img, n_txt = out.num_image_tokens.to(loss.device), out.num_text_tokens.to(loss.device)
                stats = torch.stack([out.image_loss.to(loss.device) * n_img, n_img,
                                     out.text_loss.to(loss.device) * n_txt, n_txt, n_tok]).double()
                self._acc = stats if self._acc is None else self._acc + stats
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "eval_loss" not in logs:
            # every rank reaches this point together (the Trainer gathers the loss just before)
            acc = torch.zeros(5, dtype=torch.float64, device=self.args.device) if self._acc is None else self._acc
            acc = self.accelerator.reduce(acc.to(self.args.device), reduction="sum").cpu()
            self._acc = None
            now = time.perf_counter()
            if acc[1] > 0:
                logs["image_loss"] = round(float(acc[0] / acc[1]), 4)
            if acc[3] > 0:
                logs["text_loss"] = round(float(acc[2] / acc[3]), 4)
            if self._last_log_time is not None:
                logs["tokens_per_second"] = round(float(acc[4]) / max(now - self._last_log_time, 1e-9), 1)
            self._last_log_time = now
        super().log(logs, start_time)

    def reset_throughput_clock(self) -> None:
        self._last_log_time = time.perf_counter()


def stream_loader(stream: PackedStream, args: TrainingArguments, collator: Any,
                  batch_size: int | None = None) -> torch.utils.data.DataLoader:
    """The training data loader of a rank: ``dataloader_num_workers`` processes, each its own part of the stream."""
    workers = args.dataloader_num_workers
    return torch.utils.data.DataLoader(
        stream, batch_size=batch_size or args.per_device_train_batch_size, collate_fn=collator, num_workers=workers,
        pin_memory=args.dataloader_pin_memory, persistent_workers=args.dataloader_persistent_workers and workers > 0,
        prefetch_factor=args.dataloader_prefetch_factor if workers else None,
        multiprocessing_context=args.dataloader_multiprocessing_context if workers else None)


class StopAtStep(TrainerCallback):
    """Save and end the run at ``step`` of a longer schedule (``stop_at_step``): what a run cut off right after
    that step's checkpoint leaves, made repeatable (the demo model's stage 7 ended so on a GPU slot)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


class ThroughputClock(TrainerCallback):
    """Starts the tokens/s clock when training starts (not when the Trainer was built)."""

    def __init__(self, trainer: ProgEmuTrainer):
        self.trainer = trainer

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.reset_throughput_clock()


def attn_implementation(requested: str) -> str:
    """``auto``: FlashAttention 2 where installed on a GPU, else PyTorch SDPA."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def make_trainer(model: torch.nn.Module, args: TrainingArguments, train_ds: PackedStream, collator: Any,
                 eval_ds: Any = None, processing_class: Any = None) -> ProgEmuTrainer:
    if args.gradient_checkpointing:
        # non-reentrant checkpointing works with ZeRO-3 and with frozen embeddings
        args.gradient_checkpointing_kwargs = args.gradient_checkpointing_kwargs or {"use_reentrant": False}
    trainer = ProgEmuTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             data_collator=collator, processing_class=processing_class)
    trainer.add_callback(ThroughputClock(trainer))
    return trainer


def last_checkpoint(output_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def plot_loss_curve(log_history: list[dict[str, Any]], out: str | Path) -> Path | None:
    """Total, image and text training loss against the step, as a PNG (rank 0 calls this)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    drawn = False
    for key, style in (("loss", "-"), ("image_loss", "--"), ("text_loss", ":"), ("eval_loss", "-o")):
        pts = [(h["step"], h[key]) for h in log_history if key in h and math.isfinite(h[key])]
        if pts:
            ax.plot(*zip(*pts), style, label=key.replace("_", " "))
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def write_json(path: str | Path, obj: Any) -> None:
    write_json_atomic(path, obj)
