"""Writing a command's streamed text to the terminal as it is generated."""

from __future__ import annotations

import sys
from collections.abc import Iterable


def print_stream(stream: Iterable[str]) -> None:
    """Write the pieces to stdout as they come, then a newline."""
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
