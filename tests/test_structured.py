"""Constrained decoding (json_schema= / grammar= / regex=): the engine masks each step with llguidance's
token set, appends the tokens the grammar forces without a sampling step, keeps batched requests'
constraints apart, and reports cut-off output as such. Engine logic on the fake backend (one byte per
token), then real JSON schemas on SmolLM2."""

from __future__ import annotations

import dataclasses
import threading

import jsonschema
import pytest
from pydantic import BaseModel
from speculation_pairs import with_and_without_speculation

import edgeinfer as ei
from edgeinfer.backends.testing import FakeBackend
from edgeinfer.model import Model

GREEDY = {"temperature": 0}


def fake(**kw) -> Model:
    return Model(FakeBackend(n_ctx=256, max_sequences=4, **kw), name="fake", settle=False, speculation=None)


def counting_evals(m: Model) -> list[list[int]]:
    """Record the tokens of each eval (what was computed together)."""
    seen: list[list[int]] = []
    real = m.backend.eval

    def record(items):  # noqa: ANN001, ANN202
        seen.append([len(item.tokens) for item in items])
        return real(items)

    m.backend.eval = record
    return seen


# --- engine logic on the fake backend -----------------------------------------------------------------
def test_the_mask_picks_the_best_allowed_token_and_the_end_follows_the_grammar():
    m = fake()
    free = m.generate("a", max_tokens=8, **GREEDY)
    assert free.text == "bcdefghi" and free.finish_reason == "length"
    done = m.generate("a", max_tokens=8, regex="[b-d]{3}", **GREEDY)  # b, c, d, then only the end is allowed
    assert done.text == "bcd" and done.finish_reason == "stop" and done.parsed == "bcd"
    done = m.generate("a", max_tokens=8, regex="[b-d]+", **GREEDY)  # e and f are out: the best allowed is b
    assert done.text == "bcdbcdbc" and done.finish_reason == "length" and done.parsed is None
    done = m.generate("a", max_tokens=8, regex="[a-z]{3}q", **GREEDY)  # the 4th is forced whatever it scores
    assert done.text == "bcdq" and done.stats.forced_tokens == 1
    m.close()


def test_forced_tokens_take_no_step_of_their_own():
    m = fake()
    evals = counting_evals(m)
    done = m.generate("a", max_tokens=20, regex="x(yz|yw)qrs", **GREEDY)
    # x is sampled (the only token allowed); y is forced; z beats w; q, r, s are forced; then the end
    assert done.text == "xyzqrs" and done.finish_reason == "stop" and done.stats.forced_tokens == 4
    # the prompt, [x y], [z q r s]: 6 tokens in 3 evals instead of 7
    assert evals == [[1], [2], [4]]
    m.close()


def test_max_tokens_in_the_middle_of_forced_tokens_is_a_length_finish():
    m = fake()
    done = m.generate("a", max_tokens=3, regex="xyzqrs", **GREEDY)
    assert done.text == "xyz" and done.finish_reason == "length" and done.parsed is None
    # no forced token beyond the limit was evaluated (the last one emitted never is, as without a constraint)
    assert m.backend.seqs[0][1:] == list(b"xy")
    assert m.generate("a", max_tokens=3, **GREEDY).text == "bcd"  # the next request is unconstrained
    m.close()


