"""Tiny replicas of real models' layouts, for converter tests: built offline, cached by their inputs.

``layout_checkpoint(name)`` (a ``LAYOUTS`` key) is a Hugging Face folder shaped like the real model:

- config.json as the real one spells it (transformers 4.x keys: architectures, model_type, rope_theta
  and rope_scaling, Phi-3's longrope factors, Qwen3's head_dim, Gemma 3's sliding window pattern and
  query_pre_attn_scalar, tying, torch_dtype, bos/eos/pad ids), with tiny sizes: a hidden size of 64-112,
  2 layers (Gemma 3: 7, five local then one global then one local), the real head ratios;
- a tokenizer of the real family's type, trained here with ``tokenizers`` on the bundled texts plus a
  multilingual sample (``corpus()``), with the real special tokens placed where the real ones sit
  relative to the vocabulary (after it for Llama 3 / Qwen / Phi, at its start for SmolLM2 / Gemma),
  the real pipeline (normalizer, pre-tokenizer regex, post-processor, byte fallback) and the real
  chat template in tokenizer_config.json; generation_config.json where the real repo has one;
- random weights (seeded; random 1-D norms so a missed offset shows), in the real dtype
  (bfloat16), except where ``Layout.dtype`` says float32.

What a replica does not copy: the vocabulary itself (1-2k trained tokens instead of 32k-262k, so
every id differs from the real one), the real weights, and the sizes. ``Layout.notes`` lists the
layout-specific differences.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hf_fixtures import cache_key, cached_build

BUILDER_VERSION = "1"  # bump when a builder changes what it writes
SPACE = "\u2581"

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
O200K_RE = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# A multilingual sample for training (and the parity/tokenizer texts of the tests): the bundled
# English texts alone would leave every other script to byte fallback or single bytes.
CORPUS_EXTRA = """\
La maison est très belle et le jardin est plein de fleurs. Nous avons mangé du pain frais, du fromage
et des pommes ; ensuite, nous sommes allés à la bibliothèque pour lire des romans et des journaux.
Où est la gare ? Il faut prendre le deuxième train, celui de huit heures et quart.

Die Brücke über den Fluss ist alt, aber sie hält noch immer. Im Frühling ist das Wasser braun und laut,
im Spätsommer klar und flach. Wir haben Grüße aus München geschickt und über die Straße gelacht.

¿Dónde está la biblioteca? La ciudad tiene muchas calles estrechas, plazas con fuentes y mercados
llenos de frutas. Mañana vamos a visitar el museo y después comeremos paella con nuestros amigos.

O tempo passa devagar nas pequenas cidades do interior. As crianças brincam na praça e os avós
conversam à sombra das árvores. Ela disse: «Não te preocupes, amanhã será melhor.»

Привет! Как дела? Москва — столица России, а Санкт-Петербург стоит на Неве. Мы читали книги,
пили чай и говорили о погоде, о работе и о детях. Зимой здесь очень холодно и много снега.

Γειά σου κόσμε. Η Αθήνα είναι μια αρχαία πόλη με πολλά μουσεία. Το καλοκαίρι η θάλασσα είναι ζεστή.

今日は天気がいいので、公園を散歩しました。日本語のテキストには漢字、ひらがな、カタカナが混ざっています。
東京の駅はとても大きくて、毎日たくさんの人が電車に乗ります。ありがとうございます。

中文文本的例子：我们今天去图书馆看书，然后在河边散步。这座桥已经有一百多年的历史了。
北京是中国的首都，上海是最大的城市。谢谢你的帮助！还有繁體字的例子：這是一個測試。

한국어 텍스트입니다. 서울은 한국의 수도이고, 부산은 바다가 아름다운 도시입니다. 감사합니다.

مرحبا بالعالم. القاهرة مدينة كبيرة على نهر النيل، والناس يشربون الشاي في المساء.

नमस्ते दुनिया। भारत में कई भाषाएँ बोली जाती हैं, और हर शहर की अपनी कहानी है।

