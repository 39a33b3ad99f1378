"""Memory per GPU to fine-tune an Emu3-8B-shaped model: full ZeRO-3, ZeRO-3 with CPU offload, LoRA.

    python -m train.memory_table [--preset emu3-8b] [--vocab 184622] [--gpus 1 2 8] [--lora-rank 16] [--tokens 9216]

Model states (weights, gradients, Adam states) of full fine-tuning are DeepSpeed's own estimator
(``estimate_zero3_model_states_mem_needs``, zero_init, its 1.5 buffer factor on the CPU side). LoRA trains only the
adapters: the frozen bf16 weights (2 bytes a parameter) are partitioned by ZeRO-3 over the GPUs like the rest, the
adapters carry DeepSpeed's 18 bytes a parameter (bf16 weight and gradient, fp32 master weight and two Adam moments).
Activations (one sequence of ``--tokens`` tokens, bf16, gradient checkpointing) are an estimate: every layer's
checkpointed input, one layer recomputed, and the logits over the whole vocabulary (bf16, their fp32 copy for the
loss and its gradient), which at Emu3's 184,622-token vocabulary weigh more than all checkpoints together.
"""

from __future__ import annotations

import argparse

import torch

from train.config import ModelArgs

GB = 1024**3
LORA_TARGETS = tuple(ModelArgs.lora_targets.split(","))  # the run config's default targets


def count_params(preset: str, vocab: int, lora_rank: int) -> dict[str, int]:
    """Total and largest-layer parameters of the preset's backbone (built on the meta device), and LoRA's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from progemu.configuration_progemu import PRESETS

    cfg = LlamaConfig(vocab_size=vocab, **PRESETS[preset])
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    # DeepSpeed's model_to_params counts as this does, but tells shared weights apart by data pointer: 0 on meta
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    lora = sum(lora_rank * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS)
    return {"total": total, "largest": largest, "lora": lora, "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size, "vocab": vocab}


def activation_bytes(p: dict[str, int], tokens: int) -> int:
    """bf16 activations of one sequence under gradient checkpointing (an estimate, see the module docstring)."""
    checkpoints = p["layers"] * tokens * p["hidden"] * 2
    one_layer = tokens * (8 * p["hidden"] + 4 * p["intermediate"]) * 2  # attention in/out, q/k/v, the MLP's three
    logits = tokens * p["vocab"] * (2 + 4 + 4)  # bf16 logits, fp32 copy for the loss, its gradient
    return checkpoints + one_layer + logits


def rows(p: dict[str, int], gpus: list[int], tokens: int) -> list[tuple[str, int, float, float]]:
    """(mode, GPUs, GPU GB, CPU GB) for every mode and GPU count."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as zero3

    act = activation_bytes(p, tokens)
    out = []
    for n in gpus:
        modes = (("full, ZeRO-3", False, False), ("full, ZeRO-3 + optimizer offload", True, False),
                 ("full, ZeRO-3 + optimizer and weight offload", True, True))
        for mode, off, off_params in modes:
            cpu, gpu, _ = zero3(p["total"], p["largest"], num_gpus_per_node=n, cpu_offload=off,
                                cpu_offload_params=off_params, zero_init=True)
            out.append((mode, n, (gpu + act) / GB, cpu / GB))
        gpu = 4 * p["largest"] + (2 * p["total"] + 18 * p["lora"]) / n + act
        out.append((f"LoRA (adapters {p['lora'] / 1e6:.0f}M), ZeRO-3", n, gpu / GB, 0.0))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="emu3-8b")
    ap.add_argument("--vocab", type=int, default=184622, help="Emu3's vocabulary (text + 32,768 visual tokens)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=9216, help="tokens per GPU per micro-batch")
    a = ap.parse_args(argv)
    p = count_params(a.preset, a.vocab, a.lora_rank)
    print(f"{a.preset}: {p['total'] / 1e9:.2f}B parameters, largest layer {p['largest'] / 1e6:.0f}M, "
          f"activations of {a.tokens} tokens ~{activation_bytes(p, a.tokens) / GB:.1f} GB per GPU\n")
    print("| mode | GPUs | per GPU (GB) | CPU RAM per node (GB) | fits 80 GB |")
    print("| --- | --- | --- | --- | --- |")
    for mode, n, gpu, cpu in rows(p, a.gpus, a.tokens):
        print(f"| {mode} | {n} | {gpu:.1f} | {cpu:.0f} | {'yes' if gpu < 80 else 'no'} |")


if __name__ == "__main__":
    main()
