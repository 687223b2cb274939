"""tokenizer.json -> GGUF vocabulary: llama.cpp must produce the HF tokenizer's ids, string by string.

Each tokenizer is written as a vocab-only GGUF, loaded by llama-cpp-python (``vocab_only=True``) and
compared with ``tokenizers`` on the same text, with and without special tokens.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import gguf
import pytest
from edgeinfer_converters.checkpoint import Checkpoint
from edgeinfer_converters.to_gguf import vocab as V
from hf_fixtures import minilm_dir, tokenizer_dir
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from edgeinfer.errors import CheckpointError, ConversionError

TEXTS: dict[str, str] = {
    "prose": "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see, won't we?",
    "accents": "café naïve über mañana Straße Ærø façade",
    "cjk": "日本語のテキストと中文，还有繁體字。",
    "hangul": "한국어 텍스트",
    "emoji": "emoji 👍🏽 and a family 👨‍👩‍👧‍👦 and 🏳️‍🌈 done",
    "spaces": "a   b    c",
    "tabs": "tab\there\t\tand\tthere",
    "newlines": "\n\n\n",
    "edges": "  leading and trailing  ",
    "code": "def f(x):\n    if x:\n        return x + 1\n    return None\n",
    "digits": "1234567 and 3.14159 and 1,000,000",
    "specials": "<|im_start|>user\nhi<|im_end|> [CLS] x [SEP] <start_of_turn>model<end_of_turn>",
    "mixed": "I'M DON'T we'LL\r\nHTTPServer getURL path/to/file.py?x=1&y=2",
    "scripts": "مرحبا بالعالم Привет мир Γειά σου κόσμε",
    "devanagari": "नमस्ते दुनिया",
    "unicode_spaces": "x\u00a0y\u2003z\u3000w",
}


def fake_checkpoint(root: Path) -> Checkpoint:
    """A Checkpoint over a tokenizer-only folder (add_vocab reads no weights)."""
    return Checkpoint(root=root, config={}, tensors={})


def tokenizer_size(root: Path) -> int:
    tok = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))
    return max([*tok["model"]["vocab"].values(), *(a["id"] for a in tok["added_tokens"])]) + 1


def write_vocab_gguf(root: Path, out: Path, *, arch: str = "llama",
                     n_vocab: int | None = None) -> dict[str, Any]:
    """A vocab-only GGUF at ``out`` (the hparams llama.cpp reads first, then add_vocab's keys); returns
    the tokenizer.* keys written (GGUFReader takes ~20 s to parse a 262k-token vocabulary back)."""
    writer = gguf.GGUFWriter(str(out), arch=arch)
    writer.add_context_length(512)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_layer_norm_eps(1e-12)
    if arch == "bert":
        writer.add_token_type_count(2)  # a model hparam: the BERT family writes it in real conversions
    V.add_vocab(writer, fake_checkpoint(root), n_vocab=n_vocab or tokenizer_size(root))
    kv = {k: v.value for k, v in writer.kv_data[0].items() if k.startswith("tokenizer.")}
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return kv


class Pair:
    """llama.cpp and HF tokenizers over the same tokenizer.json."""

    def __init__(self, root: Path, gguf_path: Path, kv: dict[str, Any]) -> None:
        import llama_cpp

        self.llama = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
        self.kv = kv
        self.hf = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.hf.no_padding()
        self.hf.no_truncation()

    def ours(self, text: str, add_special: bool) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)

    def theirs(self, text: str, add_special: bool) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special).ids

    def mismatches(self, texts: dict[str, str]) -> set[str]:
        """Names of the texts whose ids differ (with or without special tokens)."""
        return {name for name, text in texts.items() for add in (False, True)
                if self.ours(text, add) != self.theirs(text, add)}

    def explain(self, text: str, add_special: bool = False) -> str:
        show = self.hf.id_to_token
        ours, theirs = self.ours(text, add_special), self.theirs(text, add_special)
        return f"{text!r}: llama.cpp {[show(i) for i in ours]} != HF {[show(i) for i in theirs]}"

    def detokenize(self, ids: list[int]) -> str:
        return self.llama.detokenize(ids, special=True).decode("utf-8")

    def close(self) -> None:
        self.llama.close()


def make_pair(root: Path, tmp: Path, arch: str = "llama") -> Pair:
    path = tmp / "vocab.gguf"
    return Pair(root, path, write_vocab_gguf(root, path, arch=arch))


# --- the three real tokenizers -----------------------------------------------------------------
# Differences llama.cpp itself cannot avoid (its WordPiece normalizer is not HF's BertNormalizer):
WORDPIECE_LIMITS = {
    "hangul": "llama.cpp's NFD keeps only the first code point of a decomposition, so 한 becomes ᄒ "
              "and the vowel/final jamo HF keeps (ᅡ, ᆫ) are lost",
    "devanagari": "llama.cpp's strip_accents drops every combining mark (\\p{M}); HF drops only "
                  "nonspacing ones (Mn), keeping spacing vowel signs such as ि and ा (Mc)",
}
REAL = ("gemma3", "minilm", "smollm2")


@functools.cache
def real_dir(name: str) -> Path:
    """Each real tokenizer folder, looked up once per session (hf_fixtures may rebuild Gemma's)."""
    return minilm_dir() if name == "minilm" else tokenizer_dir(name)


@pytest.fixture(scope="module", params=REAL)
def real(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    root = real_dir(name)
    pair = make_pair(root, tmp_path_factory.mktemp(name), arch="bert" if name == "minilm" else "llama")
    pair.name = name
    yield pair
    pair.close()


@pytest.mark.slow
@pytest.mark.parametrize("text_name", sorted(TEXTS))
@pytest.mark.parametrize("add_special", [False, True])
def test_ids_match_hf(real: Pair, text_name: str, add_special: bool, request: pytest.FixtureRequest) -> None:
    if real.name == "minilm" and text_name in WORDPIECE_LIMITS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=WORDPIECE_LIMITS[text_name]))
    text = TEXTS[text_name]
    assert real.ours(text, add_special) == real.theirs(text, add_special), real.explain(text, add_special)


@pytest.mark.slow
@pytest.mark.parametrize("text_name", sorted(TEXTS))
def test_detokenize_round_trip(real: Pair, text_name: str) -> None:
    text = TEXTS[text_name]
    ids = real.theirs(text, False)
    if real.name == "minilm":  # lowercasing, accent stripping and [UNK] lose text: compare ids instead
        assert real.theirs(real.detokenize(ids), False) == ids
    else:
        assert real.detokenize(ids) == text


@pytest.mark.slow
def test_special_token_metadata(real: Pair) -> None:
    kv = real.kv
    expected = {
        "smollm2": {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                    "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                    "tokenizer.ggml.eot_token_id": 2,
                    "tokenizer.ggml.add_bos_token": False},
        "gemma3": {"tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 2,
                   "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.eot_token_id": 106,
                   "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": True,
                   "tokenizer.ggml.add_space_prefix": False},
        "minilm": {"tokenizer.ggml.model": "bert", "tokenizer.ggml.bos_token_id": 101,
                   "tokenizer.ggml.cls_token_id": 101, "tokenizer.ggml.seperator_token_id": 102,
                   "tokenizer.ggml.mask_token_id": 103, "tokenizer.ggml.padding_token_id": 0,
                   "tokenizer.ggml.unknown_token_id": 100, "tokenizer.ggml.add_sep_token": True,
                   "tokenizer.ggml.normalizer.lowercase": True},
    }[real.name]
    assert {k: kv.get(k) for k in expected} == expected
    if real.name == "smollm2":
        assert kv["tokenizer.chat_template"].startswith("{% for message in messages %}")
    if real.name == "gemma3":  # byte tokens and the SentencePiece scores llama.cpp merges by
        tokens, types, scores = (kv[f"tokenizer.ggml.{k}"] for k in ("tokens", "token_type", "scores"))
        assert types[tokens.index("<0x0A>")] == gguf.TokenType.BYTE
        assert types[tokens.index("<table>")] == gguf.TokenType.USER_DEFINED
        assert types[tokens.index("<end_of_turn>")] == gguf.TokenType.CONTROL
        assert scores[tokens.index("▁the")] > scores[tokens.index("▁Reactive")]


# --- every pre-tokenizer in the table, checked with SmolLM2's vocabulary --------------------------
def _split(regex: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
BYTES_ONLY = dict(BYTE_LEVEL, use_regex=False)
PRE_VARIANTS: dict[str, dict[str, Any]] = {
    "bytelevel": BYTE_LEVEL,
    "digits+bytelevel": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, BYTE_LEVEL]},
    **{regex_name: {"type": "Sequence", "pretokenizers": [_split(regex), BYTES_ONLY]}
       for regex_name, regex in [("gpt2", V.GPT2_RE), ("gpt2-short", V.GPT2_RE.removesuffix(r"|\s+")),
                                 ("llama3", V.LLAMA3_RE), ("qwen2", V.QWEN2_RE), ("qwen35", V.QWEN35_RE),
                                 ("gpt4o", V.GPT4O_RE), ("tekken", V.TEKKEN_RE), ("seed", V.SEED_CODER_RE)]},
}