Türkçe metin: İstanbul'da köprüden geçerken denizi seyrettik. Việt Nam có nhiều món ăn ngon.

def largest_even(numbers: list[int]) -> int | None:
    evens = [n for n in numbers if n % 2 == 0]
    return max(evens) if evens else None


for (let i = 0; i < items.length; i++) {
\tconsole.log(`item ${i}: ${items[i]}`);
}

SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;
In 1905, Einstein published 4 papers; the speed of light is 299,792,458 m/s and pi is 3.14159.
Prices: $12.99, €7,50, ¥1200 — 50% off! Email: someone@example.com, https://example.org/a/b?x=1&y=2
Emoji: 👍 🙂 🎉 ❤️ and I'M sure we'LL see, DON'T worry; it's 5 o'clock.
"""

# Text the tests tokenize with both tokenizers (llama.cpp and tokenizer.json): partly outside the
# training sample, so rare merges, byte fallback and every script's pre-tokenizer rule all show
# (words with combining marks are tested apart: llama.cpp's gpt-4o pre-tokenizer splits them).
MULTILINGUAL_CHECK = (
    "Hello world! Grüße aus Köln, ça va très bien. ¿Qué tal? Привет, мир! Γειά σου. 日本語のテキスト、"
    "中文文本和繁體字。한국어 텍스트. مرحبا بالعالم שלום עולם. Zürich’s café naïve 👍🏽 🏳️‍🌈\n"
    "def f(x):\n    return x ** 2  # 12345 3.14159\n\n\ttabs\tand  two  spaces   three"
)

PARITY_TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1905, Einstein published four papers that "
    "changed physics; la maison est très belle, und die Brücke ist alt. def f(x):\n    return x * 2\n"
    "Every town has a bridge that people cross without thinking about it."
)


def corpus() -> list[str]:
    """Training paragraphs: the converters' bundled texts and ``CORPUS_EXTRA``."""
    data = resources.files("edgeinfer_converters") / "data"
    names = ("quality_text.txt", "calibration_text.txt")
    texts = [(data / name).read_text(encoding="utf-8") for name in names]
    texts.append(CORPUS_EXTRA)
    return [p for text in texts for p in text.split("\n\n") if p.strip()]


# --- tokenizer.json pieces ------------------------------------------------------------------------
def added(token_id: int, content: str, *, special: bool = True, rstrip: bool = False) -> dict[str, Any]:
    """One ``added_tokens`` entry, as tokenizer.json writes it."""
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": rstrip,
            "normalized": False, "special": special}


def byte_level(**fields: Any) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True, **fields}