def test_batched_requests_keep_their_own_constraints():
    patterns = ["[b-e]{4}", "x(yz|yw)q", "[0-9]+\\.", "(no|yes)"]
    solo = fake()
    expected = [solo.generate("a", max_tokens=12, regex=p, **GREEDY).text for p in patterns]
    solo.close()
    m = fake(delay=0.002)  # slow evals: the four overlap and decode in shared steps
    results: list = [None] * len(patterns)

    def run(i: int) -> None:
        results[i] = m.generate("a", max_tokens=12, regex=patterns[i], **GREEDY).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(patterns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == expected and expected[:2] == ["bcde", "xyzq"]
    m.close()


def test_a_seeded_sampled_constrained_request_is_reproducible():
    a = fake().generate("a", max_tokens=10, regex="[a-z]{6}", temperature=1.0, top_k=0, min_p=0, seed=5)
    b = fake().generate("a", max_tokens=10, regex="[a-z]{6}", temperature=1.0, top_k=0, min_p=0, seed=5)
    assert a.text == b.text and len(a.text) == 6 and a.text.isalpha()


def test_speculation_keeps_only_draft_tokens_the_grammar_allows_and_changes_no_output():
    plain = fake().generate("abcabcabc", max_tokens=20, regex="[a-c]{12}", **GREEDY)
    # d and e are out after every c: the best allowed is a, so the output repeats the prompt's pattern
    assert plain.text == "abcabcabcabc" and plain.finish_reason == "stop"
    spec = Model(FakeBackend(n_ctx=256), name="fake", settle=False, speculation="prompt-lookup")
    drafted = spec.generate("abcabcabc", max_tokens=20, regex="[a-c]{12}", **GREEDY)
    assert drafted.text == plain.text and drafted.stats.accepted_tokens > 0
    # a draft the grammar forbids is cut before it is checked: [a-c] only, so "d..." is never drafted
    odd = spec.generate("abcdabcdabc", max_tokens=20, regex="[a-c]{6}", **GREEDY)
    assert odd.text == fake().generate("abcdabcdabc", max_tokens=20, regex="[a-c]{6}", **GREEDY).text
    assert odd.stats.draft_tokens == odd.stats.accepted_tokens
    spec.close()


@pytest.mark.parametrize(("options", "message"), [
    ({"json_schema": {"type": "object", "not": {"type": "string"}}}, "not"),
    ({"json_schema": {"type": "string", "format": "no-such-format"}}, "no-such-format"),
    ({"json_schema": {"type": "array", "uniqueItems": True}}, "uniqueItems"),  # on untyped items
    ({"json_schema": {"type": "object"}, "regex": "a+"}, "one output constraint"),
    ({"json_schema": 42}, "json_schema must be"),
    ({"grammar": "start: undefined_rule"}, "undefined_rule"),
    ({"regex": "(unclosed"}, "regex"),
    ({"grammar": "   "}, "non-empty"),
    ({"json_schema": {"enum": ["x" * 1000] * 300}}, "at most"),
])
def test_bad_constraints_are_clear_errors_before_anything_runs(options, message):
    m = fake()
    with pytest.raises(ei.InvalidRequestError, match=message):
        m.generate("a", max_tokens=4, **options)
    assert m.engine.occupancy() == (0, 0) and m.generate("a", max_tokens=2, **GREEDY).text == "bc"
    m.close()


# --- JSON schemas on the real default model ------------------------------------------------------------
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "color"],
          "properties": {"name": {"type": "string", "maxLength": 24},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "color": {"enum": ["red", "green", "blue"]}}}
SCHEMAS = {
    "object with enum and range": PERSON,
    "array of strings": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 2,
                         "maxItems": 4},
    "nested object": {"type": "object", "required": ["city", "location"], "additionalProperties": False,
                      "properties": {"city": {"type": "string", "maxLength": 30},
                                     "location": {"type": "object", "required": ["lat", "lon"],
                                                  "additionalProperties": False,
                                                  "properties": {"lat": {"type": "number", "minimum": -90,
                                                                         "maximum": 90},
                                                                 "lon": {"type": "number", "minimum": -180,
                                                                         "maximum": 180}}}}},
    "pattern": {"type": "object", "required": ["date"], "additionalProperties": False,
                "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}},
    "anyOf": {"type": "object", "required": ["answer"], "additionalProperties": False,
              "properties": {"answer": {"anyOf": [{"type": "boolean"}, {"type": "integer"}]}}},
    "boolean": {"type": "boolean"},
}
ASK = "Describe Alice, who is 31 and likes blue, as JSON."


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_output_parses_and_validates(smol, name):
    schema = SCHEMAS[name]
    done = smol.complete_chat([{"role": "user", "content": ASK}], json_schema=schema, max_tokens=120,
                              **GREEDY)
    assert done.finish_reason == "stop", done.text
    jsonschema.validate(done.parsed, schema)
    assert done.stats.forced_tokens > 0 or name == "boolean"


