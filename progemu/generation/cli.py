"""``progemu generate``: batch counterfactual (or report <-> image) generation from a manifest.

    progemu generate --model runs/finetune-tiny/final --input manifest.jsonl --out outputs/cf \\
        --batch-size 8 --cfg-image 3.0 --top-k 2048 --region auto --tau 0.1 --num-samples 2
    torchrun --standalone --nproc_per_node=8 -m progemu generate ...   # one rank per GPU, items shared out
"""

from __future__ import annotations

import argparse
import json
import sys

from progemu.generation.decoder import DecodeOptions
from progemu.generation.guidance import METHODS
from progemu.generation.pipeline import CFG_NULLS, MODES, PipelineOptions
from progemu.generation.region import REGION_SOURCES
from progemu.generation.sampling import SamplingOptions


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="batch-generate counterfactuals from a manifest (jsonl)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder (save_pretrained of model + processor + vq/)")
    p.add_argument("--input", required=True, help="manifest.jsonl: id, image, prompt [, mask, region] per line")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", choices=MODES, default="counterfactual")
    p.add_argument("--task", choices=("icg", "edit"), default="icg", help="prompt kind in counterfactual mode")
    p.add_argument("--batch-size", type=int, default=8, help="items per batch")
    p.add_argument("--num-samples", type=int, default=1, help="counterfactuals per item")
    p.add_argument("--seed", type=int, default=0)
    s = p.add_argument_group("sampling")
    s.add_argument("--greedy", action="store_true", help="argmax for the image codes")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--text-sampling", action="store_true", help="sample the text as well (default: greedy)")
    s.add_argument("--max-text-tokens", type=int, default=128)
    s.add_argument("--cfg-image", type=float, default=1.0, help="CFG scale for the image codes (1 = off)")
    s.add_argument("--cfg-text", type=float, default=1.0, help="CFG scale for the text (1 = off)")
    s.add_argument("--cfg-null", choices=CFG_NULLS, default="unconditional",
                   help="CFG's other branch: 'unconditional' drops prior and prompt (ProgEmu); 'prior' drops only the "
                        "prompt, guiding by the prompt alone (for models trained with prompt_dropout); 'both' guides "
                        "the image codes with three branches (--cfg-prior, --cfg-image)")
    s.add_argument("--cfg-prior", type=float, default=1.0,
                   help="with --cfg-null both: scale of the prior (without the prompt) over the unconditional branch; "
                        "--cfg-image then scales the prompt over the prior (for the image codes: = --cfg-null "
                        "unconditional when equal, = --cfg-null prior at 1; the text is guided against the "
                        "unconditional branch)")
    s.add_argument("--cache", choices=("filled", "static", "graph", "dynamic"), default="filled",
                   help="KV cache kind: 'filled' (fastest on CPUs), 'graph' (static cache, each one-token step "
                        "replayed from a CUDA graph: for GPUs, where a step is bound by kernel launches)")
    r = p.add_argument_group("region and guidance")
    r.add_argument("--region", choices=REGION_SOURCES, default="none",
                   help="edit-mask source for items without 'mask' / 'region'")
    r.add_argument("--tau", type=float, default=0.1, help="threshold of the automatic mask (0 = unrestricted)")
    r.add_argument("--dilate", type=int, default=1, help="grow edit masks by this many code cells")
    r.add_argument("--guidance", choices=(*METHODS, "none"), default="kl")
    r.add_argument("--paste-prior", action="store_true",
                   help="keep the prior's pixels outside the edit region (the VQ decoder alters copied codes' "
                        "pixels); "
                        "needs --region mask, anatomy or auto")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK where there are GPUs, else cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--overwrite", action="store_true", help="redo items that are already finished")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def options_from_args(args: argparse.Namespace) -> PipelineOptions:
    image = SamplingOptions(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    text = SamplingOptions(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           greedy=not args.text_sampling)
    decode = DecodeOptions(image=image, text=text, cfg_image=args.cfg_image, cfg_text=args.cfg_text,
                           max_text_tokens=args.max_text_tokens, cache=args.cache, cfg_prior=args.cfg_prior)
    return PipelineOptions(mode=args.mode, task=args.task, decode=decode, region=args.region, tau=args.tau,
                           dilate=args.dilate, guidance=args.guidance, num_samples=args.num_samples, seed=args.seed,
                           paste_prior=args.paste_prior, cfg_null=args.cfg_null)


def run(args: argparse.Namespace) -> int:
    import torch

    from progemu.errors import ProgEmuError
    from progemu.generation.batch import BatchRunner
    from progemu.generation.distributed import Group, Ranks
    from progemu.generation.pipeline import CounterfactualPipeline

    try:
        opts = options_from_args(args)
        ranks = Ranks.from_env()  # torchrun / srun + torchrun: this process's share of the manifest
        device = ranks.device(args.device)
    except (ValueError, ProgEmuError) as err:  # options that contradict each other: say which, no traceback
        print(f"progemu generate: error: {err}", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:  # the launch first (a rank without MASTER_ADDR says so at once), then the weights
        group = Group(ranks)
    except ProgEmuError as err:
        print(f"progemu generate: error: {err}", file=sys.stderr)
        return 2
    pipe = CounterfactualPipeline.from_pretrained(args.model, device=device, dtype=dtype)
    try:
        counts = BatchRunner(pipe, args.out, opts, batch_size=args.batch_size, overwrite=args.overwrite,
                             progress=not args.no_progress).run(args.input, group)
    finally:
        group.close()
    if ranks.rank == 0:
        print(json.dumps({"out": args.out, **counts}), file=sys.stderr)
    return 1 if counts["error"] else 0