def split(regex: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def bos_template(bos: str, bos_id: int) -> dict[str, Any]:
    """A TemplateProcessing that puts ``bos`` before each sequence (Llama 3, Gemma)."""
    def piece(kind: str, name: str, type_id: int) -> dict[str, Any]:
        return {kind: {"id": name, "type_id": type_id}}

    return {"type": "TemplateProcessing",
            "single": [piece("SpecialToken", bos, 0), piece("Sequence", "A", 0)],
            "pair": [piece("SpecialToken", bos, 0), piece("Sequence", "A", 0),
                     piece("SpecialToken", bos, 1), piece("Sequence", "B", 1)],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def train_byte_level(pre: list[dict[str, Any]], vocab_size: int, *, front: tuple[str, ...] = (),
                     ignore_merges: bool = False) -> dict[str, Any]:
    """A byte-level BPE (GPT-2 style) trained on ``corpus()`` with the pre-tokenizer steps ``pre``
    (tokenizer.json spelling); ``front`` tokens take the first ids (model vocab and added tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    data = json.loads(Tokenizer(models.BPE(ignore_merges=ignore_merges)).to_str())
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": pre} if len(pre) > 1 else pre[0]
    tok = Tokenizer.from_str(json.dumps(data))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=list(front),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    data = json.loads(tok.to_str())
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return data


def sentencepiece_pieces(*, prepend: bool, vocab_size: int, no_newlines: bool) -> list[str]:
    """Pieces of a SentencePiece-style BPE trained on ``corpus()`` ("▁" for spaces), best first:
    characters, then merge results in training order. ``no_newlines`` drops pieces with a newline or
    tab (Llama 2's vocabulary spells them with byte fallback)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    steps = [normalizers.Prepend(SPACE)] if prepend else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE)])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")  # training only: pieces within words
    texts = corpus()
    alphabet = spm_alphabet(texts, 160)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, limit_alphabet=len(alphabet),
                                  initial_alphabet=alphabet)
    tok.train_from_iterator(texts, trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    pieces = sorted(vocab, key=vocab.__getitem__)
    return [p for p in pieces if not (no_newlines and ("\n" in p or "\t" in p))]


def spm_alphabet(texts: list[str], size: int) -> list[str]:
    """The characters a SentencePiece-style vocabulary keeps as pieces: printable ASCII and "▁", then
    the most frequent others up to ``size`` (ties by code point: the trainer's own cut is not stable);
    the rest are spelled with byte tokens."""
    counts = Counter(c for text in texts for c in text.replace(" ", SPACE) if not c.isspace() or c == "\n")
    alphabet = [chr(c) for c in range(33, 127)] + [SPACE]
    others = sorted((c for c in counts if c not in alphabet), key=lambda c: (-counts[c], c))
    return alphabet + others[: max(size - len(alphabet), 0)]


def sentencepiece_merges(vocab: dict[str, int], pieces: list[str]) -> list[list[str]]:
    """Merges as transformers' SentencePiece converter writes them: every split of every piece into
    two pieces, ordered by the merged piece's rank (its place in ``pieces``), then by the parts' ids."""
    known = set(pieces)
    merges: list[list[str]] = []
    for piece in pieces:
        local = [(piece[:i], piece[i:]) for i in range(1, len(piece))
                 if piece[:i] in known and piece[i:] in known]
        merges += [list(pair) for pair in sorted(local, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))]
    return merges


def sentencepiece_json(front: list[dict[str, Any]], pieces: list[str], back: list[dict[str, Any]], *,
                       added_only: list[dict[str, Any]], normalizer: dict[str, Any],
                       pre_tokenizer: dict[str, Any] | None, post_processor: dict[str, Any] | None,
                       decoder: dict[str, Any]) -> dict[str, Any]:
    """tokenizer.json of a SentencePiece-converted BPE: ``front`` added tokens (ids 0..), the 256 byte
    tokens, ``pieces``, ``back`` added tokens (all these in the model vocab), then ``added_only`` ones
    (in added_tokens only, as tokens added to a converted SentencePiece model are)."""
    vocab: dict[str, int] = {}
    for entry in front:
        assert entry["id"] == len(vocab), entry
        vocab[entry["content"]] = entry["id"]
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    normal = [p for p in pieces if p not in vocab]
    for piece in normal:
        vocab[piece] = len(vocab)
    for entry in back:
        assert entry["id"] == len(vocab), entry
        vocab[entry["content"]] = entry["id"]
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
             "vocab": vocab, "merges": sentencepiece_merges(vocab, normal)}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [*front, *back, *added_only], "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer, "post_processor": post_processor, "decoder": decoder,
            "model": model}


