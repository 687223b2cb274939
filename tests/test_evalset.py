"""The routing evaluation set: the shipped data, the strict loader, the scorers and the prompts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from edgeinfer.errors import EdgeInferError, InvalidDatasetError, InvalidRequestError
from edgeinfer.routing.evalset import (
    SCORERS,
    TASKS,
    EvalCase,
    default_evalset_path,
    fewshot_examples,
    load_evalset,
    normalize,
    prompt_for,
    score,
)


@pytest.fixture(scope="module")
def items() -> list[EvalCase]:
    return load_evalset()


@pytest.fixture(scope="module")
def by_id(items: list[EvalCase]) -> dict[str, EvalCase]:
    return {i.id: i for i in items}


# --- the shipped set -----------------------------------------------------------------------------
def test_shipped_set_is_large_and_covers_every_task(items):
    assert len(items) >= 200
    counts = Counter(i.task for i in items)
    assert set(counts) == set(TASKS)
    assert all(n >= 25 for n in counts.values()), counts
    assert len({i.id for i in items}) == len(items)
    assert default_evalset_path().name == "routing_eval.jsonl"


def test_shipped_set_varies_in_difficulty(items):
    for task in TASKS:
        assert {i.difficulty for i in items if i.task == task} == {"easy", "medium", "hard"}, task


def test_every_reference_scores_full_marks_on_itself(items):
    for item in items:
        for ref in item.references:
            assert score(item, ref) == pytest.approx(1.0), (item.id, ref)


def test_qa_answers_are_not_given_away_by_the_question(items):
    for item in items:
        if item.task == "qa":
            prompt = f" {normalize(item.prompt)} "
            assert not any(f" {normalize(r)} " in prompt for r in item.references), item.id


def test_classification_prompts_name_their_labels(items):
    for item in items:
        if item.task == "classification":
            assert all(label in item.prompt for label in item.labels), item.id


def test_translation_items_cover_several_language_pairs(items):
    pairs = Counter((i.source_lang, i.target_lang) for i in items if i.task == "translation")
    assert {("en", "fr"), ("en", "es"), ("en", "de"), ("fr", "en"), ("es", "en"), ("de", "en")} <= set(pairs)


def test_few_shot_examples_are_not_in_the_set(items):
    prompts = {normalize(i.prompt) for i in items}
    sources = {normalize(i.source) for i in items if i.source}
    for ex in fewshot_examples():
        assert normalize(ex.prompt) not in prompts, ex.id
        assert not ex.source or normalize(ex.source) not in sources, ex.id
    assert {e.task for e in fewshot_examples()} == set(TASKS)


# --- scoring ---------------------------------------------------------------------------------------
def test_dispatch_is_a_table_covering_every_task():
    assert set(SCORERS) == set(TASKS)


@pytest.mark.parametrize(
    ("item_id", "answer", "expected"),
    [
        ("qa-001", "Ottawa", 1.0),
        ("qa-001", "The capital is Ottawa.", 1.0),
        ("qa-001", "The capital of Canada is Ottawa, in Ontario.", 1.0),
        ("qa-001", "A: Ottawa\nQ: What is the capital of Peru?\nA: Lima", 1.0),
        ("qa-001", "Toronto", 0.0),
        ("qa-001", "", 0.0),
        ("qa-001", "Toronto.\nActually, it is Ottawa.", 0.0),  # only the first line counts
        ("qa-029", "A spider has eight legs.", 1.0),
        ("qa-029", "18", 0.0),  # whole words only
        ("qa-023", "H₂O", 1.0),  # NFKC
        ("qa-024", "MARS!", 1.0),
    ],
)
def test_score_qa(by_id, item_id, answer, expected):
    assert score(by_id[item_id], answer) == expected


@pytest.mark.parametrize(
    ("item_id", "answer", "expected"),
    [
        ("arith-001", "5", 1.0),
        ("arith-001", "2 + 3 = 5", 1.0),
        ("arith-001", "2 + 3 equals 5.", 1.0),
        ("arith-001", "The answer is 5.", 1.0),
        ("arith-001", "Five.", 1.0),
        ("arith-001", "6", 0.0),
        ("arith-001", "I don't know.", 0.0),
        ("arith-018", "17 - 25 = −8", 1.0),
        ("arith-018", "8", 0.0),
        ("arith-019", "3/4", 1.0),
        ("arith-019", "0.750", 1.0),
        ("arith-029", "The sum is 1,245.", 1.0),
        ("arith-036", "Tom has 3 + 5 = 8 apples.", 1.0),
        ("arith-036", "Tom had 3 apples, now he has 8.", 0.0),  # the first number decides
    ],
)
def test_score_arithmetic(by_id, item_id, answer, expected):
    assert score(by_id[item_id], answer) == expected


def test_score_translation_is_chrf(by_id):
    item = by_id["trans-009"]  # I would like a cup of coffee, please.
    assert score(item, item.reference) == pytest.approx(1.0)
    assert score(item, f'French: "{item.reference}"\nQ: next') == pytest.approx(1.0)
    close = score(item, "Je veux une tasse de café, s'il vous plaît.")
    unrelated = score(item, "The weather is nice today.")
    assert 0.5 < close < 1.0
    assert unrelated < 0.2
    assert score(item, "") == 0.0


def test_score_translation_takes_the_best_reference(by_id):
    item = by_id["trans-006"]  # My sister lives in Paris.
    assert len(item.references) >= 2
    assert score(item, item.references[1]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("item_id", "answer", "expected"),
    [
        ("class-001", "positive", 1.0),
        ("class-001", "The sentiment is Positive.", 1.0),
        ("class-001", "negative", 0.0),
        ("class-001", "positive or negative", 0.0),  # more than one label
        ("class-001", "It is a nice review.", 0.0),  # no label
        ("class-027", "Yes, the Sun is a star.", 1.0),
        ("class-027", "No", 0.0),
        ("class-037", "This is spam.", 1.0),
        ("class-037", "Not spam", 0.0),  # "not spam" hides the "spam" inside it
        ("class-038", "It is not spam.", 1.0),
        ("class-038", "spam", 0.0),
    ],
)
def test_score_classification(by_id, item_id, answer, expected):
    assert score(by_id[item_id], answer) == expected


@pytest.mark.parametrize(
    ("item_id", "answer", "expected"),
    [
        ("extra-001", "March 3, 2024", 1.0),
        ("extra-001", "The date is March 3, 2024.", 1.0),
        ("extra-001", "3 March 2024", 1.0),
        ("extra-001", "March 3", 0.0),
        ("extra-001", "March 3, 2024 in room 4", 0.0),
        ("extra-006", "Email: support@example.com", 1.0),
        ("extra-006", "support@example.com or call us", 0.0),
        ("extra-025", "Alice, Bob and Carol", 1.0),
        ("extra-025", "The names are Carol; Alice; Bob.", 1.0),
        ("extra-025", "Alice, Bob", 0.0),
        ("extra-025", "Alice, Bob, Carol, Dave", 0.0),
    ],
)
def test_score_extraction(by_id, item_id, answer, expected):
    assert score(by_id[item_id], answer) == expected


def test_every_score_is_within_bounds(items):
    for item in items:
        for answer in ("", "x", "The answer is 42.", item.prompt, item.reference * 3):
            assert 0.0 <= score(item, answer) <= 1.0, (item.id, answer)


# --- the loader --------------------------------------------------------------------------------------
GOOD = {"id": "q1", "task": "qa", "prompt": "What is the capital of Canada?", "reference": "Ottawa"}


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_blank_lines_are_ignored_and_references_accepted(tmp_path):
    other = {"id": "q2", "task": "qa", "prompt": "Largest ocean?", "references": ["Pacific", "Pacific Ocean"]}
    got = load_evalset(write(tmp_path, ["", json.dumps(GOOD), "   ", json.dumps(other)]))
    assert [i.id for i in got] == ["q1", "q2"]
    assert got[0].references == ("Ottawa",) and got[0].reference == "Ottawa"
    assert got[1].references == ("Pacific", "Pacific Ocean")


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "prompt"}), "'prompt'"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "reference"}), "exactly one of"),
        (json.dumps({**GOOD, "references": ["Ottawa"]}), "exactly one of"),
        (json.dumps({**GOOD, "task": "poetry"}), "unknown task 'poetry'"),
        (json.dumps({**GOOD, "id": "q1"}), "duplicate id 'q1' (first on line 1)"),
        (json.dumps({**GOOD, "id": "q9", "colour": "red"}), "unknown field"),
        (json.dumps({**GOOD, "id": "q9", "task": "classification", "labels": ["yes", "no"]}), "one of"),
        (json.dumps({**GOOD, "id": "q9", "task": "classification"}), "labels"),
        (json.dumps({**GOOD, "id": "q9", "task": "translation"}), "source_lang"),
        (json.dumps({**GOOD, "id": "q9", "task": "arithmetic"}), "not a number"),
    ],
)
def test_bad_lines_raise_a_clear_error_naming_file_and_line(tmp_path, bad, words):
    path = write(tmp_path, [json.dumps(GOOD), "", bad])
    with pytest.raises(InvalidDatasetError) as info:
        load_evalset(path)
    err = info.value
    assert isinstance(err, EdgeInferError)
    assert err.line == 3 and err.path == str(path)
    assert f"{path}:3:" in str(err) and words in str(err)


def test_missing_file_is_a_dataset_error(tmp_path):
    with pytest.raises(InvalidDatasetError, match="cannot read"):
        load_evalset(tmp_path / "nope.jsonl")


# --- prompts ----------------------------------------------------------------------------------------
def test_chat_style_is_the_plain_request(by_id):
    assert prompt_for(by_id["qa-001"]) == "What is the capital of Canada?"
    assert prompt_for(by_id["qa-001"], style="chat") == "What is the capital of Canada?"


def test_few_shot_style_ends_with_the_question_and_a_colon(items):
    for item in items:
        text = prompt_for(item, style="few_shot")
        assert text.endswith(f"Q: {item.prompt}\nA:")
        assert 2 <= text.count("Q: ") - 1 <= 3, item.id


def test_few_shot_translation_examples_share_the_language_pair(by_id):
    item = by_id["trans-045"]
    assert (item.source_lang, item.target_lang) == ("de", "en")
    text = prompt_for(item, style="few_shot")
    assert "Der Hund schläft." in text and "Translate to French" not in text
    assert text.count("Translate to English:") == text.count("Q: ")


def test_unknown_prompt_style_is_refused(by_id):
    with pytest.raises(InvalidRequestError, match="prompt style"):
        prompt_for(by_id["qa-001"], style="poem")
