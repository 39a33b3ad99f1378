"""``progemu convert emu3``: an Emu3-Gen / ProgEmu checkpoint -> a progemu model folder (same ids, same logits).

    progemu convert emu3 Emu3-Gen-hf runs/emu3-gen
    progemu convert emu3 progemu/lm runs/progemu --vq progemu/vq      # Emu3's original layout, tiktoken tokenizer
"""

from __future__ import annotations

import argparse

from progemu.configuration_progemu import SEQUENCE_ORDERS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("convert", help="convert another checkpoint format into a progemu model folder",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    e = sub.add_parser("emu3", help="Emu3-Gen / ProgEmu (transformers' Emu3 format or Emu3's original layout)")
    e.add_argument("src", help="Emu3 folder: Emu3ForConditionalGeneration + Emu3Processor, or the original LM folder")
    e.add_argument("out", help="output folder (must not exist)")
    e.add_argument("--vq", help="original layout: the vision tokenizer's folder")
    e.add_argument("--tokenizer", help="folder of the text tokenizer (default: SRC): transformers' format "
                                       "(tokenizer.json) or Emu3's original one (emu3.tiktoken, converted here)")
    e.add_argument("--image-size", type=int, default=512, help="image side in px (512 -> 64x64 codes, as ProgEmu)")
    e.add_argument("--sequence-order", choices=SEQUENCE_ORDERS, default="prior_prompt",
                   help="condition order (default ProgEmu's: prior image, then prompt)")
    e.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="cast the weights (default: as stored)")
    e.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from progemu.convert.emu3 import convert_emu3

    out = convert_emu3(args.src, args.out, vq=args.vq, tokenizer=args.tokenizer, image_size=args.image_size,
                       sequence_order=args.sequence_order, dtype=args.dtype)
    print(f"wrote {out}: load it with AutoModelForCausalLM / AutoProcessor after `import progemu`")
    return 0
