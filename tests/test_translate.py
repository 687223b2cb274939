"""ei.Translator on the real Gemma 3 270M (its shortlisted GGUF): prompts, batching, memory, streaming,
bad input, the CLI; and the pieces under it (sentence splitting, language detection, the SQLite memory,
the vocabulary shortlist against llama.cpp's own tokenizer)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from edgeinfer_converters import prepare
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
    ("  42 -- ", []),
])
def test_segments_split_sentences_and_keep_the_rest(text: str, sentences: list[str]):
    parts = segments(text)
    assert "".join(p.text for p in parts) == text  # nothing lost, nothing added
    assert [p.text for p in parts if p.translate] == sentences


# --- language detection ------------------------------------------------------------------------------
def test_detection_never_contradicts_the_right_language_on_the_eval_set():
    """A false "wrong source language" would refuse a correct request: on the project's 432 sentences the
    detector either names the right language or abstains (or leads by too little to refuse)."""
    right = abstained = 0
    for row in eval_rows():
        for code in ei.LANGUAGES:
            found = detect_language(row[code])
            assert not found.contradicts(code), f"{row[code]!r} ({code}) taken for {found.language}"
            right += found.language == code
            abstained += found.language != code
    assert right >= 0.8 * (right + abstained), (right, abstained)


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
    ("Zzzz.", "fr", None, ei.WrongSourceLanguageError, "could not tell"),
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
    prompt = few_shot_prompt("Where is the museum?", "en", "it")
    full = translator.model.generate(prompt, max_tokens=40, temperature=0, stop=["\n"])
    assert done.text == full.text.strip() and done.stats.completion_tokens < full.stats.completion_tokens


# --- the command line --------------------------------------------------------------------------------
def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeinfer", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


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
