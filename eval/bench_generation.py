"""Benchmark: this package's generator against transformers' reference path, same model, same inputs, one run.

    python -m eval.bench_generation --preset tiny --grid 16 --batch 8 --cfg 3.0            # CPU
    python -m eval.bench_generation --preset base --grid 32 --codebook 32768 --dtype bfloat16  # GPU

(a) reference: ``model.generate()`` with a ``prefix_allowed_tokens_fn`` grid constraint and
    ``UnbatchedClassifierFreeGuidanceLogitsProcessor`` (how ProgEmu and Emu3 generate: the unconditional
    branch is a second forward with its own cache every step);
(b) ``CounterfactualGenerator``: structural tokens appended, CFG rows in the same forward;
(c) (b) with a region edit covering a quarter of the grid (forced codes fed in chunks);
(d) (b) with transformers' ``StaticCache`` instead of the generator's ``FilledCache`` (the cache alone);
(e) (b) attending over the unconditional rows' left padding (``trim_padding=False``: the trimming alone);
(f) (b) with ``--cache graph``: a static cache and each one-token step replayed from a CUDA graph (on a GPU; on a
    CPU the same static step runs eagerly).
``--paths abf`` runs a subset. Also printed: milliseconds per decoding step (forward) of (b) and (f).
Random weights: speed does not depend on training. Prints medians over ``--repeats`` and the ratios.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor

from progemu.configuration_progemu import ProgEmuConfig
from progemu.generation.decoder import CounterfactualGenerator, DecodeOptions
from progemu.generation.sampling import SamplingOptions
from progemu.generation.stream import left_pad
from progemu.modeling_progemu import ProgEmuForCausalLM
from progemu.vocab import SPECIAL_TOKENS, VocabLayout


def build(args: argparse.Namespace) -> tuple[ProgEmuForCausalLM, VocabLayout]:
    specials = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    layout = VocabLayout(text_vocab_size=args.text_vocab, codebook_size=args.codebook, grid_h=args.grid,
                         grid_w=args.grid, special_ids=specials, size_marker_ids=[20, 21, 22])
    need = 2 * layout.image_length + args.prompt_tokens + args.text_tokens + 8
    cfg = ProgEmuConfig.from_preset(args.preset, layout=layout, max_position_embeddings=max(need, 1024))
    torch.manual_seed(0)
    model = ProgEmuForCausalLM(cfg).to(args.device, dtype=getattr(torch, args.dtype)).eval()
    return model, layout


def inputs(layout: VocabLayout, args: argparse.Namespace) -> tuple[list, list, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, layout.codebook_size, (args.batch, layout.grid_h, layout.grid_w), generator=g)
    prompts, nulls = [], []
    for i in range(args.batch):
        text = torch.randint(32, layout.text_vocab_size, (args.prompt_tokens - i % 3,), generator=g).tolist()
        prompts.append([layout.bos_id, *text, *layout.codes_to_ids(codes[i]).tolist()])  # prompt_prior order
        nulls.append([layout.bos_id])
    return prompts, nulls, codes


def reference(model, layout, prompts, nulls, args) -> int:
    """transformers generate() as ProgEmu / Emu3 do; returns the number of generated tokens."""
    ids, mask = left_pad(prompts, layout.pad_id, args.device)
    nids, nmask = left_pad(nulls, layout.pad_id, args.device)
    tmpl = layout.block_template().tolist()
    codes = list(range(layout.image_token_offset, layout.vocab_size))
    banned = set(layout.structural_ids) | {layout.pad_id, layout.bos_id}
    text = [i for i in range(layout.text_vocab_size) if i not in banned]
    start = ids.shape[1]

    def allowed(_batch_id: int, seq: torch.Tensor) -> list[int]:
        t = seq.shape[0] - start
        if t < len(tmpl):
            return [tmpl[t]] if tmpl[t] >= 0 else codes
        return text

    procs = LogitsProcessorList()
    if args.cfg != 1.0:
        procs.append(UnbatchedClassifierFreeGuidanceLogitsProcessor(args.cfg, model, nids, nmask))
    out = model.generate(ids, attention_mask=mask, logits_processor=procs, prefix_allowed_tokens_fn=allowed,
                         do_sample=True, top_k=args.top_k, max_new_tokens=layout.image_length + args.text_tokens,
                         pad_token_id=layout.pad_id, eos_token_id=layout.eos_id)
    new = out[:, start:]
    return int(((new != layout.pad_id)).sum())


def ours(gen, layout, prompts, nulls, codes, args, region: bool, phases: list | None = None,
         cache: str | None = None, trim: bool = True, steps: list | None = None) -> int:
    mask = None
    if region:  # top-left quadrant: a quarter of the grid
        mask = torch.zeros(len(prompts), layout.grid_h, layout.grid_w, dtype=torch.bool)
        mask[:, : layout.grid_h // 2, : layout.grid_w // 2] = True
    opts = DecodeOptions(image=SamplingOptions(top_k=args.top_k), text=SamplingOptions(top_k=args.top_k),
                         cfg_image=args.cfg, cfg_text=args.cfg, max_text_tokens=args.text_tokens, cache=cache or args.cache,
                         trim_padding=trim)
    out = gen.generate(prompts, null_prompts=nulls, prior_codes=codes if region else None, edit_mask=mask,
                       seeds=list(range(len(prompts))), options=opts)
    if phases is not None:
        phases.append(out.seconds["image"])
    if steps is not None:  # (seconds, forwards) of the decoding loop, the prompt pass left out
        steps.append((out.seconds["total"] - out.seconds["prefill"], out.forwards - 1))
    return len(prompts) * layout.image_length + sum(len(t) + 1 for t in out.text_ids)


def timed(fn, device: str) -> tuple[float, int, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    n = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # no per-run peak on CPU: the process's high-water mark
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return time.perf_counter() - t0, n, peak


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--codebook", type=int, default=1024)
    p.add_argument("--text-vocab", type=int, default=4096)
    p.add_argument("--prompt-tokens", type=int, default=24)
    p.add_argument("--text-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--top-k", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache", default="filled", choices=["filled", "static", "graph", "dynamic"])
    p.add_argument("--paths", default="abcdef", help="which paths to run (letters of the list above)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    model, layout = build(args)
    prompts, nulls, codes = inputs(layout, args)
    gen = CounterfactualGenerator(model, layout)
    img_full: list[float] = []
    img_region: list[float] = []
    step_full: list[tuple[float, int]] = []
    step_graph: list[tuple[float, int]] = []
    runs = {
        "(a) generate()+prefix fn+unbatched CFG": lambda: reference(model, layout, prompts, nulls, args),
        "(b) CounterfactualGenerator, full grid": lambda: ours(gen, layout, prompts, nulls, codes, args, False,
                                                               img_full, steps=step_full),
        "(c) (b) with a quarter-grid region": lambda: ours(gen, layout, prompts, nulls, codes, args, True,
                                                           img_region),
        # the KV cache alone: transformers' StaticCache attends over all its slots, ours over the filled part
        "(d) (b) with transformers' StaticCache": lambda: ours(gen, layout, prompts, nulls, codes, args, False,
                                                               cache="static"),
        "(e) (b) attending over the padding": lambda: ours(gen, layout, prompts, nulls, codes, args, False,
                                                           trim=False),
        "(f) (b) with CUDA-graph steps": lambda: ours(gen, layout, prompts, nulls, codes, args, False,
                                                      cache="graph", steps=step_graph),
    }
    runs = {name: fn for name, fn in runs.items() if name[1] in args.paths}
    for name, fn in runs.items():  # warm-up (kernels, allocator)
        t0 = time.perf_counter()
        fn()
        print(f"  warm-up {name}: {time.perf_counter() - t0:.2f} s", flush=True)
    for kept in (img_full, img_region, step_full, step_graph):
        kept.clear()
    res: dict[str, list] = {name: [] for name in runs}
    for rep in range(args.repeats):  # interleaved, so a busy machine slows every path alike
        for name, fn in runs.items():
            res[name].append(timed(fn, args.device))
            print(f"  repeat {rep + 1}/{args.repeats} {name}: {res[name][-1][0]:.2f} s", flush=True)
    rows = {}
    for name, rs in res.items():
        sec = statistics.median(r[0] for r in rs)
        rows[name] = (sec, statistics.median(r[1] / r[0] for r in rs), sec / args.batch, max(r[2] for r in rs))
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model {args.preset} ({n_params:.1f}M params, {args.dtype}, {args.device}), grid {args.grid}x{args.grid}, "
          f"codebook {args.codebook}, batch {args.batch}, CFG {args.cfg}, text <= {args.text_tokens} tokens, "
          f"median of {args.repeats}")
    print(f"{'path':42s} {'s/batch':>9s} {'tok/s':>9s} {'s/cf':>8s} {'peak MiB':>9s} {'speed-up':>9s}")
    base = rows[next(iter(rows))][0]
    for name, (sec, tps, spc, peak) in rows.items():
        print(f"{name:42s} {sec:9.2f} {tps:9.0f} {spc:8.3f} {peak:9.0f} {base / sec:8.2f}x")
    for name, kept in (("(b)", step_full), ("(f)", step_graph)):
        if kept:
            print(f"{name}: {1e3 * statistics.median(sec / max(n, 1) for sec, n in kept):.2f} ms per decoding step "
                  f"({kept[0][1]} steps a batch, median)")
    if img_full and img_region:
        full, region = rows["(b) CounterfactualGenerator, full grid"][0], rows["(c) (b) with a quarter-grid region"][0]
        print(f"region (quarter grid) vs full grid: {full / region:.2f}x faster in all, "
              f"{statistics.median(img_full) / statistics.median(img_region):.2f}x in the image phase")


if __name__ == "__main__":
    main()