SPM_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"}]}
LLAMA2_DECODER = {"type": "Sequence", "decoders": [
    *SPM_DECODER["decoders"], {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
REPLACE_SPACE = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}


def padded(size: int, multiple: int) -> int:
    """The next multiple of ``multiple`` above ``size`` (real vocabularies pad their embedding rows)."""
    return (size // multiple + 1) * multiple


# --- the layouts --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Files:
    """What a layout builder writes besides the weights."""

    config: dict[str, Any]
    tokenizer: dict[str, Any]
    tokenizer_config: dict[str, Any]
    generation_config: dict[str, Any] | None = None


@dataclass(frozen=True)
class Layout:
    """One replica: the real repo it copies, its chat control tokens, and what differs from the real."""

    real: str  # the Hugging Face repo it replicates
    controls: tuple[str, ...]  # control tokens a rendered chat prompt holds as single special ids
    build: Callable[[], Files] = field(repr=False)
    dtype: str = "bfloat16"  # of the saved weights
    notes: tuple[str, ...] = ()


def llama32() -> Files:
    pre = [split(LLAMA3_RE), byte_level(use_regex=False)]
    tok = train_byte_level(pre, 1792, ignore_merges=True)
    n = len(tok["model"]["vocab"])  # the real one: 128000 BPE tokens, then 256 specials
    named = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 2: "<|reserved_special_token_0|>",
             3: "<|reserved_special_token_1|>", 4: "<|finetune_right_pad_id|>",
             5: "<|reserved_special_token_2|>", 6: "<|start_header_id|>", 7: "<|end_header_id|>",
             8: "<|eom_id|>", 9: "<|eot_id|>", 10: "<|python_tag|>"}
    tok["added_tokens"] = [added(n + i, named.get(i, f"<|reserved_special_token_{i - 8}|>"))
                           for i in range(256)]
    tok["post_processor"] = {"type": "Sequence", "processors": [
        byte_level(add_prefix_space=True, trim_offsets=False), bos_template("<|begin_of_text|>", n)]}
    config = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": n, "eos_token_id": [n + 1, n + 8, n + 9], "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 256,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 1, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": n + 256,
    }
    tokenizer_config = {"bos_token": "<|begin_of_text|>", "chat_template": LLAMA32_TEMPLATE,
                        "clean_up_tokenization_spaces": True, "eos_token": "<|eot_id|>",
                        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
                        "tokenizer_class": "PreTrainedTokenizerFast"}
    generation = {"bos_token_id": n, "do_sample": True, "eos_token_id": [n + 1, n + 8, n + 9],
                  "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.45.0.dev0"}
    return Files(config, tok, tokenizer_config, generation)


QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
QWEN_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
              "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")  # added tokens that are not special
QWEN3_ADDED = ("<tool_response>", "</tool_response>", "<think>", "</think>")


