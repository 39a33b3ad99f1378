"""Image sources for training the VQ tokenizer, with a resumable, rank-sharded sampler.

Sources map an integer index to a float32 ``(S, S)`` array in ``[0, 1]``:
- ``SynthSource``: SynthCXR pairs of one split generated on the fly (prior, counterfactual, follow-up); an
  endless stream of fresh images, so the tokenizer never overfits a fixed set.
- ``FolderSource``: a data set on disk read with the foundation loaders (``load_records(root, fmt)``: every
  prior and target image of one split), or, with ``fmt="images"``, every PNG / JPEG / DICOM under a folder.
- ``ArraySource``: a ``.npy`` pool of images (N, S, S) (e.g. SynthCXR generated once, in parallel).
- ``ProceduralSource``: ellipse-and-blob phantoms, no dependency (tests and smoke runs).

``StepSampler`` turns (step, rank) into source indices deterministically, so a resumed run sees exactly the
images it would have seen without the interruption.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff"}
VAL_SEED_OFFSET = 1_000_003  # procedural validation images come from a seed the training stream never uses


class ProceduralSource:
    """Phantom chest-like images: two dark lungs, a bright mediastinum, rib arcs and random opacities."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed = size, seed

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s] / s  # (S, S) in [0, 1)
        img = np.full((s, s), 0.75) + 0.05 * rng.standard_normal()
        for cx in (0.32, 0.68):  # lungs
            cx += 0.03 * rng.standard_normal()
            inside = ((xx - cx) / (0.15 + 0.02 * rng.random())) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1
            img[inside] -= 0.45
        for k in range(6):  # ribs
            img += 0.08 * np.exp(-(((yy - 0.25 - 0.09 * k - 0.1 * (xx - 0.5) ** 2) / 0.012) ** 2))
        for _ in range(rng.integers(0, 4)):  # opacities
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.8), rng.uniform(0.03, 0.12)
            img += 0.3 * rng.random() * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += 0.01 * rng.standard_normal((s, s))
        return np.clip(img, 0, 1).astype(np.float32)


class SynthSource:
    """SynthCXR images of one split, generated in memory: image ``i`` is the prior, the counterfactual or the
    follow-up (``i % 3``) of the split's pair ``i // 3``. Splits are per patient, so the training stream never
    shows a validation patient."""

    def __init__(self, size: int, seed: int = 0, split: str = "train"):
        from progemu.synth import SynthCXR

        self.size, self.seed, self.split = size, seed, split
        self.gen = SynthCXR(size=size, seed=seed)
        self._pairs: list[int] = []  # pair indices of this split, extended lazily
        self._next_patient = 0

    def __len__(self) -> int:
        return 2**31 - 1

    def pair_index(self, k: int) -> int:
        """Global SynthCXR pair index of the split's k-th pair."""
        from progemu.synth.pairs import PAIRS_PER_PATIENT

        while len(self._pairs) <= k:
            if self.gen.history(self._next_patient).split == self.split:
                base = self._next_patient * PAIRS_PER_PATIENT
                self._pairs.extend(range(base, base + PAIRS_PER_PATIENT))
            self._next_patient += 1
        return self._pairs[k]

    def __getitem__(self, index: int) -> np.ndarray:
        pair = self.gen.pair(self.pair_index(index // 3))
        img = (pair.prior, pair.counterfactual, pair.followup)[index % 3]
        return np.asarray(img, dtype=np.float32)


class FolderSource:
    """Images of one split of a data set on disk, read and resized by the ingestion to ``size`` at every access.

    Nothing is cached: each DataLoader worker holds a copy of the source, and a cache of every decoded image in
    every worker grows without bound on a MIMIC-size folder. For repeated epochs over a folder whose decoding is
    the bottleneck, decode it once into a ``.npy`` pool (``ArraySource``, memory-mapped and shared by the
    workers through the page cache)."""

    def __init__(self, root: str | Path, size: int, fmt: str = "icg-cxr", split: str | None = "train"):
        self.size = size
        self.paths = list_images(root, fmt, split)
        if not self.paths:
            from progemu.errors import LayoutError

            raise LayoutError(f"{root}: no images found (format {fmt!r}, split {split!r})")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        from progemu.data.ingest import IngestOptions, load_image

        return load_image(self.paths[index], IngestOptions(size=self.size))


def list_images(root: str | Path, fmt: str, split: str | None) -> list[Path]:
    """Every prior and target image of ``split`` (None = all) of the data set at ``root``, without duplicates."""
    root = Path(root)
    if fmt == "images":
        return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    from progemu.data.loaders import load_records

    seen: dict[Path, None] = {}
    for rec in load_records(root, fmt):
        if split is None or rec.split == split:
            for p in (rec.prior_image, rec.target_image):
                if p is not None:
                    seen.setdefault(Path(p), None)
    return list(seen)


class ArraySource:
    """Images from a ``.npy`` file of shape (N, S, S) in [0, 1] (a pre-generated pool, memory-mapped)."""

    def __init__(self, path: str | Path):
        self.images = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self.images[index], dtype=np.float32)


def make_source(data: str, size: int, seed: int, fmt: str = "icg-cxr", split: str = "train"):
    """``data``: "synth" (that split of SynthCXR), "procedural" (a disjoint seed per split) or a data-set folder."""
    if data == "synth":
        return SynthSource(size, seed, split)
    if data == "procedural":
        return ProceduralSource(size, seed + (VAL_SEED_OFFSET if split != "train" else 0))
    if data.endswith(".npy"):
        return ArraySource(data)
    return FolderSource(data, size, fmt, split)


class SourceDataset(Dataset):
    """Index -> (1, S, S) float tensor in [-1, 1]."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.source[index], dtype=np.float32))[None] * 2.0 - 1.0


class StepSampler(Sampler[int]):
    """Indices for steps ``start_step..total_steps`` of one rank; global position p = (step * world + rank) * batch + j.

    An endless source is read in order (fresh images); a finite one is shuffled with a new permutation per epoch.
    """

    def __init__(self, n: int, batch_size: int, start_step: int, total_steps: int, rank: int = 0, world: int = 1,
                 seed: int = 0, finite: bool = True):
        self.n, self.batch_size, self.start, self.total = n, batch_size, start_step, total_steps
        self.rank, self.world, self.seed, self.finite = rank, world, seed, finite
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.batch_size

    def index(self, p: int) -> int:
        if not self.finite:
            return p % self.n
        epoch, k = divmod(p, self.n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return int(self._perm[1][k])

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.total):
            base = (step * self.world + self.rank) * self.batch_size
            for j in range(self.batch_size):
                yield self.index(base + j)
