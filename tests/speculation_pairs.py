"""One request run with prompt-lookup speculation and without, on fresh loads of the same GGUF: tests
that drafting never changes an output compare the two."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import edgeinfer as ei


def with_and_without_speculation(path: Path, prompt: str, **options: Any) -> tuple[Any, Any]:
    """(drafted, plain) completions of ``prompt``. With flash attention, speculation "auto" is prompt
    lookup, checked exactly."""
    outputs = {}
    for speculation in ("auto", None):
        model = ei.load(path, n_ctx=512, n_threads=2, flash_attn=True, speculation=speculation,
                        kv=ei.KVOptions(settle=False))
        try:
            outputs[speculation] = model.generate(prompt, **options)
        finally:
            model.close()
    return outputs["auto"], outputs[None]
