"""Vocabulary shortlists: a GGUF whose vocabulary keeps only the tokens a set of languages uses.

A small model's output layer can cost more than the rest of it: Gemma 3 270M reads a 262,144 x 640
embedding table (178 MB at Q8_0) for every generated token, against 75 MB for all its layers. Firefox
Translations (Bergamot) shortlists the output vocabulary per language pair for the same reason. llama.cpp
computes the whole output layer, so the shortlist is baked into a new GGUF: the embedding rows, token
texts, scores and types of the kept tokens, special ids renumbered.

Which tokens to keep: every piece llama.cpp's SentencePiece tokenizer forms (final or intermediate)
while tokenizing a corpus of the languages (the most frequent words of each), plus every single
character of their alphabets, byte tokens, special tokens and whitespace runs. Keeping the intermediate
pieces makes the pruned tokenizer reproduce the full one exactly on any text whose merges stay inside
the kept set, and the logits of kept tokens are unchanged (same rows, same hidden state), so greedy
output is identical whenever the full model's choice is a kept token.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeinfer.errors import ConversionError
from edgeinfer.paths import scratch_path

SPACE = "\u2581"  # SentencePiece's visible space
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # gguf token types
KEEP_CONTROL = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
                "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>")
# characters written in English, French, Spanish, German, Italian and Portuguese text
LATIN_CHARACTERS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "àâäçéèêëîïôöùûüÿœæñáíóúãõßìòÀÂÄÇÉÈÊËÎÏÔÖÙÛÜŸŒÆÑÁÍÓÚÃÕÌÒºª¿¡«»–—‘’“”…€£°§"
    " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\n\t"
)


def spm_pieces(text: str, score_of: dict[str, float]) -> tuple[list[str], set[str]]:
    """llama.cpp's SentencePiece (BPE-by-score) tokenization of ``text`` (spaces already written as
    U+2581): the final pieces, and every piece formed on the way (llm_tokenizer_spm_session)."""
    chars = list(text)
    texts = chars[:]
    prev = list(range(-1, len(chars) - 1))
    nxt = list(range(1, len(chars) + 1))
    nxt[-1:] = [-1] if chars else []
    alive = [True] * len(chars)
    heap: list[tuple[float, int, int, int, int]] = []

    def push(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        piece = texts[left] + texts[right]
        score = score_of.get(piece)
        if score is not None:
            heapq.heappush(heap, (-score, left, left, right, len(piece)))

    for i in range(len(chars) - 1):
        push(i, i + 1)
    formed: set[str] = set()
    while heap:
        _, _, left, right, size = heapq.heappop(heap)
        if not alive[left] or not alive[right] or len(texts[left]) + len(texts[right]) != size:
            continue
        texts[left] += texts[right]
        alive[right] = False
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        formed.add(texts[left])
        push(prev[left], left)
        push(left, nxt[left])
    return [texts[i] for i in range(len(chars)) if alive[i]], formed


def corpus_words(languages: Sequence[str], words_per_language: int) -> list[str]:
    """The most frequent words of each language (wordfreq, CC-BY-SA data; only needed to regenerate a
    shortlist), lower-case and capitalised, after a space and glued to what precedes them; German also
    with ß (wordfreq folds it to ss), Spanish also after ¿ and ¡; and punctuation after a space."""
    try:
        import wordfreq
    except ImportError as exc:
        raise ConversionError("building a shortlist needs wordfreq: pip install wordfreq") from exc
    out: set[str] = {SPACE + p for p in "¿¡?!:;«»()\"'-–—…%€$"}
    for language in languages:
        for word in wordfreq.top_n_list(language, words_per_language):
            forms = {word, word.capitalize()}
            if language == "de" and "ss" in word:
                forms |= {f.replace("ss", "ß") for f in forms}
            for form in forms:
                out.update((form, SPACE + form))
                if language == "es":
                    out.update((SPACE + "¿" + form, SPACE + "¡" + form))
    return sorted(out)


def tokenizer_fingerprint(tokens: Sequence[str]) -> str:
    """sha256 of the vocabulary (token texts in order): a shortlist fits only the tokenizer it was made on."""
    h = hashlib.sha256()
    for token in tokens:
        h.update(token.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def build_shortlist(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int],
                    texts: Iterable[str], characters: str = LATIN_CHARACTERS) -> np.ndarray:
    """Sorted ids to keep: pieces formed while tokenizing ``texts`` (closure included), the single
    characters of ``characters``, byte tokens, user-defined tokens and the named special tokens."""
    score_of = {t: float(s) for t, s, ty in zip(tokens, scores, types, strict=True) if ty == NORMAL}
    keep_text: set[str] = {c.replace(" ", SPACE) for c in characters}
    for text in texts:
        final, formed = spm_pieces(text.replace(" ", SPACE), score_of)
        keep_text.update(final)
        keep_text.update(formed)
    keep = [i for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
            if (ty == NORMAL and t in keep_text) or ty in (BYTE, USER_DEFINED)
            or (ty == CONTROL and t in KEEP_CONTROL)]
    return np.array(keep, dtype=np.int64)


@dataclass(frozen=True)
class Shortlist:
    """Kept token ids for one tokenizer, as shipped in edgeinfer/data/shortlists/*.json."""

    name: str
    fingerprint: str
    vocab_size: int
    keep: np.ndarray
    description: str = ""
    models: tuple[str, ...] = ()  # sha256 of the model files it was built for

    def to_json(self) -> str:
        mask = np.zeros(self.vocab_size, dtype=bool)
        mask[self.keep] = True
        packed = base64.b64encode(zlib.compress(np.packbits(mask).tobytes(), 9)).decode("ascii")
        return json.dumps({"name": self.name, "description": self.description, "models": list(self.models),
                           "tokenizer_sha256": self.fingerprint, "vocab_size": self.vocab_size,
                           "kept": int(len(self.keep)), "mask": packed}, indent=1) + "\n"

    @classmethod
    def from_json(cls, path: str | Path) -> Shortlist:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        bits = np.frombuffer(zlib.decompress(base64.b64decode(data["mask"])), dtype=np.uint8)
        mask = np.unpackbits(bits)[: data["vocab_size"]].astype(bool)
        return cls(data["name"], data["tokenizer_sha256"], int(data["vocab_size"]), np.flatnonzero(mask),
                   data.get("description", ""), tuple(data.get("models", ())))


def write_shortlisted_gguf(source: str | Path, output: str | Path, keep: np.ndarray) -> Path:
    """A copy of the GGUF ``source`` with only the ``keep`` token ids: embedding (and output) rows,
    token texts, scores and types, special token ids renumbered. Written to a temp file, then renamed."""
    import gguf

    from .gguf_fields import read_gguf

    source, output = Path(source), Path(output)
    fields, tensors = read_gguf(source)  # seconds, where gguf.GGUFReader takes half a minute on 262k tokens
    by_name = {f.name: f for f in fields}
    tokens = by_name["tokenizer.ggml.tokens"].value
    keep = np.asarray(keep, dtype=np.int64)
    if len(keep) == 0 or keep.min() < 0 or keep.max() >= len(tokens) or np.any(np.diff(keep) <= 0):
        raise ConversionError("a shortlist must be sorted, unique token ids within the vocabulary")
    new_id = {int(old): new for new, old in enumerate(keep)}
    arch = by_name["general.architecture"].value
    with scratch_path(output) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        for field in fields:
            if field.name == gguf.Keys.General.ARCHITECTURE:
                continue
            value = field.value
            if field.name in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
                value = [value[i] for i in keep]
            elif field.name.startswith("tokenizer.ggml.") and field.name.endswith("_token_id"):
                if int(value) not in new_id:
                    continue  # a special token the shortlist dropped: leave it unset
                value = new_id[int(value)]
            elif field.name == f"{arch}.vocab_size":
                value = len(keep)
            elif field.name == "tokenizer.ggml.merges":
                raise ConversionError("shortlists support SentencePiece (score-merged) vocabularies only")
            sub = gguf.GGUFValueType(field.sub_kind) if field.sub_kind is not None else None
            writer.add_key_value(field.name, value, gguf.GGUFValueType(field.kind), sub_type=sub)
        kept = []
        for tensor in tensors:
            data = tensor.data
            if tensor.name in ("token_embd.weight", "output.weight") and data.shape[0] == len(tokens):
                data = np.ascontiguousarray(data[keep])
            kept.append(data)
            writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data in kept:
            writer.write_tensor_data(data)
        writer.close()
        tmp.replace(output)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """Make a shortlist file (needs wordfreq):
    python -m edgeinfer_converters.shortlist MODEL.gguf -o OUT.json"""
    import argparse

    import gguf

    from edgeinfer.hashing import sha256_file

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model", help="the GGUF file the shortlist is for")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--name", default="latin6")
    parser.add_argument("--languages", default="en,fr,es,de,it,pt")
    parser.add_argument("--words", type=int, default=20000, help="most frequent words per language")
    parser.add_argument("--jsonl", action="append", default=[],
                        help="also keep every piece of the texts in this JSONL (its language keys), "
                             "e.g. the few-shot examples that start every prompt")
    args = parser.parse_args(argv)
    reader = gguf.GGUFReader(args.model)
    tokens, scores, types = (reader.fields[f"tokenizer.ggml.{k}"].contents()
                             for k in ("tokens", "scores", "token_type"))
    languages = args.languages.split(",")
    texts = corpus_words(languages, args.words)
    for path in args.jsonl:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                texts += [" " + row[code] for code in languages if code in row]
    keep = build_shortlist(tokens, scores, types, texts)
    description = (f"{', '.join(languages)}: the {args.words:,} most frequent words of each (wordfreq, "
                   "CC-BY-SA 4.0), their pieces, Latin letters, bytes and special tokens")
    shortlist = Shortlist(args.name, tokenizer_fingerprint(tokens), len(tokens), keep, description,
                          (sha256_file(Path(args.model)),))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(shortlist.to_json(), encoding="utf-8")
    print(f"kept {len(keep):,} of {len(tokens):,} tokens; wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