def variant_dir(base: Path, out: Path, **fields: Any) -> Path:
    """A copy of ``base``'s tokenizer files with some tokenizer.json fields replaced."""
    tok = json.loads((base / "tokenizer.json").read_text(encoding="utf-8"))
    tok.update(copy.deepcopy(fields))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    (out / "tokenizer_config.json").write_bytes((base / "tokenizer_config.json").read_bytes())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(PRE_VARIANTS))
def test_each_pre_tokenizer_in_the_table_matches_hf(variant: str, tmp_path: Path) -> None:
    root = variant_dir(real_dir("smollm2"), tmp_path / "tok", pre_tokenizer=PRE_VARIANTS[variant])
    if variant == "llama3":  # as Llama 3 ships it (llama.cpp's llama-bpe sets ignore_merges too)
        tok = json.loads((root / "tokenizer.json").read_text())
        tok["model"]["ignore_merges"] = True
        (root / "tokenizer.json").write_text(json.dumps(tok))
    pair = make_pair(root, tmp_path)
    try:
        assert pair.mismatches(TEXTS) == set(), [pair.explain(TEXTS[n]) for n in pair.mismatches(TEXTS)]
    finally:
        pair.close()


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="llama.cpp does not apply the NFC normalizer (Qwen2/3 declare one)")
def test_nfc_normalizer_on_decomposed_text(tmp_path: Path) -> None:
    root = variant_dir(real_dir("smollm2"), tmp_path / "tok", normalizer={"type": "NFC"},
                       pre_tokenizer=PRE_VARIANTS["qwen2"])
    pair = make_pair(root, tmp_path)
    try:
        assert pair.mismatches(TEXTS) == set()  # composed text (all of TEXTS) matches
        assert pair.ours("e\u0301", False) == pair.theirs("e\u0301", False)  # decomposed "é" does not
    finally:
        pair.close()


