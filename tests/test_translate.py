"""ei.Translator on the real Gemma 3 270M (its shortlisted GGUF): prompts, batching, memory, streaming,
bad input, the CLI; and the pieces under it (sentence splitting, language detection, the SQLite memory,
the vocabulary shortlist against llama.cpp's own tokenizer)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from edgeinfer_converters import prepare
from edgeinfer_converters.gguf_fields import read_gguf
from edgeinfer_converters.shortlist import NORMAL, SPACE, Shortlist, spm_pieces
from waits import EvalGate

import edgeinfer as ei
from edgeinfer.loader import locate_model
from edgeinfer.prepared import shortlist_for
from edgeinfer.translate.languages import detect_language
from edgeinfer.translate.memory import TranslationMemory
from edgeinfer.translate.prompts import few_shot_prompt
from edgeinfer.translate.segment import segments

EVAL = Path(ei.__file__).parent / "data" / "translation_eval.jsonl"


def eval_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- sentence splitting ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, sentences", [
    ("Hello world. How are you? I am fine!", ["Hello world.", "How are you?", "I am fine!"]),
    ("Dr. Rossi arrives at 7.30 today. Then we eat.", ["Dr. Rossi arrives at 7.30 today.", "Then we eat."]),
    ("e.g. this stays whole. Yes.", ["e.g. this stays whole.", "Yes."]),
    ("<b>Hi</b> 👋 there.\n\nSecond one. ¿Qué tal? Bien.",
     ["Hi", "there.", "Second one.", "¿Qué tal?", "Bien."]),
    ("<b>Hi</b> 👋 [b]there[/b] [url=https://example.org/a?b=1]the docs[/url]",
     ["Hi", "there", "the docs"]),  # BBCode tags pass through like HTML ones
    ("Use a[0] and [1].", ["Use a[0] and [1]."]),  # brackets that are not tags stay in the sentence
    ("  42 -- ", []),
])
def test_segments_split_sentences_and_keep_the_rest(text: str, sentences: list[str]):
    parts = segments(text)
    assert "".join(p.text for p in parts) == text  # nothing lost, nothing added
    assert [p.text for p in parts if p.translate] == sentences


# --- language detection ------------------------------------------------------------------------------
@pytest.mark.parametrize("word_lists, at_least", [(True, 0.99), (False, 0.85)])
def test_detection_never_contradicts_the_right_language_on_the_eval_set(word_lists: bool, at_least: float):
    """A false "wrong source language" would refuse a correct request: on the project's 432 sentences the
    detector either names the right language or abstains (or leads by too little to refuse), with the word
    lists (wordfreq) and with the function words it falls back on without them."""
    right = abstained = 0
    for row in eval_rows():
        for code in ei.LANGUAGES:
            found = detect_language(row[code], word_lists=word_lists)
            assert not found.contradicts(code), f"{row[code]!r} ({code}) taken for {found.language}"
            right += found.language == code
            abstained += found.language != code
    assert right >= at_least * (right + abstained), (right, abstained)


def test_one_to_four_words_are_told_and_never_guessed_wrong():
    """240 inputs of 1-4 words (greetings, answers, short questions): none is taken for another language,
    and nearly all are named; a word spelled alike in several languages is not guessed."""
    rows = [json.loads(line) for line in (EVAL.parent / "language_id_short.jsonl").read_text(
        encoding="utf-8").splitlines() if line.strip()]
    found = [(detect_language(r["text"]).language, r["lang"], r["text"]) for r in rows]
    assert not [(text, lang, got) for got, lang, text in found if got is not None and got != lang]
    assert sum(got == lang for got, lang, _ in found) >= 0.95 * len(rows)
    for word in ("Hello", "Good morning, my friend.", "Danke", "Obrigado", "Buonanotte", "la gare"):
        assert detect_language(word).language is not None, word
    for word in ("taxi", "Maria", "hotel", "no", "OK", "42", "Zzzz."):
        assert detect_language(word).language is None, word


# --- the translation memory --------------------------------------------------------------------------
def test_memory_keeps_sentences_and_history(tmp_path: Path):
    memory = TranslationMemory(tmp_path / "tm.sqlite3")
    assert memory.get("m", "en", "fr", "Hello.") is None
    memory.put("m", "en", "fr", "Hello.", "Bonjour.")
    assert memory.get("m", "en", "fr", "Hello.") == "Bonjour."
    assert memory.get("m", "en", "de", "Hello.") is None
    for i in range(3):
        memory.add_history("m", "en", "fr", f"text {i}", f"texte {i}")
    assert [h.source_text for h in memory.history(2)] == ["text 2", "text 1"]
    memory.close()
    reopened = TranslationMemory(tmp_path / "tm.sqlite3")  # persisted
    assert reopened.get("m", "en", "fr", "Hello.") == "Bonjour." and len(reopened) == 1
    reopened.close()


def test_a_damaged_memory_file_is_moved_aside(tmp_path: Path):
    path = tmp_path / "tm.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    memory = TranslationMemory(path)
    memory.put("m", "en", "fr", "Yes.", "Oui.")
    assert memory.get("m", "en", "fr", "Yes.") == "Oui."
    kept = list(tmp_path.glob("tm.sqlite3.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not")
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(kept[0]).execute("SELECT 1 FROM sentences").fetchone()


# --- the shortlist -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma_path() -> Path:
    return locate_model("gemma-3-270m").path


def test_our_spm_simulation_matches_llama_cpp(gemma_path: Path):
    reader = gguf.GGUFReader(str(gemma_path))
    tokens, scores, types = (reader.fields[f"tokenizer.ggml.{k}"].contents()
                             for k in ("tokens", "scores", "token_type"))
    score_of = {t: float(s) for t, s, ty in zip(tokens, scores, types, strict=True) if ty == NORMAL}
    index = {t: i for i, t in enumerate(tokens)}
    with ei.load(gemma_path, n_threads=1, n_ctx=256) as model:
        for row in eval_rows()[::6]:
            for code in ei.LANGUAGES:
                text = " " + row[code]
                final, formed = spm_pieces(text.replace(" ", SPACE), score_of)
                assert [index[f] for f in final] == model.tokenize(text, add_special=False)
                assert set(final) <= formed | set(text.replace(" ", SPACE))


def test_the_fast_gguf_reader_reads_what_gguf_reads(smollm2_path: Path, tmp_path: Path):
    """The shortlist builder reads GGUFs with ``read_gguf`` (seconds, where gguf.GGUFReader takes half a
    minute on Gemma's vocabulary): every field and tensor equals what gguf.GGUFReader reads."""
    fields, tensors = read_gguf(smollm2_path)
    reader = gguf.GGUFReader(str(smollm2_path))
    theirs = {f.name: f for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    assert [f.name for f in fields] == list(theirs)
    for field in fields:
        other = theirs[field.name]
        sub = other.types[-1] if len(other.types) > 1 else None
        assert (field.kind, field.sub_kind) == (other.types[0], sub)
        assert field.value == other.contents(), field.name
    assert [t.name for t in tensors] == [t.name for t in reader.tensors]
    for mine, other in zip(tensors, reader.tensors, strict=True):
        assert mine.tensor_type == other.tensor_type and mine.data.shape == other.data.shape
        assert np.array_equal(mine.data, other.data), mine.name
    with open(smollm2_path, "rb") as handle:  # a truncated copy: a clear error, not a crash
        (tmp_path / "cut.gguf").write_bytes(handle.read(8 << 20))
    with pytest.raises(ei.ConversionError, match="past the end"):
        read_gguf(tmp_path / "cut.gguf")


@pytest.fixture(scope="module")
def translator(tmp_path_factory: pytest.TempPathFactory):
    prepare("gemma-3-270m")  # what `edgeinfer pull gemma-3-270m` does: the vocabulary shortlist, once
    with ei.Translator(memory=tmp_path_factory.mktemp("tm") / "tm.sqlite3", n_threads=2) as tr:
        yield tr


def test_the_default_model_runs_on_the_shipped_shortlist(translator, gemma_path: Path):
    entry = ei.ModelLock.load().get("gemma-3-270m")
    shipped = Shortlist.from_json(shortlist_for(entry.sha256)[0])
    pruned = translator.model.path
    assert pruned.name.endswith(f"-{shipped.name}.gguf") and pruned.parent.name == "converted"
    reader = gguf.GGUFReader(str(pruned))
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == len(shipped.keep) < 0.4 * 262144
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert int(embd.shape[1]) == len(shipped.keep)
    # the same text gets the same tokens (renumbered), and greedy output is the full model's
    with ei.load(gemma_path, n_threads=2, n_ctx=1024) as full:
        for row in eval_rows()[:3]:
            prompt = few_shot_prompt(row["en"], "en", "fr")
            ids = translator.model.tokenize(prompt)
            assert [int(shipped.keep[i]) for i in ids] == full.tokenize(prompt)
            assert (translator.model.generate(prompt, max_tokens=24, temperature=0, stop=["\n"]).text
                    == full.generate(prompt, max_tokens=24, temperature=0, stop=["\n"]).text)


# --- the translator ----------------------------------------------------------------------------------
def test_translates_and_streams(translator):
    stream = translator.stream("The weather is nice today.", to="fr", source="en")
    pieces = list(stream)
    done = stream.translation
    assert len(pieces) > 2 and "".join(pieces) == done.text
    assert done.text and done.text != "The weather is nice today."
    assert (done.source, done.target) == ("en", "fr")
    # exactly what the model gives for the same few-shot prompt
    prompt = few_shot_prompt("The weather is nice today.", "en", "fr")
    direct = translator.model.generate(prompt, max_tokens=40, temperature=0, stop=["\n"])
    assert done.text == direct.text.strip()
    assert done.stats.model == "gemma-3-270m"
    assert done.stats.completion_tokens > 0 and done.stats.tokens_per_s > 0


def test_a_long_text_is_one_batch_of_sentences_that_reuse_the_examples(translator):
    text = "I like tea. My brother lives in Berlin.\n\nThe museum opens at nine. <b>Thank you!</b> 🙂"
    done = translator.translate(text, to="de", source="en")
    assert done.stats.sentences == 4
    assert done.text.count("\n\n") == 1 and "<b>" in done.text and "</b>" in done.text and "🙂" in done.text
    assert done.stats.cached_tokens >= 0.6 * done.stats.prompt_tokens  # the examples came from the cache


def test_repeats_come_from_the_memory(translator):
    first = translator.translate("Where is the train station?", to="es", source="en")
    again = translator.translate("Where is the train station?", to="es", source="en")
    assert not first.from_memory and again.from_memory and again.text == first.text
    assert again.stats.completion_tokens == 0  # nothing generated: answered from the memory
    latest = translator.history(1)[0]
    assert (latest.source_text, latest.text) == ("Where is the train station?", first.text)
    assert latest.target == "es"


def test_the_source_is_detected_when_not_given(translator):
    assert translator.translate("Je voudrais un café, s'il vous plaît.", to="en").source == "fr"


@pytest.mark.parametrize("text, to, source, error, message", [
    ("   ", "fr", "en", ei.EmptyTextError, "no text"),
    ("word " * 4000, "fr", "en", ei.TextTooLongError, "20,000 characters"),
    ("Hello.", "ja", "en", ei.UnsupportedLanguageError, "unsupported language 'ja'"),
    ("Hello.", "en", "en", ei.UnsupportedLanguageError, "both English"),
    ("Je ne sais pas où est la gare, mais elle est très loin.", "de", "en", ei.WrongSourceLanguageError,
     "looks French, not English"),
    ("Zzzz.", "fr", None, ei.WrongSourceLanguageError, "could not tell .* --from LANG .* source='LANG'"),
    ("taxi", "fr", None, ei.WrongSourceLanguageError, r"'taxi' is in \(perhaps \w+ or \w+\)"),
])
def test_bad_input_is_a_clear_error_and_the_translator_stays_usable(translator, text, to, source, error,
                                                                    message):
    with pytest.raises(error, match=message):
        translator.translate(text, to=to, source=source)
    assert translator.translate("Good night.", to="it", source="en").text


def test_cancelling_a_stream_stops_it_and_keeps_no_memory(translator):
    sentence = "The red car is parked in front of the old house near the river."
    with EvalGate(translator.model.backend, decode_only=True) as gate:
        gate.allow(3)  # a few tokens, then the sentence waits at the gate, unfinished
        stream = translator.stream(sentence, to="pt", source="en")
        first = next(stream)
        gate.wait_held()
        stream.cancel()
        gate.open()
        done = stream.result()
    assert done.finish_reason == "cancelled" and done.text.startswith(first.strip()) and len(done.text) < 40
    assert translator.translate("Thanks a lot.", to="pt", source="en").text  # healthy afterwards
    again = translator.translate(sentence, to="pt", source="en")
    assert not again.from_memory and again.finish_reason == "stop" and again.text.startswith(done.text)


def test_a_router_can_serve_the_translator(translator):
    router = ei.Router([ei.Tier("local", translator.model)])
    tr = ei.Translator(router, memory=False)
    done = tr.translate("The weather is nice today.", to="fr", source="en")
    assert tr.style == "few_shot" and done.text == translator.translate("The weather is nice today.", to="fr",
                                                                         source="en").text


def test_an_instruction_model_gets_a_chat_prompt():
    with ei.Translator("smollm2-135m-instruct", memory=False, n_threads=2) as tr:
        done = tr.translate("Good morning.", to="fr", source="en")
    assert tr.style == "chat" and done.text and done.stats.model == "smollm2-135m-instruct"


def test_a_sentence_stops_at_its_final_mark(translator):
    """One sentence in, one out: generation ends on the source's only final mark (no newline token
    generated after it), and the mark is part of the text."""
    done = translator.translate("Where is the museum?", to="it", source="en")
    assert done.text.endswith("?") and done.text.count("?") == 1
    prompt = few_shot_prompt("Where is the museum?", "en", "it", similar=translator.similar)
    full = translator.model.generate(prompt, max_tokens=40, temperature=0, stop=["\n"])
    assert done.text == full.text.strip() and done.stats.completion_tokens < full.stats.completion_tokens


# --- the command line --------------------------------------------------------------------------------
def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeinfer", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


def test_a_short_input_gets_the_most_similar_bank_examples():
    """Up to 4 words: the two bank sentences sharing the most words come right before the request (the
    pair's fixed block stays first, so it is still reused); a longer sentence gets the fixed block only."""
    fixed = few_shot_prompt("Good night!", "en", "de", similar=0)
    short = few_shot_prompt("Good night!", "en", "de", similar=2)
    assert short.startswith(fixed.rsplit("English: Good night!", 1)[0])
    assert short.endswith("English: Good night!\nGerman: Gute Nacht!\n\nEnglish: Good night!\nGerman:")
    long = "The museum is closed on Mondays, but the garden stays open all night."
    assert few_shot_prompt(long, "en", "de", similar=2) == few_shot_prompt(long, "en", "de", similar=0)


def test_greetings_and_fragments_come_out_right(translator):
    """What a small model got wrong with a block of whole sentences only ("Good night!" came out "Guten
    Morgen!", "Hi" as "Je t'aime"), and markup around it passed through."""
    assert translator.translate("Good night!", to="de", source="en").text == "Gute Nacht!"
    done = translator.translate("<b>Hi</b> 👋 [b]there[/b]", to="fr")
    assert done.source == "en" and done.text.startswith("<b>Salut") and "</b> 👋 [b]" in done.text
    assert done.text.endswith("[/b]") and "aime" not in done.text


def test_switching_pairs_restores_each_pairs_examples_from_disk(tmp_path: Path):
    """More pairs than sequences: a pair's example block, evicted by the others, comes back from the disk
    cache instead of being recomputed. A translator keeping no memory keeps no text on disk either."""
    pairs = [("en", "fr"), ("en", "de"), ("en", "es"), ("en", "it"), ("en", "pt"), ("fr", "en")]
    sentence = {"en": "The bakery opens at seven.", "fr": "La boulangerie ouvre à sept heures."}
    with ei.Translator(memory=tmp_path / "tm.sqlite3", n_threads=2) as tr:
        for source, target in pairs:
            tr.translate(sentence[source], to=target, source=source)
        again = tr.translate("The bakery closes at noon.", to="fr", source="en")
        block = len(tr.model.tokenize(few_shot_prompt("x", "en", "fr").rsplit("English: x", 1)[0]))
        assert again.stats.cached_tokens >= block - 32, (again.stats, block)
        kv_files = list((Path(os.environ["EDGEINFER_HOME"]) / "kv").rglob("*.kv"))
        assert kv_files
    with ei.Translator(memory=False, n_threads=2) as tr:
        assert tr.model.engine.cache.disk is None


def test_cli_translates_arguments_and_stdin():
    done = _cli("translate", "Good morning.", "--to", "fr", "--from", "en", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["text"] and (out["source"], out["target"]) == ("en", "fr") and out["stats"]["sentences"] == 1
    piped = _cli("translate", "--to", "fr", "--from", "en", stdin="Good morning.\n")
    assert piped.returncode == 0 and piped.stdout.strip() == out["text"]
    bad = _cli("translate", "Hello.", "--to", "xx")
    assert bad.returncode == 2 and "unsupported language 'xx'" in bad.stderr
    empty = _cli("translate", "--to", "fr", stdin="")
    assert empty.returncode == 2 and "no text" in empty.stderr
    hello = _cli("translate", "Hello", "--to", "fr")  # one word: detected, and the guess is said
    assert hello.returncode == 0 and hello.stdout.strip() and "from English, detected" in hello.stderr
    unsure = _cli("translate", "taxi", "--to", "fr")
    assert unsure.returncode == 2 and "--from LANG" in unsure.stderr and "Traceback" not in unsure.stderr
