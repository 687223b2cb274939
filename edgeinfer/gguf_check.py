"""Cheap GGUF sanity checks before llama.cpp sees a file, and a diagnosis when it refuses one."""

from __future__ import annotations

from pathlib import Path

from .errors import CorruptModelError, EdgeInferError, ModelLoadError, ModelNotAvailableError

GGUF_MAGIC = b"GGUF"
_REFETCH = "re-download it (`edgeinfer pull NAME --force`) or convert it again"


def require_gguf_magic(path: Path) -> None:
    """Refuse a missing, empty or non-GGUF file with a message that says which."""
    if not path.is_file():
        raise ModelNotAvailableError(f"model file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8:
        raise CorruptModelError(f"{path.name} is empty or truncated ({len(head)} bytes); {_REFETCH}")
    if head[:4] != GGUF_MAGIC:
        raise CorruptModelError(
            f"{path.name} is not a GGUF file (magic {head[:4]!r}, expected {GGUF_MAGIC!r}); "
            "pass a .gguf file or an ONNX model folder"
        )


def diagnose_gguf(path: Path, llama_errors: list[str]) -> EdgeInferError:
    """Explain why llama.cpp refused ``path``: truncated/inconsistent file, or something else."""
    detail = " | ".join(llama_errors[-3:])
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
        size = path.stat().st_size
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
        if end > size:
            return CorruptModelError(
                f"{path.name} is truncated: its tensors need {end} bytes but the file has {size}; "
                + _REFETCH
            )
    except (ValueError, IndexError, KeyError, OSError, EOFError) as exc:
        return CorruptModelError(f"{path.name} has a damaged GGUF header ({exc}); {_REFETCH}")
    except ImportError:
        pass
    if "unknown model architecture" in detail:
        return ModelLoadError(
            f"this llama.cpp build does not know the architecture of {path.name}: upgrade "
            f"llama-cpp-python. llama.cpp said: {detail}"
        )
    if any(w in detail for w in ("corrupted", "incomplete", "out of bounds", "not within")):
        return CorruptModelError(f"{path.name} is corrupted or incomplete; {_REFETCH}. ({detail})")
    return ModelLoadError(f"llama.cpp could not load {path.name}: {detail or 'no reason given'}")