# --- SentencePiece-style variants (Llama 2 / Mistral spellings), with Gemma 3's vocabulary -----------
REPLACE_SPACE = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
METASPACE_FIRST = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}

# HF's Metaspace prepends "▁" only to the first section and only when it does not already start with
# a space; llama.cpp's add_space_prefix prepends one to every text fragment (start of text and after
# each special or user-defined token). No GGUF setting expresses HF's rule, so these texts differ.
# Here: leading spaces ("edges", indented "code" lines) and text after Gemma's user-defined "\t"/"\n"
# tokens or special tokens ("tabs", "mixed", "specials", "code") get one "▁" more from llama.cpp.
METASPACE_LIMITS = {"code", "edges", "mixed", "specials", "tabs"}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["prepend-normalizer", "metaspace-first"])
def test_sentencepiece_space_prefix_variants(variant: str, tmp_path: Path) -> None:
    fields = {
        "prepend-normalizer": {"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, REPLACE_SPACE]}, "pre_tokenizer": None},
        "metaspace-first": {"normalizer": None, "pre_tokenizer": METASPACE_FIRST},
    }[variant]
    root = variant_dir(real_dir("gemma3"), tmp_path / "tok", **fields)
    pair = make_pair(root, tmp_path)
    try:
        assert pair.kv["tokenizer.ggml.add_space_prefix"] is True
        expected = set() if variant == "prepend-normalizer" else METASPACE_LIMITS
        assert pair.mismatches(TEXTS) == expected, [pair.explain(TEXTS[n]) for n in pair.mismatches(TEXTS)]
    finally:
        pair.close()


# --- fast unit tests: a tiny trained tokenizer, the pre-tokenizer table, padding, refusals --------
def tiny_bytelevel_dir(root: Path) -> Path:
    """A ~300-token byte-level BPE trained in memory (GPT-2 style), with chat special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text * 3 for text in TEXTS.values()], trainer)
    root.mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
              "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}
    (root / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return root


def test_tiny_bytelevel_tokenizer_matches_hf_and_pads(tmp_path: Path) -> None:
    root = tiny_bytelevel_dir(tmp_path / "tok")
    size = tokenizer_size(root)
    path = tmp_path / "vocab.gguf"
    pair = Pair(root, path, write_vocab_gguf(root, path, n_vocab=size + 3))
    try:
        assert pair.mismatches(TEXTS) == set(), [pair.explain(TEXTS[n]) for n in pair.mismatches(TEXTS)]
        assert pair.detokenize(pair.theirs(TEXTS["code"], False)) == TEXTS["code"]
    finally:
        pair.close()
    reader = gguf.GGUFReader(path)  # read back from the file: what llama.cpp will see
    kv = {name: field.contents() for name, field in reader.fields.items()}
    assert kv["tokenizer.ggml.tokens"][size:] == [f"[PAD{i}]" for i in range(size, size + 3)]
    assert kv["tokenizer.ggml.token_type"][size:] == [gguf.TokenType.UNUSED] * 3
    assert kv["tokenizer.ggml.token_type"][2] == gguf.TokenType.CONTROL
    assert kv["tokenizer.ggml.eot_token_id"] == 2
    assert kv["tokenizer.chat_template"] == "{% for m in messages %}{{ m.content }}{% endfor %}"


def test_more_tokens_than_embedding_rows_is_refused(tmp_path: Path) -> None:
    root = tiny_bytelevel_dir(tmp_path / "tok")
    writer = gguf.GGUFWriter(None, arch="llama")
    with pytest.raises(ConversionError, match="embedding matrix only 100 rows"):
        V.add_vocab(writer, fake_checkpoint(root), n_vocab=100)


def test_missing_tokenizer_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="no tokenizer.json .it has only tokenizer.model"):
        V.add_vocab(gguf.GGUFWriter(None, arch="llama"), fake_checkpoint(tmp_path), n_vocab=10)


def bytelevel_json(pre: dict[str, Any] | None, normalizer: dict[str, Any] | None = None) -> dict[str, Any]:
    model = {"type": "BPE", "vocab": {}, "merges": []}
    return {"normalizer": normalizer, "pre_tokenizer": pre, "model": model}


@pytest.mark.parametrize(("pre", "name"), [
    (BYTE_LEVEL, "gpt-2"),
    (PRE_VARIANTS["digits+bytelevel"], "smollm"),
    (PRE_VARIANTS["llama3"], "llama-bpe"),
    (PRE_VARIANTS["qwen2"], "qwen2"),
    (PRE_VARIANTS["gpt4o"], "gpt-4o"),
])
def test_pre_tokenizer_is_derived_from_the_regexes(pre: dict[str, Any], name: str) -> None:
    assert V.tokenizer_kind(bytelevel_json(pre)) == "gpt2"
    assert V.pre_tokenizer_name(bytelevel_json(pre)) == name
    assert V.pre_tokenizer_name(bytelevel_json(pre, {"type": "NFC"})) == name


@pytest.mark.parametrize(("pre", "normalizer", "message"), [
    ({"type": "Sequence", "pretokenizers": [_split(r"\p{L}+|\p{N}+|[^\s]+"), BYTES_ONLY]}, None,
     r"regex\(es\) \['\\\\p\{L\}\+\|\\\\p\{N\}\+\|\[\^\\\\s\]\+'\] are not supported"),
    ({"type": "Sequence", "pretokenizers": [dict(_split(V.GPT2_RE), behavior="Removed"), BYTES_ONLY]}, None,
     "behavior 'Removed'"),
    (dict(BYTE_LEVEL, add_prefix_space=True), None, "add_prefix_space"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, BYTE_LEVEL]}, None, "'Whitespace'"),
    (BYTE_LEVEL, {"type": "Lowercase"}, "Lowercase normalizer"),
])
def test_unknown_pre_tokenizers_are_refused(pre: dict[str, Any], normalizer: dict[str, Any] | None,
                                            message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        V.pre_tokenizer_name(bytelevel_json(pre, normalizer))


@pytest.mark.parametrize(("model", "message"), [
    ({"type": "Unigram", "vocab": []}, "Unigram model"),
    ({"type": "BPE", "vocab": {}, "merges": []}, "neither byte-level"),
])
def test_unsupported_tokenizer_models(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        V.tokenizer_kind({"normalizer": None, "pre_tokenizer": None, "model": model})


def test_sentencepiece_scores_follow_merge_ranks() -> None:
    tok = {"model": {"merges": [["▁", "t"], ["h", "e"], ["▁t", "he"], ["▁", "th"]]}}
    scores = V.merge_scores(tok, ["<0x41>", "▁", "▁t", "he", "▁the", "zz"])
    assert scores[2] > scores[3] > scores[4] > scores[0] == scores[5]  # unmerged tokens rank last


def test_wordpiece_phantom_space() -> None:
    normal, control = gguf.TokenType.NORMAL, gguf.TokenType.CONTROL
    tokens = [("hello", normal), ("##ing", normal), ("[CLS]", control)]
    assert [V.phantom_space(t, ty) for t, ty in tokens] == ["▁hello", "ing", "[CLS]"]


def test_duplicate_token_texts_are_refused() -> None:
    with pytest.raises(ConversionError, match="tokens 1 and 3 are both 'a b'"):
        V.check_unique(["x", "a b", "y", "a b"])


def _tiny_tok(**fields: Any) -> dict[str, Any]:
    """A three-token tokenizer.json with <s> and </s> as special tokens."""
    added = [{"id": i, "content": text, "special": True} for i, text in enumerate(["<s>", "</s>"])]
    model = {"type": "BPE", "vocab": {"<s>": 0, "</s>": 1, "a": 2}, "merges": []}
    tok = {"model": model, "added_tokens": added}
    tok.update(fields)
    return tok


LLAMA3_POST = {"type": "Sequence", "processors": [
    {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
    {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                              {"Sequence": {"id": "A", "type_id": 0}}],
     "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}}]}


@pytest.mark.parametrize(("post", "expected"), [
    (None, None),
    ({"type": "ByteLevel"}, None),
    (LLAMA3_POST, (0, None)),
    ({"type": "BertProcessing", "cls": ["<s>", 0], "sep": ["</s>", 1]}, (0, 1)),
])
def test_tokens_added_by_the_post_processor(post: dict[str, Any] | None, expected: Any) -> None:
    assert V.template_specials(_tiny_tok(post_processor=post)) == expected


def test_post_processor_bos_must_agree_with_the_bos_token(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "</s>"}))
    writer = gguf.GGUFWriter(None, arch="llama")
    with pytest.raises(ConversionError, match="adds token 0 where the bos token is 1"):
        V.add_special_tokens(writer, fake_checkpoint(tmp_path), _tiny_tok(post_processor=LLAMA3_POST),
                             ["<s>", "</s>", "a"], "gpt2")
