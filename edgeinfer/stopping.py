"""Incremental text assembly: UTF-8 pieces to text, stop strings found across token boundaries."""

from __future__ import annotations

import codecs


class TextAssembler:
    """Turns token byte pieces into safe-to-show text, holding back what may start a stop string."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._pending = ""  # decoded text not yet released
        self.text = ""  # released text
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; return the text that can be released now ('' if held back)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        for s in self._stop:
            idx = self._pending.find(s)
            if idx >= 0:
                self.stopped = True
                return self._release(self._pending[:idx], rest="")
        if not self._stop:
            return self._release(self._pending, rest="")
        cut = max(len(self._pending) - self._hold, 0)
        # Keep back only a tail that could still be the start of a stop string.
        while cut < len(self._pending) and not any(
            s.startswith(self._pending[cut:]) for s in self._stop
        ):
            cut += 1
        return self._release(self._pending[:cut], rest=self._pending[cut:])

    def flush(self) -> str:
        """Release whatever is held (end of generation without a stop string)."""
        if self.stopped:
            return ""
        tail = self._pending + self._decoder.decode(b"", final=True)
        return self._release(tail, rest="")

    def _release(self, out: str, rest: str) -> str:
        self._pending = rest
        self.text += out
        return out
