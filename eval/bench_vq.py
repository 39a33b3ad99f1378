"""Benchmark the VQ tokenizer: encode and decode images per second at 128 and 256 px (medians of repeats).

Run: ``python -m eval.bench_vq --model runs/vq-tiny`` (``--device cuda``, ``--batch 16``, ``--repeats 5``);
without ``--model`` it times an untrained model of the tiny preset's shape. Prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def bench(model, size: int, batch: int, repeats: int, device: torch.device, bf16: bool = False) -> dict[str, float]:
    """Median images/s of ``encode`` and of ``decode`` for (batch, 1, size, size) random images."""
    x = torch.rand(batch, 1, size, size, device=device) * 2 - 1
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    with amp:
        codes = model.encode(x)
        model.decode(codes)  # warm-up (kernels, allocator)
    enc, dec = [], []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        with amp:
            codes = model.encode(x)
        _sync(device)
        enc.append(batch / (time.perf_counter() - t))
        t = time.perf_counter()
        with amp:
            model.decode(codes)
        _sync(device)
        dec.append(batch / (time.perf_counter() - t))
    return {"size": size, "grid": codes.shape[-1], "encode_img_s": statistics.median(enc),
            "decode_img_s": statistics.median(dec)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="save_pretrained folder (default: untrained tiny preset)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from progemu.configuration_vq import ProgEmuVQConfig
    from progemu.modeling_vq import ProgEmuVQModel

    if args.model:
        model = ProgEmuVQModel.from_pretrained(args.model)
    else:
        from tokenizer.vq_presets import get_preset

        model = ProgEmuVQModel(ProgEmuVQConfig(**get_preset("tiny").model))
    device = torch.device(args.device)
    model = model.to(device).eval()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; batch {args.batch}; medians of {args.repeats}; bf16={args.bf16}")
    print("| size | grid | encode img/s | decode img/s |\n|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        r = bench(model, size, args.batch, args.repeats, device, args.bf16)
        print(f"| {r['size']} | {r['grid']}x{r['grid']} | {r['encode_img_s']:.1f} | {r['decode_img_s']:.1f} |")


if __name__ == "__main__":
    main()
