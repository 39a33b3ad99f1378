"""Train the chest X-ray VQ tokenizer (ProgEmuVQModel).

Run:
    python -m tokenizer.train_vq --preset tiny-base --out runs/vq-tiny-base   # SynthCXR 128 px, plain: ~15 min on 2 CPU cores
    python -m eval.train_evaluators --data data/synthcxr-128 --out runs/vq-perceptual --seed 1   # perceptual nets
    python -m tokenizer.train_vq --preset tiny --out runs/vq-tiny   # + perceptual loss from tiny-base: ~28 min
    torchrun --nproc_per_node=8 -m tokenizer.train_vq --preset base --data DIR --out runs/vq-base   # GPUs, bf16
    (multi-node: torchrun --nnodes=N --node_rank=R --rdzv_endpoint=HOST:PORT ...; same flags)

Loss: L1 (+ optional L2) + SSIM + image-gradient L1 + the quantizer's commitment loss; optionally the perceptual
loss of project-trained CXR classifiers (``tokenizer.perceptual``, from ``perceptual_start``) and a patch-GAN
(hinge) after ``gan_start`` steps. Codebook usage (share used, perplexity) is logged; dead VQ codes are restarted
by vector-quantize-pytorch (``vq_threshold_ema_dead_code``). A checkpoint in ``OUT/checkpoint/`` is written every
``save_every`` steps and the run resumes from it at the exact step (same data order). At the end ``OUT/`` holds the
``save_pretrained`` folder, ``metrics.json`` (PSNR/SSIM/usage on validation images) and ``train_log.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from progemu.io import write_json_atomic
from tokenizer.vq_data import SourceDataset, StepSampler, make_source
from tokenizer.vq_losses import CodeUsage, PatchDiscriminator, gradient_loss, hinge_d_loss, hinge_g_loss, ssim
from tokenizer.vq_presets import VQTrainConfig, get_preset


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world, device) under torchrun (NCCL on GPUs, gloo on CPUs), else (0, 1, cuda or cpu)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def lr_at(step: int, cfg: VQTrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def save_checkpoint(out: Path, step: int, model, disc, opt, opt_d, cfg: VQTrainConfig) -> None:
    """OUT/checkpoint/{model/, disc.safetensors, state.pt}; written to a temp folder, then swapped in."""
    tmp, final, old = out / "checkpoint.tmp", out / "checkpoint", out / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "model")
    if disc is not None:
        save_file(disc.state_dict(), str(tmp / "disc.safetensors"))
    state = {"step": step, "opt": opt.state_dict(), "opt_d": opt_d.state_dict() if opt_d else None,
             "cpu_rng": torch.get_rng_state()}
    torch.save(state, tmp / "state.pt")
    (tmp / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def build(cfg: VQTrainConfig, resume_dir: Path | None, device: torch.device):
    """The model (fresh or from the checkpoint), discriminator, optimisers and the step to start at."""
    from progemu.configuration_vq import ProgEmuVQConfig
    from progemu.modeling_vq import ProgEmuVQModel

    if resume_dir is not None:
        model = ProgEmuVQModel.from_pretrained(resume_dir / "model").train()
    elif cfg.init:  # fine-tune a trained tokenizer: its shape wins over the preset's
        if not (Path(cfg.init) / "config.json").is_file():
            raise FileNotFoundError(f"{cfg.init}: no trained VQ to start from (train it first, e.g. "
                                    f"python -m tokenizer.train_vq --preset tiny-base --out {cfg.init})")
        model = ProgEmuVQModel.from_pretrained(cfg.init).train()
    else:
        model = ProgEmuVQModel(ProgEmuVQConfig(**cfg.model))
    model.to(device)
    disc = PatchDiscriminator().to(device) if cfg.gan_weight > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.5, 0.9), weight_decay=cfg.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9)) if disc is not None else None
    step = 0
    if resume_dir is not None:
        state = torch.load(resume_dir / "state.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(state["opt"])
        if disc is not None and (resume_dir / "disc.safetensors").exists():
            disc.load_state_dict(load_file(str(resume_dir / "disc.safetensors"), device=str(device)))
            if state["opt_d"] is not None:
                opt_d.load_state_dict(state["opt_d"])
        step = int(state["step"])
        rng = state["cpu_rng"]
    else:
        rng = None
    return model, disc, opt, opt_d, step, rng


def train(cfg: VQTrainConfig, out: str | Path, resume: bool = True, bf16: bool | None = None,
          progress: bool = True, stop_at: int | None = None) -> dict:
    """Run (or resume) training into ``out``; returns the final validation metrics (rank 0) or {}.

    ``stop_at``: leave after that step with a checkpoint (a time-sliced job; the next call resumes there).
    """
    out = Path(out)
    rank, world, device = setup_distributed()
    torch.manual_seed(cfg.seed + rank)
    bf16 = device.type == "cuda" if bf16 is None else bf16
    ckpt = out / "checkpoint"
    model, disc, opt, opt_d, start, rng = build(cfg, ckpt if resume and (ckpt / "state.pt").exists() else None, device)
    raw = model
    if world > 1:  # the VQ codebook syncs its own EMA buffers across ranks (sync_codebook), so no broadcast
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        if disc is not None:
            disc = DDP(disc, device_ids=[device.index] if device.type == "cuda" else None)
    source = make_source(cfg.data, cfg.image_size, cfg.seed, cfg.data_format, "train")
    finite = cfg.data not in ("synth", "procedural")  # a folder or .npy pool: shuffled epochs
    sampler = StepSampler(len(source), cfg.batch_size, start, cfg.steps, rank, world, cfg.seed, finite)
    loader = DataLoader(SourceDataset(source), batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda", drop_last=True)
    usage = CodeUsage(raw.codebook_size)
    perceptual = None
    if cfg.perceptual and cfg.perceptual_weight > 0:
        from tokenizer.perceptual import ClassifierFeatureLoss

        perceptual = ClassifierFeatureLoss(cfg.perceptual).to(device)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        log = (out / "train_log.jsonl").open("a")
    bar = tqdm(total=cfg.steps, initial=start, disable=rank != 0 or not progress, desc="vq", dynamic_ncols=True)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    step = start
    batches = iter(loader)  # creating the iterator draws from the RNG: restore the saved state after it
    if rng is not None:
        torch.set_rng_state(rng)
    for x in batches:
        x = x.to(device, non_blocking=True)  # (B, 1, S, S) in [-1, 1]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        model.train()
        with amp:
            o = model(x)
        rec = o.reconstruction.float()
        terms = {"l1": (rec - x).abs().mean(), "ssim": 1 - ssim(rec, x), "grad": gradient_loss(rec, x),
                 "aux": o.aux_loss.float()}
        loss = cfg.l1_weight * terms["l1"] + cfg.ssim_weight * terms["ssim"] + cfg.grad_weight * terms["grad"]
        loss = loss + terms["aux"]
        if perceptual is not None and step >= cfg.perceptual_start:
            terms["perc"] = perceptual(rec, x)
            loss = loss + cfg.perceptual_weight * terms["perc"]
        if cfg.l2_weight:
            terms["l2"] = ((rec - x) ** 2).mean()
            loss = loss + cfg.l2_weight * terms["l2"]
        use_gan = disc is not None and step >= cfg.gan_start
        if use_gan:
            with amp:
                terms["g"] = hinge_g_loss(disc(rec).float())
            loss = loss + cfg.gan_weight * terms["g"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
        opt.step()
        if use_gan:
            with amp:
                # one forward over real and fake: DDP expects one forward per backward
                logits = disc(torch.cat([x, rec.detach()])).float()
                terms["d"] = hinge_d_loss(logits[: len(x)], logits[len(x) :])
            opt_d.zero_grad(set_to_none=True)
            terms["d"].backward()
            opt_d.step()
        usage.update(o.codes)
        step += 1
        if rank == 0:
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {"step": step, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()},
                       "lr": lr_at(step - 1, cfg), **usage.stats()}
                usage.reset()
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", l1=f"{row['l1']:.4f}", use=f"{row['usage']:.2f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                log.write(json.dumps({"step": step, "eval": validate(raw, cfg, device)}) + "\n")
        if step % cfg.save_every == 0 or step == cfg.steps or step == stop_at:
            if rank == 0:
                save_checkpoint(out, step, raw, getattr(disc, "module", disc), opt, opt_d, cfg)
            if world > 1:
                dist.barrier()
        if step == stop_at:
            break
    bar.close()
    if step < cfg.steps:  # stopped early: the checkpoint holds the run
        if rank == 0:
            log.close()
        return {}
    metrics: dict = {}
    if rank == 0:
        raw.eval().save_pretrained(out)
        metrics = {"step": step, **validate(raw, cfg, device, out)}
        # written last and atomically: `train.launch` takes it as "finished"
        write_json_atomic(out / "metrics.json", metrics, indent=1)
        log.close()
    if world > 1:
        dist.barrier()
    return metrics


def validate(model, cfg: VQTrainConfig, device: torch.device, folder: Path | None = None) -> dict:
    """PSNR / SSIM / codebook usage on ``val_images`` held-out images (the model is left in train mode); with
    ``folder`` (the saved model) also its config's validation figures, which generation compares inputs against."""
    from tokenizer.vq_eval import evaluate, load_images, write_validation

    model.eval()
    data = "synth" if cfg.data.endswith(".npy") else cfg.data  # a .npy pool is SynthCXR train images
    images = load_images(data, cfg.image_size, cfg.val_images, cfg.seed, cfg.data_format)
    result = evaluate(model, images)
    if folder is not None:
        name = "SynthCXR" if data in ("synth", "procedural") else f"{data} ({cfg.data_format})"
        write_validation(model, folder, images, f"{name}, {cfg.image_size} px, validation images")
    model.train()
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--out", default=None, help="output folder (default runs/vq-PRESET)")
    ap.add_argument("--data", default=None, help='"synth", "procedural" or a data-set folder')
    ap.add_argument("--format", dest="data_format", default=None, help="loader format of --data (or 'images')")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (SynthCXR is generated on CPU)")
    ap.add_argument("--quantizer", default=None, help="override the preset's quantizer: vq, fsq, lfq")
    ap.add_argument("--model-json", default=None, help="JSON dict of ProgEmuVQConfig overrides")
    ap.add_argument("--perceptual", default=None, help="folder of trained CXR classifiers for the perceptual loss")
    ap.add_argument("--perceptual-weight", type=float, default=None)
    ap.add_argument("--init", default=None, help="start from this trained VQ folder (fine-tune)")
    ap.add_argument("--warmup-steps", type=int, default=None)
    ap.add_argument("--stop-at", type=int, default=None, help="stop after this step with a checkpoint (resume later)")
    ap.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/checkpoint exists")
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: on GPUs)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    keys = ("data", "data_format", "steps", "batch_size", "lr", "num_workers", "perceptual", "perceptual_weight", "init",
            "warmup_steps")
    changes = {k: getattr(args, k) for k in keys
               if getattr(args, k) is not None}
    model = json.loads(args.model_json) if args.model_json else {}
    if args.quantizer:
        model["quantizer"] = args.quantizer
    if model and (cfg.init or "init" in changes):  # the init folder's config decides the shape
        raise SystemExit("--quantizer / --model-json cannot change a tokenizer fine-tuned from --init")
    cfg = cfg.replace(model=model, **changes)
    bf16 = {"auto": None, "on": True, "off": False}[args.bf16]
    metrics = train(cfg, args.out or f"runs/vq-{args.preset}", resume=not args.no_resume, bf16=bf16,
                    stop_at=args.stop_at)
    if metrics:
        print(json.dumps(metrics))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
