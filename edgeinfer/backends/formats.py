"""Artifact formats as data: a name and a detector each, walked in order to tell what a path holds."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

Detector = Callable[[Path], bool]
UNKNOWN = "unknown"


@dataclass(frozen=True)
class ArtifactFormat:
    """A kind of model artifact and how to recognise it on disk (a backend spec may declare new ones)."""

    name: str
    detect: Detector | str  # a callable, or a file suffix such as ".toy"

    def matches(self, path: Path) -> bool:
        """True when ``path`` holds an artifact of this format."""
        if isinstance(self.detect, str):
            return path.suffix == self.detect
        return bool(self.detect(path))


def is_gguf(path: Path) -> bool:
    """A file starting with the GGUF magic, or named *.gguf (llama.cpp then reports what is wrong)."""
    if path.is_dir():
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == b"GGUF" or path.suffix == ".gguf"


def folder_with(filename: str) -> Detector:
    """A detector for folders that hold ``filename``."""

    def detect(path: Path) -> bool:
        return path.is_dir() and (path / filename).is_file()

    detect.__qualname__ = f"folder_with({filename!r})"
    return detect


# Built-in formats, in the order they are tried (an ONNX folder may also hold a config.json).
FORMATS: tuple[ArtifactFormat, ...] = (
    ArtifactFormat("gguf", is_gguf),
    ArtifactFormat("onnx", folder_with("model.onnx")),
    ArtifactFormat("hf", folder_with("config.json")),
)


def detect_format(path: Path, formats: Iterable[ArtifactFormat] = FORMATS) -> str:
    """The name of the first format in ``formats`` that recognises ``path``, else 'unknown'."""
    return next((fmt.name for fmt in formats if fmt.matches(path)), UNKNOWN)