@pytest.mark.slow
def test_a_pydantic_model_or_a_dataclass_comes_back_built(smol):
    class Person(BaseModel):
        name: str
        age: int

    @dataclasses.dataclass
    class City:
        name: str
        country: str

    person = smol.complete_chat([{"role": "user", "content": ASK}], json_schema=Person, max_tokens=60,
                                **GREEDY)
    assert isinstance(person.parsed, Person) and person.parsed.name == "Alice" and person.parsed.age == 31
    city = smol.complete_chat([{"role": "user", "content": "Paris is the capital of France. As JSON:"}],
                              json_schema=City, max_tokens=60, **GREEDY)
    assert isinstance(city.parsed, City) and city.parsed.country.lower() == "france"


@pytest.mark.slow
def test_constrained_json_takes_fewer_steps_than_its_tokens(smol):
    done = smol.complete_chat([{"role": "user", "content": ASK}], json_schema=PERSON, max_tokens=80, **GREEDY)
    assert done.parsed == {"name": "Alice", "age": 31, "color": "blue"}
    # the keys, quotes, separators and the enum's tail were appended without sampling steps
    assert done.stats.forced_tokens >= done.stats.completion_tokens / 3


@pytest.mark.slow
def test_a_cut_off_object_is_reported_as_cut_off(smol):
    done = smol.complete_chat([{"role": "user", "content": ASK}], json_schema=PERSON, max_tokens=6, **GREEDY)
    assert done.finish_reason == "length" and done.parsed is None and done.text.startswith('{"name": ')


@pytest.mark.slow
def test_streaming_and_batching_keep_constrained_outputs_exact(smol):
    asks = [(ASK, PERSON), ("List three fruits as JSON.", SCHEMAS["array of strings"]),
            ("Is water wet? Answer as JSON.", SCHEMAS["anyOf"])]
    solo = [smol.complete_chat([{"role": "user", "content": q}], json_schema=s, max_tokens=60, **GREEDY)
            for q, s in asks]
    streams = [smol.stream_chat([{"role": "user", "content": q}], json_schema=s, max_tokens=60, **GREEDY)
               for q, s in asks]  # all three run together
    together = [s.result() for s in streams]
    assert [c.text for c in together] == [c.text for c in solo]
    assert [c.tokens for c in together] == [c.tokens for c in solo]


@pytest.mark.slow
def test_speculation_on_a_real_model_changes_no_constrained_output(smollm2_path):
    lines = '{"name": "Alice Martin", "city": "Paris"}\n{"name": "Bob Stone", "city": "London"}\n'
    prompt = "People, one JSON object per line:\n" + lines * 2  # prompt lookup drafts from these
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "city"],
              "properties": {"name": {"type": "string"}, "city": {"type": "string"}}}
    drafted, plain = with_and_without_speculation(smollm2_path, prompt, json_schema=schema, max_tokens=40,
                                                  **GREEDY)
    assert drafted.tokens == plain.tokens and set(drafted.parsed) == {"name", "city"}
    assert drafted.stats.accepted_tokens > 0 and plain.stats.draft_tokens == 0


@pytest.mark.slow
def test_a_lark_grammar_on_a_real_model(smol):
    grammar = 'start: "The answer is " ANSWER "."\nANSWER: "yes" | "no"'
    done = smol.generate("Is the sky blue?", grammar=grammar, max_tokens=10, **GREEDY)
    assert done.finish_reason == "stop" and done.text in ("The answer is yes.", "The answer is no.")
