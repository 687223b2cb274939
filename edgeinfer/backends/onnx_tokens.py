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
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        byte_level = "ByteLevel" in repr(self.tok.decoder)
        decoder = gpt2_byte_decoder() if byte_level else {}
        self.pieces: dict[int, bytes] = {}
        for text, token in vocab.items():
            if text in self.special:
                self.pieces[token] = b""
            elif byte_level:
                self.pieces[token] = bytes(decoder[c] for c in text if c in decoder)
            elif match := BYTE_TOKEN.match(text):
                self.pieces[token] = bytes([int(match.group(1), 16)])
            else:
                self.pieces[token] = text.replace("\u2581", " ").encode("utf-8")
        self.ids = vocab

    def encode(self, text: str, *, add_special: bool) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=add_special).ids)

    def token_bytes(self, token: int) -> bytes:
        return self.pieces.get(token, b"")

    def id_of(self, text: str) -> int | None:
        return self.ids.get(text)
