"""Train the BPE text tokenizer (byte fallback, the package's special tokens) on report-like text.

    python -m tokenizer.train_text_tokenizer --out runs/text-tokenizer                  # SynthCXR-style texts
    python -m tokenizer.train_text_tokenizer --out runs/text-tokenizer \\
        --data data/synthcxr-128/icg-cxr:icg-cxr --data data/synthcxr-128/mimic-edit:mimic-edit
    python -m tokenizer.train_text_tokenizer --out runs/text-tokenizer-mimic --vocab-size 8192 \\
        --data /data/mimic-cxr-jpg:mimic-cxr --data /data/icg-cxr-v1:icg-cxr                  # real users

With no ``--data`` / ``--text-file`` it trains on the texts of SynthCXR pairs generated in memory (the same
generator and seed as ``progemu synth``): progression prompts, interpretations, edit instructions, reports.
Only ``train``-split records / pairs are read, so validation and test texts stay unseen.
Writes a `PreTrainedTokenizerFast` folder (tokenizer.json, tokenizer_config.json) atomically.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from progemu.tokenization import train_bpe_tokenizer


def synth_texts(n_pairs: int, seed: int = 0, size: int = 64) -> Iterator[str]:
    """The texts of SynthCXR's first ``n_pairs`` pairs (train split only): prompts, interpretations, edit
    instructions, and the FINDINGS / IMPRESSION of both reports. Rendered at 64 px, ~10 ms a pair."""
    from progemu.synth import SynthCXR

    gen = SynthCXR(size=size, seed=seed)
    for i in range(n_pairs):
        pair = gen.pair(i)
        if pair.split != "train":
            continue
        yield from (t for t in (pair.prompt, pair.interpretation, pair.instruction) if t)
        for rep in (pair.prior_report, pair.target_report):
            yield from (t for t in (rep.findings, rep.impression) if t)


def record_texts(root: str, fmt: str) -> Iterator[str]:
    """Prompts, interpretations, instructions and reports of the train-split records of one data source."""
    from progemu.data.loaders import load_records

    log = Path(tempfile.gettempdir()) / f"skipped-{fmt}-tokenizer.jsonl"
    for rec in load_records(root, fmt, skip_invalid=True, skipped_log=log):
        if rec.split != "train":
            continue
        yield from (t for t in (rec.prompt, rec.interpretation, rec.extra.get("instruction")) if t)
        for rep in (rec.prior_report, rec.target_report):
            if rep is not None:
                yield from (t for t in (rep.findings, rep.impression) if t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/text-tokenizer", help="output folder (replaced atomically)")
    ap.add_argument("--vocab-size", type=int, default=1024, help="total vocabulary incl. 8 specials + 256 bytes")
    ap.add_argument("--data", action="append", default=[], metavar="ROOT:FORMAT",
                    help="a data source (format icg-cxr, mimic-edit or mimic-cxr); repeatable")
    ap.add_argument("--text-file", action="append", default=[], help="a UTF-8 file, one text per line; repeatable")
    ap.add_argument("--synth-pairs", type=int, default=None,
                    help="SynthCXR pairs whose texts to add (default 3000 when no other source is given, else 0)")
    ap.add_argument("--keep-case", action="store_true", help="do not lower-case (default: lower-case)")
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    texts: list[str] = []
    for spec in args.data:
        root, _, fmt = spec.rpartition(":")
        if not root:
            ap.error(f"--data needs ROOT:FORMAT, got {spec!r}")
        texts += record_texts(root, fmt)
    for f in args.text_file:
        texts += [line.strip() for line in Path(f).read_text(encoding="utf-8").splitlines() if line.strip()]
    n_synth = args.synth_pairs if args.synth_pairs is not None else (0 if texts else 3000)
    texts += synth_texts(n_synth, args.seed)
    if not texts:
        ap.error("no training text: give --data, --text-file or --synth-pairs N")
    tok = train_bpe_tokenizer(texts, vocab_size=args.vocab_size, lowercase=not args.keep_case,
                              min_frequency=args.min_frequency)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tok.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"text tokenizer: {len(tok)} tokens from {len(texts)} texts -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
