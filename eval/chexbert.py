"""CheXbert report labels for F1-CheXbert, from the original checkpoint (``chexbert.pth``) and a local
``bert-base-uncased`` folder (tokenizer and config): nothing is downloaded (eval/README.md).

The original ``bert_labeler`` is BERT-base, dropout, and 14 linear heads on the [CLS] state: 13 with 4 classes
(blank, positive, negative, uncertain) and No Finding with 2. Its checkpoint holds ``model_state_dict`` with
``module.bert.*`` and ``module.linear_heads.N.*`` keys (DataParallel names); it is read with
``torch.load(weights_only=True)``. Reports are cleaned (whitespace collapsed) and cut at 512 tokens as CheXbert's
``tokenize`` does.

F1-CheXbert here is the micro F1 of the *positive* class of generated vs reference texts over the 14
observations (``chexbert_f1``) and over the 5 most reported ones (``chexbert_f1_5``: atelectasis, cardiomegaly,
consolidation, edema, pleural effusion); uncertain, negative and blank count as not positive.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from progemu.errors import ProgEmuError

CONDITIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
    "No Finding")
CLASSES: tuple[str, ...] = ("blank", "positive", "negative", "uncertain")
TOP5: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CHECKPOINT_NAME = "chexbert.pth"


class BertLabeler(nn.Module):
    """CheXbert's ``bert_labeler``: BERT, dropout, 13 four-class heads and a two-class No Finding head."""

    def __init__(self, config):
        from transformers import BertModel

        super().__init__()
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(0.1)
        hidden = config.hidden_size
        self.linear_heads = nn.ModuleList([nn.Linear(hidden, 4) for _ in range(13)] + [nn.Linear(hidden, 2)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        cls = self.dropout(self.bert(input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])  # (B, H)
        return [head(cls) for head in self.linear_heads]  # 14 x (B, 4 or 2)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The labeler's state dict with DataParallel's ``module.`` prefix removed."""
    if not path.is_file():
        raise ProgEmuError(f"{path}: CheXbert checkpoint not found; put the original {CHECKPOINT_NAME} there "
                           "(eval/README.md, 'Standard evaluators')")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ProgEmuError(f"{path}: cannot be read as a CheXbert checkpoint ({type(err).__name__}: {err})") from err
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(k.endswith("linear_heads.13.weight") for k in state):
        raise ProgEmuError(f"{path}: no CheXbert state dict (model_state_dict with linear_heads.0-13) in it")
    # position_ids was a persistent buffer in older transformers; today's BertModel does not save it
    return {k.removeprefix("module."): v for k, v in state.items() if not k.endswith("embeddings.position_ids")}


def clean(text: str | None) -> str:
    """CheXbert's report cleaning: strip, newlines to spaces, runs of whitespace to one space."""
    return re.sub(r"\s+", " ", (text or "").strip().replace("\n", " ")).strip()


class CheXbert:
    """Label texts with CheXbert: (N, 14) class indices (0 blank, 1 positive, 2 negative, 3 uncertain)."""

    def __init__(self, model: BertLabeler, tokenizer, path: str = ""):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer, self.path = model.eval().to(self.device), tokenizer, path

    @classmethod
    def load(cls, checkpoint: str | Path, bert_dir: str | Path) -> CheXbert:
        from transformers import BertConfig, BertTokenizer

        checkpoint, bert_dir = Path(checkpoint), Path(bert_dir)
        if not (bert_dir / "vocab.txt").is_file():
            raise ProgEmuError(f"{bert_dir / 'vocab.txt'}: bert-base-uncased tokenizer not found; put "
                               "bert-base-uncased's vocab.txt and config.json there (eval/README.md)")
        config = BertConfig.from_pretrained(str(bert_dir), local_files_only=True) if (
            bert_dir / "config.json").is_file() else BertConfig()  # BertConfig's defaults are bert-base-uncased's
        model = BertLabeler(config)
        try:
            model.load_state_dict(read_checkpoint(checkpoint))
        except RuntimeError as err:
            raise ProgEmuError(f"{checkpoint}: does not fit BERT of {bert_dir / 'config.json'}: {err}") from err
        tokenizer = BertTokenizer.from_pretrained(str(bert_dir), local_files_only=True)
        return cls(model, tokenizer, str(checkpoint))

    def encode(self, text: str | None) -> list[int]:
        """Token ids as CheXbert's ``tokenize``: [CLS] ... [SEP], at most 512, an empty text as [CLS] [SEP]."""
        tokens = self.tokenizer.tokenize(clean(text))
        if not tokens:
            return [self.tokenizer.cls_token_id, self.tokenizer.sep_token_id]
        ids = [self.tokenizer.cls_token_id, *self.tokenizer.convert_tokens_to_ids(tokens), self.tokenizer.sep_token_id]
        return ids[:511] + [self.tokenizer.sep_token_id] if len(ids) > 512 else ids

    @torch.no_grad()
    def label(self, texts: Sequence[str | None], batch: int = 16) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            ids = [torch.tensor(self.encode(t)) for t in texts[i: i + batch]]
            padded = nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=self.tokenizer.pad_token_id)
            mask = torch.zeros_like(padded)
            for j, t in enumerate(ids):
                mask[j, : len(t)] = 1
            heads = self.model(padded.to(self.device), mask.to(self.device))
            out.append(torch.stack([h.argmax(-1) for h in heads], 1).cpu())  # (B, 14)
        return torch.cat(out).numpy() if out else np.zeros((0, len(CONDITIONS)), np.int64)

    def label_dicts(self, texts: Sequence[str | None]) -> list[dict[str, str]]:
        """Per text {condition: class name} of the non-blank conditions."""
        return [{c: CLASSES[v] for c, v in zip(CONDITIONS, row) if v} for row in self.label(texts)]


def chexbert_f1(hyp: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Micro F1 of the positive class (label 1) over the 14 conditions and over ``TOP5``; (N, 14) inputs."""
    out = {}
    groups = (("chexbert_f1", list(range(len(CONDITIONS)))), ("chexbert_f1_5", [CONDITIONS.index(c) for c in TOP5]))
    for name, cols in groups:
        h, r = hyp[:, cols] == 1, ref[:, cols] == 1
        tp, fp, fn = int((h & r).sum()), int((h & ~r).sum()), int((~h & r).sum())
        # no positive on either side: 0, as sklearn's f1_score and the report-generation papers' scripts count it
        out[name] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return out
