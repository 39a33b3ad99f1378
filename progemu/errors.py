"""Exceptions of the package: every one names the file or object and the reason."""

from __future__ import annotations

from pathlib import Path


class ProgEmuError(Exception):
    """Base class of every error this package raises on purpose."""


class IngestError(ProgEmuError):
    """An image file that cannot be turned into a grayscale array."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class RecordError(ProgEmuError):
    """A data-set record that is malformed (missing field, missing image, unknown split, ...)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class LayoutError(ProgEmuError):
    """A token sequence that does not follow the vocabulary layout (e.g. a malformed generated image)."""


class SequenceTooLongError(ProgEmuError):
    """A sequence longer than the model's context window."""

    def __init__(self, length: int, limit: int, what: str = "sequence"):
        self.length = length
        self.limit = limit
        super().__init__(f"{what} has {length} tokens but the model's context is {limit} tokens")


class ConversionError(ProgEmuError):
    """A checkpoint that cannot be converted (missing folder or file, unknown format, mismatched weights)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
