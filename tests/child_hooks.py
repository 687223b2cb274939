"""Test-only hooks for a child process (``python -c``) that a test interrupts: each one stops the
child's work at a point the test chooses and tells the test it is there, so a signal lands at that
point whatever the machine's speed. ``child_code(hook_call, argv_main)`` builds the child's program.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def child_code(hook: str) -> str:
    """Python source for ``python -c``: install ``hook`` (a call into this module), then run the
    edgeinfer CLI on the child's own arguments and exit with its code. Ctrl-C raises KeyboardInterrupt
    in the child as it does in a terminal, even when the test runs in the background (a background
    job starts with SIGINT ignored, and Python then leaves it ignored)."""
    return "\n".join([
        "import signal, sys",
        "signal.signal(signal.SIGINT, signal.default_int_handler)",
        f"sys.path.insert(0, {str(TESTS)!r})",
        "import child_hooks",
        f"child_hooks.{hook}",
        "from edgeinfer.cli import main",
        "sys.exit(main(sys.argv[1:]))",
    ])


def _tell(fd: int, message: str) -> None:
    os.write(fd, message.encode() + b"\n")
    os.close(fd)


def pause_gguf_output(output: str, ready_fd: int, after_blocks: int = 3) -> None:
    """While ``convert`` writes the GGUF at ``output`` (not its quality reference), stop after
    ``after_blocks`` encoded blocks, write "writing" to ``ready_fd`` and sleep until a signal."""
    import edgeinfer_converters.conversion as conversion
    from edgeinfer_converters.to_gguf import writer

    real_write, real_encode = conversion.write_gguf, writer.encode

    def is_output(out: Path) -> bool:  # the output, or the candidate written beside it before its check
        target = Path(output)
        return out == target or (out.parent == target.parent and out.name.startswith(f".{target.name}.")
                                 and ".candidate." in out.name)

    def write_gguf(ckpt, out, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if not is_output(Path(out)):
            return real_write(ckpt, out, *args, **kwargs)
        encoded = 0

        def encode(array, qtype):  # noqa: ANN001, ANN202
            nonlocal encoded
            encoded += 1
            if encoded == after_blocks:
                _tell(ready_fd, "writing")
                time.sleep(3600)  # a signal's handler raises here (SIGINT: KeyboardInterrupt)
            return real_encode(array, qtype)

        writer.encode = encode
        try:
            return real_write(ckpt, out, *args, **kwargs)
        finally:
            writer.encode = real_encode

    conversion.write_gguf = write_gguf


def pause_answer(marker: str, after_tokens: int) -> None:
    """The first request whose prompt contains ``marker`` stops producing after ``after_tokens``
    tokens until it is cancelled (e.g. by Ctrl-C in the CLI), so an interrupt sent once its first words
    are shown lands mid-answer. Later requests (whose history holds the marker too) run freely."""
    from edgeinfer import engine

    real_emit = engine.Engine._emit
    target: list[object] = []

    def emit(self, request, tokens):  # noqa: ANN001, ANN202
        real_emit(self, request, tokens)
        if not target and marker in self.backend.detokenize(request.prompt):
            target.append(request)
        paused = target[:1] == [request] and len(request.generated) >= after_tokens
        if paused and not request.finished.is_set():
            request.cancelled.wait(timeout=300)

    engine.Engine._emit = emit


if __name__ == "__main__":  # pragma: no cover - imported by child processes only
    sys.exit("import this module from a child process's -c program")
