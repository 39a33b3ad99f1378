"""Perceptual loss for the VQ tokenizer from networks the project trains itself (no downloaded weights).

LPIPS compares a pretrained VGG's activations; chest X-ray findings need features that know what a tube, a
pleural line or a nodule is, and no such weights can be downloaded here. So the loss compares the activations of
the project's own small CXR classifiers (``progemu.classifier.SmallCXRNet``: findings, age group, ...) on the
original and the reconstruction: channel-normalised features after every stage (as LPIPS), plus the logits.

The networks are trained with ``python -m eval.train_evaluators --data DIR --out runs/vq-perceptual --seed 1``: a
different seed (and folder) from the evaluators that score the tokenizer (``runs/evaluators``, seed 0), so the
tokenizer is not tuned against the very network that measures it. They stay frozen in eval mode.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from progemu.classifier import Evaluator, available


class ClassifierFeatureLoss(nn.Module):
    """Mean over networks of sum over stages of the squared difference of unit-normalised activations
    (+ ``logit_weight`` x MSE of the logits). Inputs: (B, 1, S, S) in [-1, 1], the networks' image size."""

    def __init__(self, folder: str | Path, names: list[str] | None = None, logit_weight: float = 0.1):
        super().__init__()
        names = names or available(folder)
        if not names:
            raise FileNotFoundError(f"{folder}: no trained networks for the perceptual loss "
                                    f"(python -m eval.train_evaluators --data DIR --out {folder} --seed 1)")
        evaluators = [Evaluator.load(folder, n) for n in names]
        self.nets = nn.ModuleList(ev.net for ev in evaluators)
        self.sizes = [ev.spec.image_size for ev in evaluators]
        self.names = names
        self.logit_weight = logit_weight
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClassifierFeatureLoss:  # frozen: BatchNorm keeps its running stats
        return super().train(False)

    @staticmethod
    def _stages(net, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations after each strided block (the ReLU that follows a stride-2 conv)."""
        feats, strided = [], False
        for layer in net.body:
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                strided = layer.stride[0] > 1
            elif isinstance(layer, nn.ReLU) and strided:
                feats.append(x)
        return feats

    def forward(self, rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = rec.new_zeros(())
        for net, size in zip(self.nets, self.sizes, strict=True):
            a, b = rec, target
            if a.shape[-1] != size:
                a = F.interpolate(a, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                b = F.interpolate(b, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            fa, fb = self._stages(net, a), self._stages(net, b.detach())
            for u, v in zip(fa, fb, strict=True):
                u = u / (u.norm(dim=1, keepdim=True) + 1e-6)
                v = v / (v.norm(dim=1, keepdim=True) + 1e-6)
                total = total + (u - v).pow(2).sum(1).mean()
            if self.logit_weight:
                la, lb = net.head(fa[-1].mean(dim=(2, 3))), net.head(fb[-1].mean(dim=(2, 3)))
                total = total + self.logit_weight * F.mse_loss(la, lb)
        return total / len(self.nets)
