"""Which evaluators ``eval.evaluate`` uses: the project's own (a folder, the offline default) and the field's
standard networks from local weights.

``--evaluators`` takes comma-separated items:

- ``DIR`` — the project's own evaluators (``eval.train_evaluators``): findings classifier, sex / age / race;
- ``xrv=FILE`` — torchxrayvision's DenseNet-121 (``eval.xrv``): replaces the own findings classifier for the
  prompted-finding AUROC / F1, the all-findings scores, consistency and gFID (on its features);
- ``raddino=DIR`` — RAD-DINO (``eval.raddino``): adds ``image.fid_raddino`` (CheXGenBench's FID);
- ``chexbert=FILE`` and optionally ``bert=DIR`` (default: ``bert-base-uncased`` beside FILE) — CheXbert
  (``eval.chexbert``): adds ``text.chexbert_f1`` and ``text.chexbert_f1_5``;
- ``standard=DIR`` — all three from one folder laid out as eval/README.md shows
  (``xrv-densenet121-res224-all.safetensors``, ``rad-dino/``, ``chexbert.pth``, ``bert-base-uncased/``).

    python -m eval.evaluate ... --evaluators runs/evaluators,standard=weights
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from progemu.errors import ProgEmuError

STANDARD_LAYOUT = {"xrv": "xrv-densenet121-res224-all.safetensors", "raddino": "rad-dino", "chexbert": "chexbert.pth",
                   "bert": "bert-base-uncased"}


@dataclass
class EvaluatorChoice:
    """The parsed ``--evaluators`` value."""

    own: Path | None = None
    xrv: Path | None = None
    raddino: Path | None = None
    chexbert: Path | None = None
    bert: Path | None = None

    @property
    def standard(self) -> bool:
        return any((self.xrv, self.raddino, self.chexbert))


def parse_evaluators(spec: str) -> EvaluatorChoice:
    """``DIR,xrv=FILE,raddino=DIR,chexbert=FILE,bert=DIR,standard=DIR`` -> EvaluatorChoice (paths not checked)."""
    out = EvaluatorChoice()
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if "=" not in item:
            if out.own is not None:
                raise ProgEmuError(f"--evaluators: two folders of own evaluators ({out.own}, {item})")
            out.own = Path(item)
            continue
        name, value = (s.strip() for s in item.split("=", 1))
        if name == "standard":
            for key, rel in STANDARD_LAYOUT.items():
                setattr(out, key, Path(value) / rel)
        elif name in STANDARD_LAYOUT:
            setattr(out, name, Path(value))
        else:
            raise ProgEmuError(f"--evaluators: unknown evaluator {name!r} (known: {', '.join(STANDARD_LAYOUT)}, "
                               "standard, or a folder of the project's own evaluators)")
    if out.bert is None and out.chexbert is not None:
        out.bert = out.chexbert.parent / STANDARD_LAYOUT["bert"]
    return out


@dataclass
class StandardBackends:
    """The loaded standard networks (None where not chosen)."""

    xrv: object | None = None
    raddino: object | None = None
    chexbert: object | None = None

    def specs(self) -> dict[str, dict]:
        """Entries for metrics.json's ``evaluators`` (the report's evaluator table)."""
        out = {}
        if self.xrv is not None:
            s = self.xrv.spec
            out[s.name] = {"classes": s.classes, "heldout": s.heldout, "training": s.training}
        if self.raddino is not None:
            out["rad-dino"] = {"classes": ["FID features (CLS)"], "heldout": {
                "reliable": True, "source": "RAD-DINO, pretrained; no accuracy of its own (a feature extractor)"},
                "training": {"weights": self.raddino.path}}
        if self.chexbert is not None:
            out["chexbert"] = {"classes": ["14 CheXpert observations (report text)"], "heldout": {
                "reliable": True, "source": "CheXbert, pretrained; held-out F1 as its authors publish it, not measured "
                                            "by this project"}, "training": {"weights": self.chexbert.path}}
        return out


def load_standard(choice: EvaluatorChoice, log=print) -> StandardBackends:
    """Load the chosen standard networks; a missing file is a ProgEmuError naming it and where it goes."""
    out = StandardBackends()
    if choice.xrv is not None:
        from eval.xrv import XRVEvaluator

        out.xrv = XRVEvaluator.load(choice.xrv)
        log(f"findings evaluator: torchxrayvision DenseNet-121 from {choice.xrv}")
    if choice.raddino is not None:
        from eval.raddino import RadDino

        out.raddino = RadDino.load(choice.raddino)
        log(f"FID features: RAD-DINO from {choice.raddino}")
    if choice.chexbert is not None:
        from eval.chexbert import CheXbert

        out.chexbert = CheXbert.load(choice.chexbert, choice.bert)
        log(f"report labels: CheXbert from {choice.chexbert}")
    return out
