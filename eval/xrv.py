"""torchxrayvision's DenseNet-121 chest X-ray classifier (``densenet121-res224-all``), loaded from a local
state dict, as a drop-in for the project's findings evaluator (prompted-finding AUROC / F1, and FID on its
1024-d pooled features).

The torchxrayvision package imports torchvision at import time (and its weight file is a pickled module, which
this project does not unpickle), so the same architecture is built here with torchxrayvision's parameter names
(``features.denseblock1.denselayer1.conv1.weight``, ``classifier.weight``, ``op_threshs``); the layer sizes are
read from the state dict. Preprocessing is torchxrayvision's: intensities scaled to [-1024, 1024], one channel,
centre crop of the long side, resize to 224 px (skimage). Outputs are sigmoid probabilities renormalised at
torchxrayvision's operating points (``op_norm``: 0.5 = the calibrated threshold) when the state dict carries
``op_threshs``. The weight file is made once where torchxrayvision is installed (eval/README.md).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from progemu.data.records import CHEXPERT_LABELS
from progemu.errors import ProgEmuError

# the 18 outputs of torchxrayvision's "all" weights, in order
XRV_PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis", "Effusion",
    "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
    "Lung Opacity", "Enlarged Cardiomediastinum")
# its names that differ from CheXpert's; outputs with no CheXpert label (Infiltration, Emphysema, ...) are unused
TO_CHEXPERT = {"Effusion": "Pleural Effusion", "Pleural_Thickening": "Pleural Other"}
WEIGHTS_NAME = "xrv-densenet121-res224-all.safetensors"
INPUT_SIZE = 224


class _DenseLayer(nn.Sequential):
    def __init__(self, c_in: int, growth: int, bn_size: int):
        super().__init__(OrderedDict([
            ("norm1", nn.BatchNorm2d(c_in)), ("relu1", nn.ReLU(inplace=True)),
            ("conv1", nn.Conv2d(c_in, bn_size * growth, 1, bias=False)),
            ("norm2", nn.BatchNorm2d(bn_size * growth)), ("relu2", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, super().forward(x)], 1)  # dense connectivity


class XRVDenseNet(nn.Module):
    """DenseNet-BC with torchxrayvision's module names; defaults are DenseNet-121 (growth 32, blocks 6-12-24-16)."""

    def __init__(self, n_out: int = len(XRV_PATHOLOGIES), growth: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16),
                 init_features: int = 64, bn_size: int = 4, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(in_channels, init_features, 7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(init_features)), ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(3, stride=2, padding=1))]))
        c = init_features
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", nn.Sequential(OrderedDict(
                (f"denselayer{j + 1}", _DenseLayer(c + j * growth, growth, bn_size)) for j in range(n))))
            c += n * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", nn.Sequential(OrderedDict([
                    ("norm", nn.BatchNorm2d(c)), ("relu", nn.ReLU(inplace=True)),
                    ("conv", nn.Conv2d(c, c // 2, 1, bias=False)), ("pool", nn.AvgPool2d(2, stride=2))])))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, n_out)
        self.register_buffer("op_threshs", None)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 224, 224) in [-1024, 1024] -> (B, C) (torchxrayvision's ``features2``: ReLU, global mean)."""
        return F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(x))  # (B, n_out) logits

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> XRVDenseNet:
        """The architecture the state dict describes (layer counts and widths read from its shapes)."""
        blocks = []
        while any(k.startswith(f"features.denseblock{len(blocks) + 1}.") for k in state):
            b = len(blocks) + 1
            blocks.append(len({k.split(".")[2] for k in state if k.startswith(f"features.denseblock{b}.")}))
        growth = state["features.denseblock1.denselayer1.conv2.weight"].shape[0]
        net = cls(n_out=state["classifier.weight"].shape[0], growth=growth, blocks=tuple(blocks),
                  init_features=state["features.conv0.weight"].shape[0],
                  bn_size=state["features.denseblock1.denselayer1.conv1.weight"].shape[0] // growth,
                  in_channels=state["features.conv0.weight"].shape[1])
        if "op_threshs" in state:
            net.op_threshs = torch.zeros_like(state["op_threshs"])
        return net


def preprocess(images: np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """(N, H, W) [0, 1] -> (N, 1, size, size) in [-1024, 1024]: torchxrayvision's ``normalize`` (maxval 1),
    ``XRayCenterCrop`` and ``XRayResizer`` (skimage)."""
    from skimage.transform import resize

    out = []
    for img in np.asarray(images, np.float32):
        img = img * 2048.0 - 1024.0
        h, w = img.shape
        s = min(h, w)
        img = img[h // 2 - s // 2: h // 2 - s // 2 + s, w // 2 - s // 2: w // 2 - s // 2 + s]
        out.append(resize(img, (size, size), mode="constant", preserve_range=True).astype(np.float32))
    return torch.from_numpy(np.stack(out))[:, None] if out else torch.zeros(0, 1, size, size)


def op_norm(prob: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """torchxrayvision's operating-point normalisation: each threshold maps to 0.5, piecewise linearly (NaN
    thresholds leave the probability as it is)."""
    t = thresholds.expand_as(prob)
    known = ~torch.isnan(t)
    low = known & (prob < t)
    high = known & ~(prob < t)
    out = prob.clone()
    out[low] = prob[low] / (t[low] * 2)
    out[high] = 1.0 - (1.0 - prob[high]) / ((1 - t[high]) * 2)
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pt`` / ``.pth`` state dict (``torch.load(weights_only=True)``)."""
    if not path.is_file():
        raise ProgEmuError(f"{path}: torchxrayvision DenseNet weights not found; make {WEIGHTS_NAME} once where "
                           "torchxrayvision is installed and put it there (eval/README.md, 'Standard evaluators')")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a pickled nn.Module (torchxrayvision's own .pt) is refused by weights_only
        raise ProgEmuError(f"{path}: not a plain state dict ({type(err).__name__}); convert torchxrayvision's weights "
                           f"to {WEIGHTS_NAME} as eval/README.md shows") from err
    return obj.get("state_dict", obj.get("model_state_dict", obj)) if isinstance(obj, dict) else obj


@dataclass
class BackendSpec:
    """What a standard evaluator predicts, shaped like ``progemu.classifier.EvaluatorSpec`` for the metrics."""

    name: str
    kind: str
    classes: list[str]
    image_size: int
    heldout: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    thresholds: list[float] = field(default_factory=list)


class XRVEvaluator:
    """torchxrayvision's classifier behind the findings-evaluator interface (``predict_proba``, ``features``,
    ``threshold_array``, ``spec``) with its outputs renamed to CheXpert labels."""

    def __init__(self, net: XRVDenseNet, path: str = ""):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net = net.eval().to(self.device)
        names = [TO_CHEXPERT.get(p, p) for p in XRV_PATHOLOGIES[: net.classifier.out_features]]
        calibrated = net.op_threshs is not None
        # torchxrayvision's weights trained on one data set give every output but leave the ones it had no labels
        # for untrained, with a NaN operating point (its "chex", "nih", "rsna" ... weights): those are left out
        trained = [not calibrated or not torch.isnan(t) for t in (net.op_threshs if calibrated else names)]
        self.index = [i for i, n in enumerate(names) if n in CHEXPERT_LABELS and trained[i]]
        self.spec = BackendSpec(
            name="xrv-densenet121", kind="multilabel", classes=[names[i] for i in self.index], image_size=INPUT_SIZE,
            heldout={"reliable": True, "source": "torchxrayvision densenet121-res224-all, pretrained; held-out "
                                                 "accuracy as its authors publish it, not measured by this project"},
            training={"weights": path, "operating_points": calibrated},
            thresholds=[0.5] * len(self.index))

    @classmethod
    def load(cls, path: str | Path) -> XRVEvaluator:
        path = Path(path)
        state = read_state_dict(path)
        if "classifier.weight" not in state or "features.conv0.weight" not in state:
            raise ProgEmuError(f"{path}: not a torchxrayvision DenseNet state dict (no features.conv0 / classifier)")
        net = XRVDenseNet.from_state_dict(state)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ProgEmuError(f"{path}: state dict does not fit the DenseNet it describes: {err}") from err
        return cls(net, str(path))

    @torch.no_grad()
    def _batches(self, images: np.ndarray, fn, batch: int = 32) -> torch.Tensor:
        out = [fn(preprocess(images[i: i + batch]).to(self.device)).cpu() for i in range(0, len(images), batch)]
        return torch.cat(out) if out else torch.zeros(0, 0)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(N, C) probabilities of the CheXpert-named outputs (operating point 0.5 where calibrated)."""
        prob = self._batches(images, lambda x: torch.sigmoid(self.net(x)))
        if self.net.op_threshs is not None and len(prob):
            prob = op_norm(prob, self.net.op_threshs.float().cpu())
        return prob[:, self.index].numpy() if len(prob) else np.zeros((0, len(self.index)), np.float32)

    def threshold_array(self) -> np.ndarray:
        return np.asarray(self.spec.thresholds, np.float64)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, 1024) pooled DenseNet features (torchxrayvision's ``features2``), for FID."""
        return self._batches(images, self.net.pooled).numpy()
