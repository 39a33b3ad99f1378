"""The project's own small chest X-ray classifier (``SmallCXRNet``) and its saved form (``Evaluator``): one CNN
trained for one task each (multi-label findings, or one attribute such as sex / age group / race), saved as
``<name>.safetensors`` + ``<name>.json``. The evaluation scores images with it (``eval/``, which trains it:
``python -m eval.train_evaluators``) and the VQ tokenizer's perceptual loss compares its activations
(``tokenizer.perceptual``), so it lives in the package both of them import.

The findings classifier's penultimate features (global-average-pooled, (N, 8*width)) feed gFID. Every
evaluator carries its held-out accuracy in its JSON; ``Evaluator.load`` refuses one without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from progemu.errors import ProgEmuError
from progemu.io import write_atomic, write_json_atomic


class SmallCXRNet(nn.Module):
    """A strided stem, then four stages of a 3x3 conv and a strided 3x3 conv (BatchNorm, ReLU); global
    average pooling; a linear head. The stem halves the input first because the full-resolution stage
    would cost most of the compute (128 px: 0.3 M parameters, ~25 M multiply-adds per image)."""

    def __init__(self, n_out: int, width: int = 16):
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True)]

        layers: list[nn.Module] = block(1, width, 2)
        c_in = width
        for i in range(4):
            c = width * 2**i
            layers += block(c_in, c, 1) + block(c, c, 2)
            c_in = c
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(c_in, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [-1, 1] -> (B, 8*width) pooled penultimate features."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))  # (B, n_out) logits


@dataclass
class EvaluatorSpec:
    """What an evaluator predicts and how well (``heldout``: metrics on data it never saw)."""

    name: str
    kind: Literal["multilabel", "multiclass"]
    classes: list[str]
    image_size: int
    width: int = 16
    heldout: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    thresholds: list[float] = field(default_factory=list)  # per class decision threshold (multilabel)


def to_batch(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, H, W) [0, 1] arrays -> (N, 1, size, size) float tensor in [-1, 1] (bilinear resize if needed)."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None]
    if x.shape[-1] != size or x.shape[-2] != size:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x * 2 - 1


class Evaluator:
    """A trained network plus its spec; predictions on [0, 1] grayscale arrays of any size."""

    def __init__(self, spec: EvaluatorSpec, net: SmallCXRNet | None = None):
        self.spec = spec
        self.net = net or SmallCXRNet(len(spec.classes), spec.width)
        self.net.eval()

    @torch.no_grad()
    def _run(self, images: np.ndarray, fn: str, batch: int = 128) -> np.ndarray:
        self.net.eval()
        out = [getattr(self.net, fn)(to_batch(images[i:i + batch], self.spec.image_size)).float()
               for i in range(0, len(images), batch)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.spec.classes)), np.float32)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(N, C) probabilities: sigmoid per finding (multilabel) or softmax over classes (multiclass)."""
        logits = torch.as_tensor(self._run(images, "forward"))
        return (logits.sigmoid() if self.spec.kind == "multilabel" else logits.softmax(-1)).numpy()

    def threshold_array(self) -> np.ndarray:
        """(C,) decision thresholds (0.5 where none were calibrated)."""
        t = self.spec.thresholds or [0.5] * len(self.spec.classes)
        return np.asarray(t, np.float64)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, D) penultimate features (gFID)."""
        return self._run(images, "features")

    def save(self, folder: str | Path) -> Path:
        """Write ``<name>.safetensors`` and ``<name>.json`` atomically; returns the JSON path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        st, js = folder / f"{self.spec.name}.safetensors", folder / f"{self.spec.name}.json"
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        write_atomic(st, lambda tmp: save_file(state, str(tmp)))
        return write_json_atomic(js, asdict(self.spec))  # written last: a folder with the JSON is complete

    @classmethod
    def load(cls, folder: str | Path, name: str) -> Evaluator:
        """Load ``name`` from ``folder``; an evaluator without held-out metrics is refused."""
        js = Path(folder) / f"{name}.json"
        if not js.is_file():
            raise ProgEmuError(f"{js}: evaluator not found (train it: python -m eval.train_evaluators)")
        try:
            spec = EvaluatorSpec(**json.loads(js.read_text()))
        except (ValueError, TypeError) as err:
            raise ProgEmuError(f"{js}: not an evaluator spec ({err})") from err
        if not spec.heldout:
            raise ProgEmuError(f"{js}: evaluator has no held-out accuracy; it is not used")
        net = SmallCXRNet(len(spec.classes), spec.width)
        net.load_state_dict(load_file(str(js.with_suffix(".safetensors"))))
        return cls(spec, net)


def available(folder: str | Path) -> list[str]:
    """Names of the evaluators saved in ``folder``."""
    folder = Path(folder)
    return sorted(p.stem for p in folder.glob("*.json") if p.with_suffix(".safetensors").is_file())