def qwen_files(version: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The Qwen2.5/Qwen3 tokenizer (they share it; Qwen3 adds four tokens), its config, and its size."""
    tok = train_byte_level([split(QWEN2_RE), byte_level(use_regex=False, trim_offsets=False)], 1800)
    n = len(tok["model"]["vocab"])  # the real one: 151643 BPE tokens, then the added ones
    names = [(t, True) for t in QWEN_SPECIALS] + [(t, False) for t in QWEN_ADDED]
    names += [(t, False) for t in QWEN3_ADDED] if version == "3" else []
    tok["added_tokens"] = [added(n + i, t, special=s) for i, (t, s) in enumerate(names)]
    tok["normalizer"] = {"type": "NFC"}
    tok["post_processor"] = byte_level(trim_offsets=False, use_regex=False)
    tokenizer_config = {
        "add_bos_token": False, "add_prefix_space": False,
        "additional_special_tokens": list(QWEN_SPECIALS[1:]), "bos_token": None,
        "chat_template": QWEN3_TEMPLATE if version == "3" else QWEN25_TEMPLATE,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    return tok, tokenizer_config, n


def qwen25() -> Files:
    tok, tokenizer_config, n = qwen_files("2.5")
    size = n + len(tok["added_tokens"])
    config = {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": n,
        "eos_token_id": n + 2, "hidden_act": "silu", "hidden_size": 112, "initializer_range": 0.02,
        "intermediate_size": 608, "max_position_embeddings": 32768, "max_window_layers": 21,
        "model_type": "qwen2", "num_attention_heads": 7, "num_hidden_layers": 2, "num_key_value_heads": 1,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": True,
        "use_sliding_window": False, "vocab_size": padded(size, 128),  # real: 151665 tokens, 151936 rows
    }
    generation = {"bos_token_id": n, "pad_token_id": n, "do_sample": True, "eos_token_id": [n + 2, n],
                  "repetition_penalty": 1.1, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                  "transformers_version": "4.37.0"}
    return Files(config, tok, tokenizer_config, generation)


def qwen3() -> Files:
    tok, tokenizer_config, n = qwen_files("3")
    size = n + len(tok["added_tokens"])
    config = {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": n, "eos_token_id": n + 2, "head_dim": 128, "hidden_act": "silu", "hidden_size": 64,
        "initializer_range": 0.02, "intermediate_size": 192, "max_position_embeddings": 40960,
        "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": padded(size, 128),  # real: 151669 tokens, 151936 rows
    }
    generation = {"bos_token_id": n, "do_sample": True, "eos_token_id": [n + 2, n], "pad_token_id": n,
                  "temperature": 0.6, "top_k": 20, "top_p": 0.95, "transformers_version": "4.51.0"}
    return Files(config, tok, tokenizer_config, generation)


def longrope_factors(n: int) -> tuple[list[float], list[float]]:
    """Phi-3-style short (~1, rising) and long (1 to ~60, rising) rope factors for ``n`` frequencies."""
    short = [round(1.0 + 1.5 * (i / (n - 1)) ** 3, 4) for i in range(n)]
    long = [round(math.exp(math.log(64.0) * (i / (n - 1)) ** 2), 4) for i in range(n)]
    return short, long


PHI35_ADDED = ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
               "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>",
               "<|placeholder6|>", "<|user|>")


def phi35() -> Files:
    pieces = sentencepiece_pieces(prepend=True, vocab_size=1400, no_newlines=True)
    pieces = [SPACE * k for k in (2, 4, 3, 8, 6, 5, 7, 16)] + pieces  # Llama 2 has "▁▁" runs (code indents)
    front = [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")]
    n = 3 + 256 + len([p for p in dict.fromkeys(pieces) if p not in ("<unk>", "<s>", "</s>")])
    # Phi-3's chat tokens strip the whitespace after them (rstrip), except <|endoftext|>
    chat = [added(n + i, t, rstrip=t != "<|endoftext|>") for i, t in enumerate(PHI35_ADDED)]
    normalizer = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, REPLACE_SPACE]}
    tok = sentencepiece_json(front, list(dict.fromkeys(pieces)), [], added_only=chat, normalizer=normalizer,
                             pre_tokenizer=None, post_processor=None, decoder=LLAMA2_DECODER)
    assert len(tok["model"]["vocab"]) == n
    short, long = longrope_factors(24 // 2)  # head_dim 24: 12 rotary frequencies (real: 96 -> 48)
    config = {
        "_name_or_path": "Phi-3.5-mini-instruct", "architectures": ["Phi3ForCausalLM"],
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0,
        "eos_token_id": n, "hidden_act": "silu", "hidden_size": 96, "initializer_range": 0.02,
        "intermediate_size": 256, "max_position_embeddings": 131072, "model_type": "phi3",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 4,
        "original_max_position_embeddings": 4096, "pad_token_id": n, "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": long, "short_factor": short, "type": "longrope"},
        "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.43.3", "use_cache": True,
        "vocab_size": padded(n + len(chat), 64),  # real: 32011 tokens, 32064 rows
    }
    tokenizer_config = {
        "add_bos_token": False, "add_eos_token": False, "bos_token": "<s>", "chat_template": PHI35_TEMPLATE,
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "legacy": False,
        "model_max_length": 131072, "pad_token": "<|endoftext|>", "padding_side": "left",
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    generation = {"bos_token_id": 1, "eos_token_id": [n + 7, n + 1, n], "pad_token_id": n,
                  "transformers_version": "4.43.3"}
    return Files(config, tok, tokenizer_config, generation)


# Phi-4-mini's added tokens, by offset from the end of its o200k BPE vocabulary (199998 tokens); the
# ids between them hold <|dummy_N|> tokens (the tokenizers library numbers added tokens consecutively,
# so a tokenizer.json cannot leave them out)
PHI4_ADDED = {1: "<|endoftext|>", 20: "<|endofprompt|>", 21: "<|assistant|>", 22: "<|end|>", 23: "<|user|>",
              24: "<|system|>", 25: "<|tool|>", 26: "<|/tool|>", 27: "<|tool_call|>", 28: "<|/tool_call|>",
              29: "<|tool_response|>", 30: "<|tag|>"}


def phi4_mini() -> Files:
    tok = train_byte_level([split(O200K_RE), byte_level(use_regex=False)], 2000)
    n = len(tok["model"]["vocab"])
    dummies = (f"<|dummy_{i}|>" for i in range(31))
    tok["added_tokens"] = [added(n + off, PHI4_ADDED.get(off) or next(dummies)) for off in range(31)]
    tok["post_processor"] = byte_level(trim_offsets=False)
    eot = n + 1
    short, long = longrope_factors(int(32 * 0.75) // 2)  # head_dim 32, 3/4 rotary: 12 (real: 128 -> 48)
    config = {
        "_name_or_path": "Phi-4-mini-instruct", "architectures": ["Phi3ForCausalLM"],
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": eot, "embd_pdrop": 0.0,
        "eos_token_id": eot, "full_attn_mod": 1, "hidden_act": "silu", "hidden_size": 96,
        "initializer_range": 0.02, "intermediate_size": 256, "interpolate_factor": 1, "lm_head_bias": False,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "phi3",
        "num_attention_heads": 3, "num_hidden_layers": 2, "num_key_value_heads": 1,
        "original_max_position_embeddings": 4096, "pad_token_id": eot, "partial_rotary_factor": 0.75,
        "resid_pdrop": 0.0, "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": long, "short_factor": short, "type": "longrope"},
        "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.45.0", "use_cache": True,
        "vocab_size": padded(n + 31, 64),  # real: 200029 tokens, 200064 rows
    }
    tokenizer_config = {
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "bos_token": "<|endoftext|>", "chat_template": PHI4_MINI_TEMPLATE,
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "model_max_length": 131072,
        "pad_token": "<|endoftext|>", "tokenizer_class": "GPT2Tokenizer", "unk_token": "<|endoftext|>",
    }
    generation = {"bos_token_id": eot, "eos_token_id": [n + 22, eot], "pad_token_id": eot,
                  "transformers_version": "4.45.0"}
    return Files(config, tok, tokenizer_config, generation)


GEMMA_HTML = tuple(  # user-defined tokens 168-237 of the real vocabulary
    "<table> <caption> <thead> <tbody> <tfoot> <tr> <th> <td> </table> </caption> </thead> </tbody> "
    "</tfoot> </tr> </th> </td> <h1> <h2> <h3> <h4> <h5> <h6> <blockquote> </h1> </h2> </h3> </h4> </h5> "
    "</h6> </blockquote> <strong> <em> <b> <i> <u> <s> <sub> <sup> <code> </strong> </em> </b> </i> </u> "
    "</s> </sub> </sup> </code> <a> <html> <body> <img> <span> <bbox> <ul> <li> <div> <iframe> <footer> "
    "</a> </html> </body> </img> </span> </bbox> </ul> </li> </div> </iframe> </footer>".split())


def gemma3_1b() -> Files:
    front = [added(i, t) for i, t in enumerate(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"))]
    front.append(added(5, "[multimodal]", special=False))
    front += [added(6 + i, f"<unused{i}>") for i in range(99)]
    front += [added(105, "<start_of_turn>"), added(106, "<end_of_turn>")]
    front += [added(107 + i, "\n" * (i + 1), special=False) for i in range(31)]
    space_runs = [SPACE * k for k in range(2, 32)]  # ids 138-167 in the real vocabulary: plain pieces
    # in the real vocabulary the HTML tags follow the space runs; here (pieces go after the byte
    # tokens) they come before them, still ahead of every trained piece
    front += [added(138 + i, t, special=False) for i, t in enumerate(GEMMA_HTML)]
    pieces = space_runs + sentencepiece_pieces(prepend=False, vocab_size=1800, no_newlines=False)
    pieces = [p for p in dict.fromkeys(pieces) if p not in {e["content"] for e in front}]
    n = len(front) + 256 + len(pieces)
    back = [added(n + i, "\t" * (i + 1), special=False) for i in range(31)]
    back += [added(n + 31, "<start_of_image>", special=False), added(n + 32, "<end_of_image>", special=False)]
    back += [added(n + 33 + i, f"<unused{99 + i}>") for i in range(8)]
    rows = n + len(back)
    past = [added(rows, "<image_soft_token>")]  # as in gemma-3-1b: one token past the embedding rows
    tok = sentencepiece_json(front, pieces, back, added_only=past, normalizer=REPLACE_SPACE,
                             pre_tokenizer={"type": "Split", "pattern": {"String": " "},
                                            "behavior": "MergedWithPrevious", "invert": False},
                             post_processor=bos_template("<bos>", 2), decoder=SPM_DECODER)
    config = {
        "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid",
        "eos_token_id": [1, 106], "final_logit_softcapping": None, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 384, "max_position_embeddings": 32768, "model_type": "gemma3_text",
        "num_attention_heads": 4, "num_hidden_layers": 7, "num_key_value_heads": 1, "pad_token_id": 0,
        "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
        "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 32, "sliding_window_pattern": 6,
        "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": True,
        "vocab_size": rows,
    }
    tokenizer_config = {
        "add_bos_token": True, "add_eos_token": False, "boi_token": "<start_of_image>", "bos_token": "<bos>",
        "chat_template": GEMMA3_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eoi_token": "<end_of_image>", "eos_token": "<eos>", "image_token": "<image_soft_token>",
        "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>", "sp_model_kwargs": None,
        "spaces_between_special_tokens": False, "tokenizer_class": "GemmaTokenizer", "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    generation = {"bos_token_id": 2, "cache_implementation": "hybrid", "do_sample": True,
                  "eos_token_id": [1, 106], "pad_token_id": 0, "top_k": 64, "top_p": 0.95,
                  "transformers_version": "4.50.0.dev0"}
    return Files(config, tok, tokenizer_config, generation)


SMOLLM2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                    "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
                    "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>",
                    "<jupyter_script>", "<empty_output>")


def smollm2() -> Files:
    pre = [{"type": "Digits", "individual_digits": True}, byte_level()]
    tok = train_byte_level(pre, 2048, front=SMOLLM2_SPECIALS)
    tok["post_processor"] = byte_level(trim_offsets=False)
    size = len(tok["model"]["vocab"])
    config = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 96,
        "initializer_range": 0.041666666666666664, "intermediate_size": 256, "is_llama_config": True,
        "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 3,
        "num_hidden_layers": 2, "num_key_value_heads": 1, "pad_token_id": 2, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
        "use_cache": True, "vocab_size": size,
    }
    tokenizer_config = {
        "add_prefix_space": False, "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|im_start|>", "chat_template": SMOLLM2_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "model_max_length": 8192, "pad_token": "<|im_end|>",
        "tokenizer_class": "GPT2Tokenizer", "unk_token": "<|endoftext|>", "vocab_size": size,
    }
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "transformers_version": "4.42.3"}
    return Files(config, tok, tokenizer_config, generation)


LAYOUTS: dict[str, Layout] = {
    "llama3.2": Layout(
        "meta-llama/Llama-3.2-1B-Instruct", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        notes=("head_dim 64 and 4:1 query:kv heads as the real one, hidden 64 instead of 2048",),
        build=llama32),
    "qwen2.5": Layout(
        "Qwen/Qwen2.5-0.5B-Instruct", ("<|im_start|>", "<|im_end|>"),
        notes=("7:1 heads as the real one, head_dim 16 instead of 64 (hidden 112)",
               "vocab_size padded past the tokenizer (to a multiple of 128) as the real one"),
        build=qwen25),
    "qwen3": Layout(
        "Qwen/Qwen3-0.6B", ("<|im_start|>", "<|im_end|>"),
        notes=("head_dim 128 (> hidden / heads) and q/k norms as the real one",
               "float32 weights (real: bfloat16), so the F32-checkpoint path is covered too"),
        build=qwen3, dtype="float32"),
    "phi3.5": Layout(
        "microsoft/Phi-3.5-mini-instruct", ("<|system|>", "<|user|>", "<|end|>", "<|assistant|>"),
        notes=("longrope with 12 made-up short/long factors (real: 48 published ones)",
               "~1.6k trained pieces instead of Llama 2's 32k; chat tokens rstrip as the real ones"),
        build=phi35),
    "phi4-mini": Layout(
        "microsoft/Phi-4-mini-instruct", ("<|system|>", "<|user|>", "<|end|>", "<|assistant|>"),
        notes=("partial rotary 0.75 and longrope with 12 made-up factors (real: 48)",
               "3:1 heads as the real one, head_dim 32 instead of 128",
               "<|dummy_N|> tokens between the chat tokens (the real file's fillers may differ)"),
        build=phi4_mini),
    "gemma3-1b": Layout(
        "google/gemma-3-1b-it", ("<start_of_turn>", "<end_of_turn>"),
        notes=("sliding_window 32 instead of 512, so the parity text crosses it",
               "unused/newline/HTML/tab/image tokens as the real ones, fewer of the unused ones"),
        build=gemma3_1b),
    "smollm2": Layout(
        "HuggingFaceTB/SmolLM2-135M-Instruct", ("<|im_start|>", "<|im_end|>"),
        notes=("3:1 heads as the real one, head_dim 32 instead of 64",
               "Digits + ByteLevel pre-tokenizer as the real one (llama.cpp's smollm)",
               "float32 weights (real: bfloat16)"),
        build=smollm2, dtype="float32"),
}


def layout_checkpoint(name: str) -> Path:
    """The tiny replica of layout ``name`` (a ``LAYOUTS`` key), built on first use and cached under a
    digest of its files (the tokenizer trains in well under a second; the weights are what is cached)."""
    layout = LAYOUTS[name]
    files = layout.build()
    files.config["torch_dtype"] = layout.dtype  # what the weights are saved as
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(files), sort_keys=True).encode()).hexdigest()

    def build(out: Path) -> None:
        write_json(out / "config.json", files.config)
        write_json(out / "tokenizer.json", files.tokenizer)
        write_json(out / "tokenizer_config.json", files.tokenizer_config)
        if files.generation_config is not None:
            write_json(out / "generation_config.json", files.generation_config)
        write_weights(out, layout.dtype)

    key = cache_key("layout", name, BUILDER_VERSION, layout.dtype, digest)
    return cached_build(f"layout-{name}", key, build)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_weights(out: Path, dtype: str) -> None:
    """Random weights for the config at ``out``: seeded, large enough for peaky attention (so rope and
    windows show in the logits), random 1-D norms and biases, saved as model.safetensors in ``dtype``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(out)
    config.initializer_range = 0.1
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    model = model.to(getattr(torch, dtype))
    scratch = out / ".weights"
    model.save_pretrained(scratch, safe_serialization=True)
    for item in scratch.glob("*.safetensors*"):
        item.rename(out / item.name)
    shutil.rmtree(scratch)


def special_ids(root: Path, texts: Iterable[str]) -> dict[str, int]:
    """Ids of the added tokens ``texts`` in the checkpoint's tokenizer.json."""
    tok = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))
    ids = {a["content"]: a["id"] for a in tok["added_tokens"]}
    return {t: ids[t] for t in texts}


# --- chat templates, as the real models' tokenizer_config.json files carry them (long lines and all) --
LLAMA32_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""  # noqa: E501 - the published template, verbatim

QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501 - the published template, verbatim

QWEN3_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""  # noqa: E501 - the published template, verbatim

PHI35_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

PHI4_MINI_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + "
    "message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + "
    "message['content'] + '<|end|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
