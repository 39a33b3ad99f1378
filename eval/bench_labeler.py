"""The rule labeler's checks: its agreement with another labeler version on SynthCXR texts, and its accuracy on the
table of realistic report sentences (tests/findings_table.py). Run as a file from the repository root, with
PYTHONPATH choosing which ``eval.labeler`` is measured:

    PYTHONPATH=. python eval/bench_labeler.py dump new.json          # labels of SynthCXR texts (2 seeds x 300 pairs)
    PYTHONPATH=OLD_CHECKOUT python eval/bench_labeler.py dump old.json
    PYTHONPATH=. python eval/bench_labeler.py compare old.json new.json
    PYTHONPATH=OLD_CHECKOUT python eval/bench_labeler.py table        # rows whose labels are all right
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections import Counter
from pathlib import Path

KINDS = ("prompt", "instruction", "interpretation", "target report", "prior report")


def dump(out: str, seeds: tuple[int, ...] = (0, 5), pairs: int = 300) -> None:
    from eval.labeler import label_text
    from progemu.synth import SynthCXR

    rows = []
    for seed in seeds:
        gen = SynthCXR(size=64, seed=seed)
        for i in range(pairs):
            p = gen.pair(i)
            texts = (p.prompt, p.instruction, p.interpretation,
                     f"{p.target_report.findings} {p.target_report.impression}",
                     f"{p.prior_report.findings} {p.prior_report.impression}")
            for kind, text in zip(KINDS, texts):
                r = label_text(text)
                rows.append({"kind": kind, "text": text, "findings": r.findings, "changes": r.changes,
                             "global": r.global_change})
    Path(out).write_text(json.dumps(rows))
    print(f"{len(rows)} texts -> {out}")


def compare(a: str, b: str) -> None:
    old, new = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    if [r["text"] for r in old] != [r["text"] for r in new]:
        raise SystemExit("the two dumps hold different texts")
    per, what = Counter(), Counter()
    for o, n in zip(old, new):
        same = all(o[k] == n[k] for k in ("findings", "changes", "global"))
        per[o["kind"], same] += 1
        for k in ("findings", "changes", "global"):
            if o[k] != n[k]:
                what[k if k != "global" else f"global {o[k]} -> {n[k]}"] += 1
    print("| texts | identical labels |\n|---|---|")
    for kind in KINDS:
        print(f"| {kind} | {per[kind, True]} / {per[kind, True] + per[kind, False]} |")
    print(f"| all | {sum(v for (_, s), v in per.items() if s)} / {len(old)} |")
    print("differences:", dict(what) or "none")


def table() -> None:
    from eval.labeler import label_text

    path = Path(__file__).resolve().parents[1] / "tests" / "findings_table.py"
    spec = importlib.util.spec_from_file_location("findings_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    per = Counter()
    for rule, text, want in mod.ROWS:
        per[rule, label_text(text).findings == want] += 1
    print("| rule | rows right |\n|---|---|")
    for rule in mod.TABLE:
        print(f"| {rule} | {per[rule, True]} / {per[rule, True] + per[rule, False]} |")
    print(f"| all | {sum(v for (_, ok), v in per.items() if ok)} / {len(mod.ROWS)} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("dump", "compare", "table"))
    ap.add_argument("files", nargs="*")
    args = ap.parse_args(argv)
    if args.command == "dump":
        dump(*args.files[:1])
    elif args.command == "compare":
        compare(*args.files[:2])
    else:
        table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
