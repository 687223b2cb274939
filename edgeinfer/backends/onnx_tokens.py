"""Text <-> token ids for ONNX model folders, from their tokenizer.json (HF `tokenizers`).

The engine streams bytes, so every token needs the exact bytes it stands for: byte-level BPE maps
each character back through GPT-2's byte table; SentencePiece-style vocabularies turn "▁" into a
space and ``<0xNN>`` into that byte. Special (control) tokens render as nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ModelLoadError

BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character stand-ins for the 256 byte values, inverted."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


class TokenizerJson:
    """tokenize / token_bytes over a tokenizer.json, with the byte rules of its decoder."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - the onnx extra installs it
            raise ModelLoadError("the ONNX backend needs tokenizers: pip install 'edgeinfer[onnx]'") from exc
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception
            raise ModelLoadError(f"{path} is not a usable tokenizer.json ({exc})") from exc
        # some tokenizer.json files pad and truncate to a fixed length (sentence-transformers): the
        # backends pad per batch themselves, and a text over the context is refused, never cut silently
        self.tok.no_truncation()
        self.tok.no_padding()
        self.special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        self._byte_level = "ByteLevel" in repr(self.tok.decoder)
        self._decoder = gpt2_byte_decoder() if self._byte_level else {}
        self.pieces: dict[int, bytes] = {}  # filled as tokens are first seen (a whole vocabulary: 0.1 s)
        self.n_vocab = self.tok.get_vocab_size(with_added_tokens=True)

    def _piece(self, token: int) -> bytes:
        text = self.tok.id_to_token(token)
        if text is None or text in self.special:
            return b""
        if self._byte_level:
            return bytes(self._decoder[c] for c in text if c in self._decoder)
        if match := BYTE_TOKEN.match(text):
            return bytes([int(match.group(1), 16)])
        return text.replace("\u2581", " ").encode("utf-8")

    def encode(self, text: str, *, add_special: bool) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=add_special).ids)

    def token_bytes(self, token: int) -> bytes:
        piece = self.pieces.get(token)
        if piece is None:
            if not 0 <= token < self.n_vocab:
                return b""
            piece = self.pieces[token] = self._piece(int(token))
        return piece

    def id_of(self, text: str) -> int | None:
        return self.tok.token_to_id(text)
