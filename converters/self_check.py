"""The converter checks its own output before it is renamed into place: the GGUF loads in llama.cpp,
tokenizes a check text exactly as the checkpoint's own tokenizer does, and (a causal LM) gives finite
logits. A GGUF that llama.cpp refuses, or that reads text differently from the model it came from, is a
ConversionError naming what did not match; the caller then leaves nothing behind.

The check runs in a child process: llama.cpp aborts the process on some malformed files instead of
refusing them, and the loaded weights would count against the converter's own (streaming) memory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from edgeinfer.errors import ConversionError, EdgeInferError

# ASCII words, punctuation, digits, a contraction and a double space: what tokenizers most often split
# differently when a vocabulary or pre-tokenizer was written wrong
CHECK_TEXT = "Hello world. The quick brown fox can't jump over 42 lazy dogs,  twice!"
_REPORT = "please report it with the checkpoint's config.json and tokenizer files"
_SAID = "self-check: "  # the child's verdict on stderr


def hf_token_ids(checkpoint: Path, text: str = CHECK_TEXT) -> list[int] | None:
    """``text``'s token ids by the checkpoint's tokenizer.json (no special tokens); None without one."""
    path = checkpoint / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # some tokenizer.json files pad (or cut) every text to a fixed length
    tokenizer.no_truncation()
    return tokenizer.encode(text, add_special_tokens=False).ids


def check_gguf(path: Path, checkpoint: Path, *, causal: bool = True, timeout: float = 600) -> None:
    """Check the GGUF at ``path`` against ``checkpoint`` in a child process (see the module doc)."""
    command = [sys.executable, "-m", "edgeinfer_converters.self_check", str(path), str(checkpoint)]
    done = subprocess.run(command + ([] if causal else ["--encoder"]), capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode == 0:
        return
    said = [line for line in done.stderr.splitlines() if line.startswith(_SAID)]
    if said:
        raise ConversionError(said[-1][len(_SAID):])
    why = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
    tail = " ".join(done.stderr.strip().splitlines()[-3:])
    raise ConversionError(f"llama.cpp crashed loading the converted GGUF ({why}: {tail[-300:]}), so it was "
                          f"not written; {_REPORT}")


def _check_here(path: Path, checkpoint: Path, *, causal: bool = True) -> None:
    """Load the GGUF at ``path`` as edgeinfer will and compare it with ``checkpoint``."""
    from edgeinfer.backends.base import EvalItem
    from edgeinfer.backends.llamacpp import LlamaCppBackend

    try:
        backend = LlamaCppBackend(path, n_ctx=128, n_batch=128, n_threads=1, max_sequences=1)
    except EdgeInferError as exc:
        raise ConversionError(f"the converted GGUF does not load in llama.cpp ({exc}), so it was not "
                              f"written: this layout is not converted correctly yet; {_REPORT}") from exc
    try:
        ours = backend.tokenize(CHECK_TEXT, add_special=False)
        theirs = hf_token_ids(checkpoint)
        if theirs is not None and ours != theirs:
            first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                         min(len(ours), len(theirs)))
            raise ConversionError(
                f"the converted GGUF tokenizes text differently from the checkpoint's tokenizer.json "
                f"(from token {first}: llama.cpp {ours[first:first + 4]}, tokenizer.json "
                f"{theirs[first:first + 4]}), so it was not written; {_REPORT}")
        if causal and ours:
            rows = backend.eval([EvalItem(0, ours, n_outputs=1)])
            if not np.isfinite(backend.logits(rows[-1])).all():
                raise ConversionError(f"the converted GGUF computes non-finite logits, so it was not "
                                      f"written; {_REPORT}")
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeinfer_converters.self_check GGUF CHECKPOINT [--encoder]``: exit 0, or 3 with the
    reason on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    encoder = "--encoder" in args
    path, checkpoint = (Path(a) for a in args if a != "--encoder")
    try:
        _check_here(path, checkpoint, causal=not encoder)
    except ConversionError as exc:
        print(f"{_SAID}{exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
