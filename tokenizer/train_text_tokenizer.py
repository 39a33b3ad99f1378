"""Train the BPE text tokenizer (byte fallback, the package's special tokens) on report-like text.

    python -m tokenizer.train_text_tokenizer --out runs/text-tokenizer                  # SynthCXR-style texts
    python -m tokenizer.train_text_tokenizer --out runs/text-tokenizer \\
        --data data/synthcxr-128/icg-cxr:icg-cxr --data data/synthcxr-128/mimic-edit:mimic-edit
    python -m tokenizer.train_text_tokenizer --out runs/text-tokenizer-mimic --vocab-size 8192 \\
        --data /data/mimic-cxr-jpg:mimic-cxr --data /data/icg-cxr-v1:icg-cxr                  # real users

With no ``--data`` / ``--text-file`` it trains on texts written from SynthCXR's finding vocabulary
(`progemu.synth.vocabulary`): progression prompts, interpretations, edit instructions and short reports.
Only ``train``-split records of ``--data`` sources are read, so validation and test texts stay unseen.
Writes a `PreTrainedTokenizerFast` folder (tokenizer.json, tokenizer_config.json) atomically.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from progemu.tokenization import train_bpe_tokenizer

_CHANGE = {"new": "{sev} {name} has developed in the {loc}.", "resolved": "The {name} in the {loc} has resolved.",
           "worsened": "The {name} in the {loc} has worsened to {sev}.",
           "improved": "The {name} in the {loc} has improved to {sev}.",
           "unchanged": "Stable {sev} {name} in the {loc}."}
_NEGATIVES = ("No pneumothorax.", "No pleural effusion.", "No focal consolidation.", "No pulmonary edema.",
              "The cardiomediastinal silhouette is within normal limits.", "No acute osseous abnormality.",
              "Lungs are clear.", "Heart size is normal.")


def synth_texts(n: int, seed: int = 0) -> Iterator[str]:
    """``n`` report-like texts in SynthCXR's vocabulary (prompts, interpretations, instructions, reports)."""
    from progemu.synth.vocabulary import DEVICES, FINDINGS, SEVERITIES, SIDES, location_phrase

    rng = random.Random(seed)
    for _ in range(n):
        key = rng.choice(list(FINDINGS))
        spec = FINDINGS[key]
        side = rng.choice(SIDES) if spec.lateral else None
        zone = rng.choice(spec.zones) if spec.zones else None
        loc = location_phrase(key, side, zone)
        sev_i = rng.randrange(1, len(SEVERITIES))
        sev, size_word = SEVERITIES[sev_i], spec.size_words[sev_i - 1]
        name = rng.choice(spec.synonyms)
        change = rng.choice(list(_CHANGE))
        kind = rng.randrange(5)
        if kind == 0:
            yield _CHANGE[change].format(sev=sev.capitalize() if change == "new" else sev, name=name, loc=loc)
        elif kind == 1:
            yield (f"There is a {size_word} {name} in the {loc}, which was not present before, "
                   f"indicating {change} {spec.name}. " + rng.choice(_NEGATIVES))
        elif kind == 2:
            op = rng.choice([f"Add the finding of {spec.name}", f"Remove the finding of {spec.name}",
                             f"Change the level of {spec.name} from {SEVERITIES[max(1, sev_i - 1)]} to {sev}"])
            yield op + (f" in the {loc}" if rng.random() < 0.5 else "")
        elif kind == 3:
            extra = f" {rng.choice(DEVICES).capitalize()} in place." if rng.random() < 0.2 else ""
            yield (f"FINDINGS: {size_word.capitalize()} {name} in the {loc}. {rng.choice(_NEGATIVES)}{extra} "
                   f"IMPRESSION: {sev.capitalize()} {spec.name}.")
        else:
            sents = rng.sample(_NEGATIVES, 3)
            yield " ".join(sents) + f" Compared to the prior study from {rng.randrange(1, 29)} days earlier."


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
    ap.add_argument("--synth-texts", type=int, default=None,
                    help="SynthCXR-style texts to add (default 20000 when no other source is given, else 0)")
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
    n_synth = args.synth_texts if args.synth_texts is not None else (0 if texts else 20000)
    texts += synth_texts(n_synth, args.seed)
    if not texts:
        ap.error("no training text: give --data, --text-file or --synth-texts N")
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
