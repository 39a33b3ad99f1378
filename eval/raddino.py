"""RAD-DINO image features for FID, computed as CheXGenBench computes "FID (RadDino)": each image resized to
299 x 299 RGB uint8, then RAD-DINO's own image processor (shortest edge 518, centre crop 518, mean 0.5307,
std 0.2583), then the model's ``pooler_output`` (the layer-normed CLS token, 768-d for ViT-B/14).

The model is a transformers ``Dinov2Model`` folder (``config.json``, ``model.safetensors``,
``preprocessor_config.json``) read with ``local_files_only``: nothing is downloaded (eval/README.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from progemu.errors import ProgEmuError

CHEXGENBENCH_SIZE = 299  # CheXGenBench's Resize((299, 299)) before the feature extractor
# RAD-DINO's preprocessor_config.json, used where a folder has none
RAD_DINO_PROCESSOR = {"size": {"shortest_edge": 518}, "crop_size": {"height": 518, "width": 518},
                      "image_mean": [0.5307, 0.5307, 0.5307], "image_std": [0.2583, 0.2583, 0.2583],
                      "resample": 3, "do_center_crop": True, "do_normalize": True, "do_rescale": True,
                      "rescale_factor": 1 / 255, "do_convert_rgb": True}
REQUIRED = ("config.json", "model.safetensors")


class RadDino:
    """A local RAD-DINO (or any Dinov2Model) folder as an FID feature extractor."""

    def __init__(self, model, processor, path: str = ""):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor, self.path = model.eval().to(self.device), processor, path

    @classmethod
    def load(cls, folder: str | Path) -> RadDino:
        from transformers import AutoImageProcessor, AutoModel, BitImageProcessor

        folder = Path(folder)
        missing = [str(folder / f) for f in REQUIRED if not (folder / f).is_file()]
        if missing:
            raise ProgEmuError(f"RAD-DINO files not found: {', '.join(missing)}; put microsoft/rad-dino's config.json, "
                               "model.safetensors and preprocessor_config.json there (eval/README.md)")
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        if (folder / "preprocessor_config.json").is_file():
            processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        else:
            processor = BitImageProcessor(**RAD_DINO_PROCESSOR)
        return cls(model, processor, str(folder))

    def to_pil(self, images: np.ndarray) -> list[Image.Image]:
        """(N, H, W) [0, 1] -> RGB PIL images at 299 x 299 (CheXGenBench's loading; bilinear as PIL's Resize)."""
        out = []
        for img in np.asarray(images, np.float32):
            pil = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).convert("RGB")
            out.append(pil.resize((CHEXGENBENCH_SIZE, CHEXGENBENCH_SIZE), Image.BILINEAR))
        return out

    @torch.no_grad()
    def features(self, images: np.ndarray, batch: int = 16) -> np.ndarray:
        """(N, hidden) CLS features (``pooler_output``)."""
        out = []
        for i in range(0, len(images), batch):
            pixels = self.processor(images=self.to_pil(images[i: i + batch]), return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self.device, self.model.dtype)
            out.append(self.model(pixel_values=pixels).pooler_output.float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.model.config.hidden_size), np.float32)
