"""tokenizer.json -> the GGUF vocabulary (``tokenizer.ggml.*`` keys) that llama.cpp tokenizes with.

Three tokenizer kinds, told apart by tokenizer.json alone (no sentencepiece, no transformers):

- byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen2/3) -> model "gpt2": tokens, merges, and a
  ``tokenizer.ggml.pre`` derived from the pre-tokenizer regexes through ``PRE_TOKENIZERS``;
- SentencePiece-style BPE with byte fallback and "▁" for spaces (Gemma 3, Llama 2, Mistral, Phi-3)
  -> model "llama": llama.cpp merges the pair whose *result* scores highest, so each token's score is
  minus the rank of the first merge that makes it;
- WordPiece (BERT) -> model "bert" with llama.cpp's phantom-space spelling ("##x" -> "x", "x" -> "▁x").

Gaps llama.cpp cannot close (tests/test_convert_vocab.py and tests/test_real_layouts.py pin them): it
applies no NFC normalizer (Qwen2/3 declare one), it prepends "▁" to every text fragment where HF's
Metaspace prepends only to the first one not starting with a space, its WordPiece NFD/accent stripping
differs from HF's on Hangul and Indic vowel signs, its "gpt-4o" pre-tokenizer (Phi-4-mini's o200k
regex) ends a word before a combining mark (Devanagari vowel signs, decomposed accents) that
the regex keeps inside it, and added tokens' lstrip/rstrip flags have no GGUF key (llama.cpp sets
rstrip itself for a model named Phi-3, whose chat tokens have it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import gguf

from edgeinfer.errors import CheckpointError, ConversionError

from ..checkpoint import Checkpoint

T = gguf.TokenType
SPACE = "\u2581"  # "▁", SentencePiece's visible space

# Pre-tokenizer regexes as tokenizer.json spells them (Split patterns, Digits, ByteLevel's built-in
# regex), in order -> the llama.cpp pre-tokenizer that splits text the same way (llama-vocab.cpp).
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
             r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O_RE = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_RE = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
             r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
             r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SEED_CODER_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
DIGIT_RE = r"\p{N}"  # Digits(individual_digits=True)
DIGITS_RE = r"\p{N}+"  # Digits(individual_digits=False)

PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    (GPT2_RE,): "gpt-2",
    (GPT2_RE.removesuffix(r"|\s+"),): "gpt-2",  # same split: the trailing \s+ only takes end-of-text spaces
    (DIGIT_RE, GPT2_RE): "smollm",  # also StarCoder, Refact, Command-R (same regexes)
    (LLAMA3_RE,): "llama-bpe",
    (QWEN2_RE,): "qwen2",
    (QWEN35_RE,): "qwen35",
    (GPT4O_RE,): "gpt-4o",
    (TEKKEN_RE,): "tekken",
    (SEED_CODER_RE,): "seed-coder",
}

EOT_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")  # end-of-turn markers by chat format
KEYS = gguf.Keys.Tokenizer
SPECIAL_KEYS = {"bos": KEYS.BOS_ID, "eos": KEYS.EOS_ID, "unk": KEYS.UNK_ID, "sep": KEYS.SEP_ID,
                "pad": KEYS.PAD_ID, "mask": KEYS.MASK_ID, "cls": "tokenizer.ggml.cls_token_id",
                "eot": KEYS.EOT_ID}
SPECIAL_ROLES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")  # as tokenizer_config.json names them
BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


def add_vocab(writer: gguf.GGUFWriter, ckpt: Checkpoint, *, n_vocab: int) -> None:
    """Write the tokenizer.ggml.* keys (and the chat template) for this checkpoint."""
    tok = ckpt.tokenizer_json
    if tok is None:
        hint = " (it has only tokenizer.model)" if (ckpt.root / "tokenizer.model").is_file() else ""
        raise CheckpointError(
            f"{ckpt.root} has no tokenizer.json{hint}; save a fast tokenizer with "
            "AutoTokenizer.from_pretrained(src).save_pretrained(dir) and convert again"
        )
    kind = tokenizer_kind(tok)
    tokens, types = base_vocab(tok, n_vocab)
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        writer.add_tokenizer_pre(pre_tokenizer_name(tok))
        writer.add_token_merges(merge_strings(tok))
    elif kind == "llama":
        check_sentencepiece(tok)
        writer.add_tokenizer_pre("default")
        tokens, types = sentencepiece_tokens(tokens, types)
        writer.add_token_scores(merge_scores(tok, tokens))
        writer.add_add_space_prefix(adds_space_prefix(tok))
    else:
        writer.add_tokenizer_pre("default")
        tokens = [phantom_space(t, ty) for t, ty in zip(tokens, types, strict=True)]
        lowercase, strip_accents = bert_normalizer(tok)
        writer.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)
        writer.add_bool("tokenizer.ggml.normalizer.strip_accents", strip_accents)
    check_unique(tokens)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    add_special_tokens(writer, ckpt, tok, tokens, kind)
    template = ckpt.chat_template()
    if template:
        writer.add_chat_template(template)


def tokenizer_kind(tok: dict[str, Any]) -> str:
    """The llama.cpp tokenizer model ("gpt2", "llama" or "bert") that reproduces this tokenizer.json."""
    model = tok.get("model") or {}
    mtype = model.get("type")
    if mtype == "WordPiece":
        return "bert"
    if mtype != "BPE":
        raise ConversionError(
            f"tokenizer.json has a {mtype or 'missing'} model; edgeinfer converts BPE (byte-level or "
            "SentencePiece-style) and WordPiece tokenizers only"
        )
    if any(p.get("type") == "ByteLevel" for p in _steps(tok.get("pre_tokenizer"))):
        if any(model.get(k) for k in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix")):
            raise ConversionError("tokenizer.json mixes byte-level BPE with byte fallback or subword "
                                  "affixes, which llama.cpp's BPE tokenizer cannot reproduce")
        return "gpt2"
    if model.get("byte_fallback") and _uses_space_marker(tok):
        return "llama"
    raise ConversionError(
        "tokenizer.json is a BPE tokenizer that is neither byte-level (ByteLevel pre-tokenizer) nor "
        "SentencePiece-style (byte_fallback with '▁' for spaces); llama.cpp has no equivalent"
    )


def base_vocab(tok: dict[str, Any], n_vocab: int) -> tuple[list[str], list[int]]:
    """Token texts and types by id (added tokens as HF matches them), padded to ``n_vocab`` rows.

    Added tokens past the embedding rows are left out, as llama.cpp's converter does: the model cannot
    read or emit them (Gemma 3 1B's tokenizer has ``<image_soft_token>`` one past its 262144 rows).
    """
    vocab = tok["model"].get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise CheckpointError("tokenizer.json's model has no vocab; the file is incomplete, save it again")
    check_added_ids(tok)
    by_id: dict[int, tuple[str, int]] = {i: (t, T.NORMAL) for t, i in vocab.items()}
    for added in tok.get("added_tokens") or []:
        if added["id"] >= n_vocab:
            if by_id.get(added["id"], (added["content"],))[0] == added["content"]:
                by_id.pop(added["id"], None)  # a model vocab entry of another text there is still refused
            continue
        by_id[added["id"]] = (added["content"], T.CONTROL if added.get("special") else T.USER_DEFINED)
    size = max(by_id, default=-1) + 1
    if size > n_vocab:
        raise ConversionError(
            f"the tokenizer has {size} tokens but the embedding matrix only {n_vocab} rows; "
            "tokenizer.json does not belong to these weights"
        )
    rows = [by_id.get(i, (f"[PAD{i}]", T.UNUSED)) for i in range(n_vocab)]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def check_added_ids(tok: dict[str, Any]) -> None:
    """Refuse added tokens whose listed id is not the one the ``tokenizers`` library gives them.

    It ignores the listed ids: an added token that is not in the model's vocabulary gets the next id
    after the vocabulary (and the added tokens before it), in file order. So ids with gaps between
    them are read as other ids, and a GGUF written from the listed ones would not match the model.
    """
    vocab = tok["model"]["vocab"]
    if max(vocab.values()) + 1 != len(vocab):
        return  # a vocabulary with holes: tokenizers versions number added tokens differently there
    given: dict[str, int] = {}
    next_id = len(vocab)
    for added in tok.get("added_tokens") or []:
        text = added.get("content")
        if not text or text in given:
            continue
        if text in vocab:
            given[text] = vocab[text]
        else:
            given[text], next_id = next_id, next_id + 1
        if added.get("id") != given[text]:
            raise ConversionError(
                f"tokenizer.json lists added token {text!r} as id {added.get('id')}, but the tokenizers "
                f"library reads it as {given[text]} (added tokens outside the model's vocabulary are "
                "numbered on from its end, in file order, so listed ids with gaps are not kept); fill the "
                "gaps or fix the ids")


def pre_tokenizer_name(tok: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer of a byte-level BPE tokenizer.json (see PRE_TOKENIZERS)."""
    normalizer = tok.get("normalizer")
    if normalizer and normalizer.get("type") != "NFC":
        # NFC is accepted: llama.cpp does not normalize, so only non-NFC input can tokenize differently
        raise ConversionError(f"byte-level BPE with a {normalizer.get('type')} normalizer is not supported")
    regexes: list[str] = []
    for step in _steps(tok.get("pre_tokenizer")):
        kind = step.get("type")
        if kind == "ByteLevel":
            if step.get("add_prefix_space"):
                raise ConversionError("ByteLevel(add_prefix_space=true) is not supported by llama.cpp's BPE")
            if step.get("use_regex", True):
                regexes.append(GPT2_RE)
        elif kind == "Digits":
            regexes.append(DIGIT_RE if step.get("individual_digits") else DIGITS_RE)
        elif kind == "Split":
            if step.get("behavior") != "Isolated" or step.get("invert"):
                raise ConversionError(f"Split pre-tokenizer with behavior {step.get('behavior')!r} "
                                      f"(invert={step.get('invert')}) is not supported; only Isolated")
            pattern = step.get("pattern") or {}
            regexes.append(pattern["Regex"] if "Regex" in pattern else re.escape(pattern.get("String", "")))
        else:
            raise ConversionError(f"pre-tokenizer step {kind!r} is not supported for byte-level BPE")
    name = PRE_TOKENIZERS.get(tuple(regexes))
    if name is None:
        raise ConversionError(
            f"pre-tokenizer regex(es) {regexes} are not supported: llama.cpp splits text with a fixed set "
            "of regexes and none matches this tokenizer, so token ids would differ"
        )
    return name


def merge_strings(tok: dict[str, Any]) -> list[str]:
    """BPE merges as llama.cpp reads them: "left right", one string each."""
    merges = []
    for merge in tok["model"].get("merges") or []:
        pair = merge.split(" ", 1) if isinstance(merge, str) else merge
        if len(pair) != 2 or any(" " in part for part in pair):
            raise ConversionError(f"BPE merge {merge!r} has a space inside a token, which GGUF cannot store")
        merges.append(f"{pair[0]} {pair[1]}")
    return merges


def merge_scores(tok: dict[str, Any], tokens: list[str]) -> list[float]:
    """SentencePiece scores from merge ranks: the earlier a token's first merge, the higher its score."""
    rank: dict[str, int] = {}
    for i, merge in enumerate(tok["model"].get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, i)
    unmerged = -float(len(rank) + 1)  # below every merge: llama.cpp prefers anything a merge makes
    return [-float(rank[t]) if t in rank else unmerged for t in tokens]


def check_sentencepiece(tok: dict[str, Any]) -> None:
    """Refuse SentencePiece-style pipelines llama.cpp's SPM tokenizer would not follow."""
    normalizer = _steps(tok.get("normalizer"))
    for step in normalizer:
        marks_space = SPACE in (step.get("content"), step.get("prepend"))
        if step.get("type") not in ("Replace", "Prepend") or not marks_space:
            raise ConversionError(f"SentencePiece-style BPE with a {step.get('type')} normalizer step "
                                  f"{step} is not supported")
    spaces_replaced = any(step.get("type") == "Replace" for step in normalizer)
    for step in _steps(tok.get("pre_tokenizer")):
        splits_space = step.get("type") == "Split" and step.get("pattern") == {"String": " "}
        no_op_split = splits_space and spaces_replaced  # Gemma: no spaces are left to split on
        if not (no_op_split or step.get("type") == "Metaspace"):
            raise ConversionError(f"SentencePiece-style BPE with pre-tokenizer step {step.get('type')!r} "
                                  "is not supported")


def sentencepiece_tokens(tokens: list[str], types: list[int]) -> tuple[list[str], list[int]]:
    """SPM spelling: <0xNN> tokens are BYTE; user-defined ones hold real spaces (matched as raw text)."""
    pairs = [(t.replace(SPACE, " "), ty) if ty == T.USER_DEFINED else
             (t, T.BYTE if ty == T.NORMAL and BYTE_TOKEN.fullmatch(t) else ty)
             for t, ty in zip(tokens, types, strict=True)]
    n_bytes = sum(ty == T.BYTE for _, ty in pairs)
    if n_bytes != 256:
        raise ConversionError(f"a byte-fallback tokenizer needs all 256 <0xNN> tokens; it has {n_bytes}")
    return [t for t, _ in pairs], [ty for _, ty in pairs]


def adds_space_prefix(tok: dict[str, Any]) -> bool:
    """Whether the tokenizer puts "▁" before the text (Prepend normalizer or Metaspace prepend)."""
    for step in _steps(tok.get("normalizer")):
        if step.get("type") == "Prepend":
            return True
    for step in _steps(tok.get("pre_tokenizer")):
        if step.get("type") == "Metaspace":
            prepends = step.get("prepend_scheme", "always") != "never"  # older files: add_prefix_space
            return prepends and bool(step.get("add_prefix_space", True))
    return False


def phantom_space(token: str, toktype: int) -> str:
    """llama.cpp's WordPiece spelling: word starts carry "▁", continuations lose their "##"."""
    if toktype == T.CONTROL:
        return token
    return token[2:] if token.startswith("##") else SPACE + token


def bert_normalizer(tok: dict[str, Any]) -> tuple[bool, bool]:
    """(lowercase, strip_accents) of a WordPiece tokenizer, refusing pipelines llama.cpp lacks."""
    model, normalizer, pre = tok["model"], tok.get("normalizer") or {}, tok.get("pre_tokenizer") or {}
    if model.get("continuing_subword_prefix", "##") != "##" or pre.get("type") != "BertPreTokenizer":
        raise ConversionError("only BERT-style WordPiece (BertPreTokenizer, '##' continuations) is supported")
    if normalizer and normalizer.get("type") != "BertNormalizer":
        raise ConversionError(f"WordPiece with a {normalizer.get('type')} normalizer is not supported")
    lowercase = bool(normalizer.get("lowercase", False))
    strip = normalizer.get("strip_accents")
    return lowercase, lowercase if strip is None else bool(strip)


def add_special_tokens(writer: gguf.GGUFWriter, ckpt: Checkpoint, tok: dict[str, Any],
                       tokens: list[str], kind: str) -> None:
    """bos/eos/unk/sep/pad/cls/mask/eot ids and whether bos/eos (BERT: sep) are added when encoding."""
    ids = special_ids(ckpt, tok)
    if kind == "bert":  # llama.cpp's BERT uses bos as [CLS] and eos as [SEP]
        for role, alias in (("bos", "cls"), ("eos", "sep")):
            if role not in ids and alias in ids:
                ids[role] = ids[alias]
    eot = next((tokens.index(t) for t in EOT_TOKENS if t in tokens), None)
    if eot is not None:
        ids["eot"] = eot
    template = template_specials(tok)
    if template is None:  # no post-processor that adds tokens: tokenizer_config's flags, if any
        add_bos, add_eos = (bool(ckpt.tokenizer_config.get(f"add_{r}_token", False)) for r in ("bos", "eos"))
    else:
        add_bos, add_eos = (token_id is not None for token_id in template)
        last_role = "sep" if kind == "bert" else "eos"
        for role, token_id in zip(("bos", last_role), template, strict=True):
            if token_id is not None and ids.setdefault(role, token_id) != token_id:
                raise ConversionError(f"tokenizer.json's post-processor adds token {token_id} where the "
                                      f"{role} token is {ids[role]}; fix tokenizer_config.json")
    for role, token_id in ids.items():
        if 0 <= token_id < len(tokens):
            writer.add_uint32(SPECIAL_KEYS[role], token_id)
    writer.add_add_bos_token(add_bos)
    if kind == "bert":
        writer.add_add_sep_token(add_eos)
        writer.add_add_eos_token(False)
    else:
        writer.add_add_eos_token(add_eos)


def special_ids(ckpt: Checkpoint, tok: dict[str, Any]) -> dict[str, int]:
    """Special token ids by role, from tokenizer_config.json, special_tokens_map.json, then config.json."""
    lookup = dict(tok["model"]["vocab"])
    lookup.update({a["content"]: a["id"] for a in tok.get("added_tokens") or []})
    path = ckpt.root / "special_tokens_map.json"
    token_map = json_object(path) if path.is_file() else {}
    ids: dict[str, int] = {}
    for role in SPECIAL_ROLES:
        for source in (ckpt.tokenizer_config, token_map):
            entry = source.get(f"{role}_token")
            text = entry.get("content") if isinstance(entry, dict) else entry
            if isinstance(text, str) and text in lookup:
                ids[role] = lookup[text]
                break
        else:
            token_id = ckpt.text_config().get(f"{role}_token_id")
            if isinstance(token_id, int) and token_id >= 0:
                ids[role] = token_id
    return ids


def template_specials(tok: dict[str, Any]) -> tuple[int | None, int | None] | None:
    """Ids of the special tokens the post-processor puts before/after one sequence (None: no template)."""
    for step in _steps(tok.get("post_processor")):
        if step.get("type") in ("BertProcessing", "RobertaProcessing"):
            return step["cls"][1], step["sep"][1]
        if step.get("type") == "TemplateProcessing":
            specials = step.get("special_tokens") or {}
            names = [(piece.get("SpecialToken") or {}).get("id") for piece in step.get("single") or []]
            ids = [specials[n]["ids"][0] if n in specials else None for n in names] or [None]
            return ids[0], ids[-1] if len(ids) > 1 else None
    return None


def check_unique(tokens: list[str]) -> None:
    """llama.cpp refuses a vocabulary with two tokens of the same text: say which, before it does."""
    seen: dict[str, int] = {}
    for i, text in enumerate(tokens):
        if text in seen:
            raise ConversionError(f"tokens {seen[text]} and {i} are both {text!r} in the GGUF spelling; "
                                  "llama.cpp cannot load a vocabulary with duplicate tokens")
        seen[text] = i


def json_object(path: Path) -> dict[str, Any]:
    """A JSON object file (empty if it holds something else); unreadable JSON is a CheckpointError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    return data if isinstance(data, dict) else {}


def _steps(node: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The steps of a tokenizer.json pipeline stage, flattening Sequence nodes."""
    if not node:
        return []
    for key in ("pretokenizers", "normalizers", "processors"):
        if key in node:
            return [s for child in node[key] for s in _steps(child)]
    return [node]


def _uses_space_marker(tok: dict[str, Any]) -> bool:
    """True when spaces become "▁" (Replace/Prepend normalizer or Metaspace), SentencePiece-style."""
    marks = [s for s in _steps(tok.get("normalizer")) if s.get("type") in ("Replace", "Prepend")]
    marks += [s for s in _steps(tok.get("pre_tokenizer")) if s.get("type") == "Metaspace"]
    return any(SPACE in (s.get("content", ""), s.get("prepend", ""), s.get("replacement", "")) for s in marks)
