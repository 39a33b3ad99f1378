"""WordNet for METEOR without a download: Debian's ``wordnet-base`` and ``wordnet-sense-index`` (WordNet
3.0, the version of NLTK's own ``wordnet`` data) laid out where NLTK's standard loader looks.

Run: ``python -m eval.wordnet`` (``make install`` does it; ``apt-get install wordnet-base wordnet-sense-index`` first).

NLTK only reads corpora under its data path (symlinks out of it are refused), and its WordNet reader also
wants the ``lexnames`` file, which Debian's package leaves out (it ships only the man page listing it). So the
data files are copied into ``<venv>/nltk_data/corpora/wordnet`` and ``lexnames`` is written from the fixed list
of WordNet 3.0's 45 lexicographer files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

DEBIAN_DIR = Path("/usr/share/wordnet")
DATA_FILES = tuple(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("adj", "adv", "noun", "verb")) + tuple(
    f"{pos}.exc" for pos in ("adj", "adv", "noun", "verb")) + ("index.sense",)
# WordNet 3.0's lexicographer files (lexnames(5WN)): name and syntactic category (1 noun, 2 verb, 3 adj, 4 adv)
_LEXNAMES = ("adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1", "noun.artifact 1",
             "noun.attribute 1", "noun.body 1", "noun.cognition 1", "noun.communication 1", "noun.event 1",
             "noun.feeling 1", "noun.food 1", "noun.group 1", "noun.location 1", "noun.motive 1", "noun.object 1",
             "noun.person 1", "noun.phenomenon 1", "noun.plant 1", "noun.possession 1", "noun.process 1",
             "noun.quantity 1", "noun.relation 1", "noun.shape 1", "noun.state 1", "noun.substance 1", "noun.time 1",
             "verb.body 2", "verb.change 2", "verb.cognition 2", "verb.communication 2", "verb.competition 2",
             "verb.consumption 2", "verb.contact 2", "verb.creation 2", "verb.emotion 2", "verb.motion 2",
             "verb.perception 2", "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2",
             "adj.ppl 3")
INSTALL_HINT = ("METEOR needs WordNet 3.0: `apt-get install wordnet-base wordnet-sense-index` (Debian / Ubuntu), then "
                "`python -m eval.wordnet`; or, with internet, `python -m nltk.downloader wordnet`")


def default_root() -> Path:
    """``<sys.prefix>/nltk_data``: on NLTK's default search path, inside the virtual environment."""
    return Path(sys.prefix) / "nltk_data"


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<tab>name<tab>category`` per line."""
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(s.split() for s in _LEXNAMES))


def install(source: str | Path = DEBIAN_DIR, root: str | Path | None = None) -> Path:
    """Copy WordNet's data files from ``source`` to ``root/corpora/wordnet`` (atomically: a half-copied folder is
    never seen) and write ``lexnames``; returns the folder. A missing source file is an error naming it."""
    source, root = Path(source), Path(root) if root else default_root()
    missing = [str(source / f) for f in DATA_FILES if not (source / f).is_file()]
    if missing:
        raise FileNotFoundError(f"WordNet data missing: {', '.join(missing)}. {INSTALL_HINT}")
    dest = root / "corpora" / "wordnet"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=dest.parent))
    try:
        for f in DATA_FILES + ("cntlist.rev",):
            if (source / f).is_file():
                shutil.copyfile(source / f, tmp / f)
        (tmp / "lexnames").write_text(lexnames_text())
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def wordnet():
    """NLTK's WordNet reader, or None where the data is not installed."""
    try:
        import nltk
        from nltk.corpus import wordnet as wn

        nltk.data.find("corpora/wordnet")
        wn.ensure_loaded()
        return wn
    except (ImportError, LookupError, OSError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=str(DEBIAN_DIR), help="WordNet 3.0 dict folder (Debian: /usr/share/wordnet)")
    ap.add_argument("--root", help="NLTK data folder to install into (default: <venv>/nltk_data)")
    args = ap.parse_args(argv)
    try:
        print(f"WordNet installed for NLTK in {install(args.source, args.root)}")
    except (FileNotFoundError, OSError) as err:
        print(f"eval.wordnet: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
