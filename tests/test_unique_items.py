"""uniqueItems, which no grammar engine can express: compiled without it, kept at decode time by refusing
the token that would complete a duplicate item. The schema walk and the JSON reader on their own, then
SmolLM2 asked to repeat itself."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import BaseModel, Field
from speculation_pairs import with_and_without_speculation

import edgeinfer as ei
from edgeinfer.unique_items import UniqueTracker, check_supported, uses_unique_items, without_unique_items

GREEDY = {"temperature": 0}


def test_uniqueitems_is_stripped_for_the_compiler_but_a_property_of_that_name_is_kept():
    schema = {"type": "object", "properties": {"uniqueItems": {"type": "array", "uniqueItems": True,
                                                              "items": {"enum": ["a", "uniqueItems"]}}},
              "$defs": {"x": {"type": "array", "uniqueItems": True, "items": {"type": "string"}}}}
    stripped = without_unique_items(schema)
    assert stripped["properties"]["uniqueItems"] == {"type": "array", "items": {"enum": ["a", "uniqueItems"]}}
    assert "uniqueItems" not in stripped["$defs"]["x"] and not uses_unique_items(stripped)
    assert uses_unique_items(schema) and not uses_unique_items({"enum": [{"uniqueItems": True}]})  # data


@pytest.mark.parametrize("schema", [
    {"type": "array", "uniqueItems": True},  # untyped items
    {"type": "array", "uniqueItems": True, "items": {"type": "object"}},
    {"type": "array", "uniqueItems": True, "items": {"anyOf": [{"type": "string"}, {"type": "array"}]}},
    {"type": "object", "patternProperties": {"^x": {"type": "array", "uniqueItems": True,
                                                   "items": {"type": "string"}}}},
])
def test_uniqueitems_where_it_cannot_be_kept_is_refused_by_name(schema):
    with pytest.raises(ei.InvalidRequestError, match="uniqueItems"):
        check_supported(schema)


def test_the_reader_follows_properties_refs_and_anyof_to_the_unique_arrays():
    schema = {"type": "object", "$defs": {"tags": {"type": "array", "uniqueItems": True,
                                                   "items": {"type": ["string", "number", "boolean"]}}},
              "properties": {"free": {"type": "array", "items": {"type": "string"}},
                             "tags": {"anyOf": [{"$ref": "#/$defs/tags"}, {"type": "null"}]}}}
    check_supported(schema)
    tracker = UniqueTracker(schema)
    tracker.feed(b'{"free": ["a", "a"], "tags": ["a", 1, true, "b\\"c"')  # repeats outside are fine
    assert tracker.active() and not tracker.duplicate
    assert tracker.trial(b', "a"').duplicate and tracker.trial(b', 1.0]').duplicate  # 1 == 1.0
    assert tracker.trial(b', "b\\"c"').duplicate and tracker.trial(b', "b\\u0022c"').duplicate
    assert not tracker.trial(b', 1.5]').duplicate and not tracker.trial(b', "true"').duplicate
    assert not tracker.trial(b', false, 0').duplicate  # true != 1, false != 0
    tracker.feed(b", 2")
    assert tracker.pending_duplicate() is None
    tracker.feed(b", 1")
    assert tracker.pending_duplicate() == "number"  # "1" may still go on to "12": the grammar decides
    assert not tracker.trial(b"2").duplicate and tracker.trial(b"]").duplicate
    assert tracker.trial(b', "b\\"c').pending_duplicate() == "string"  # ended here, it would be a repeat
    assert tracker.trial(b', "b\\"').pending_duplicate() is None
    tracker.feed(b"2]}")
    assert not tracker.active() and not tracker.duplicate


# --- on SmolLM2: prompts that make it repeat itself ------------------------------------------------------
REPEATS = {
    "enum": ('Copy: ["yes", "yes"]\nCopy: ["yes", "yes"]\nCopy: ',
             {"type": "array", "items": {"enum": ["yes", "no", "maybe"]}, "minItems": 2, "maxItems": 2}),
    "string": ('Copy: ["hello", "hello", "hello"]\nCopy: ["hello", "hello", "hello"]\nCopy: ',
               {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 3, "maxItems": 3}),
    "boolean": ("Copy: [true, true]\nCopy: [true, true]\nCopy: ",
                {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2}),
    "number": ("Copy: [10, 10]\nCopy: [10, 10]\nCopy: ",
               {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REPEATS))
def test_a_model_that_repeats_itself_writes_unique_items(smol, name):
    prompt, schema = REPEATS[name]
    free = smol.generate(prompt, json_schema=schema, max_tokens=40, **GREEDY)
    items = json.loads(free.text)
    assert len({json.dumps(v) for v in items}) < len(items)  # without uniqueItems it does repeat
    unique = {**schema, "uniqueItems": True}
    for sampling in (GREEDY, {"temperature": 0.8, "seed": 3}):
        done = smol.generate(prompt, json_schema=unique, max_tokens=40, **sampling)
        assert done.finish_reason == "stop", done.text
        jsonschema.validate(done.parsed, unique)


@pytest.mark.slow
def test_unique_items_hold_with_speculation(smollm2_path):
    prompt, schema = REPEATS["string"]
    schema = {**schema, "uniqueItems": True}
    # prompt lookup drafts the repeated "hello"s: they are refused like any other duplicate
    drafted, plain = with_and_without_speculation(smollm2_path, prompt, json_schema=schema, max_tokens=40,
                                                  **GREEDY)
    assert drafted.tokens == plain.tokens and drafted.stats.draft_tokens > 0
    jsonschema.validate(drafted.parsed, schema)


@pytest.mark.slow
def test_a_pydantic_set_field_comes_back_as_a_set(smol):
    class Tags(BaseModel):
        tags: set[str] = Field(min_length=2, max_length=4)  # uniqueItems in its schema

    done = smol.complete_chat([{"role": "user", "content": "Give the tag 'bread' three times."}],
                              json_schema=Tags, max_tokens=60, **GREEDY)
    assert isinstance(done.parsed, Tags) and len(done.parsed.tags) == len(json.loads(done.text)["tags"]) >= 2


@pytest.mark.slow
def test_a_repeat_that_maxlength_would_force_is_turned_away_before_it_is_written():
    # "BreadBreadBread" is 15 characters: written again, only a closing quote could follow it, and as
    # several tokens start with one the grammar forces none; its last piece is refused, not the quote
    schema = {"type": "object", "properties": {"tags": {
        "type": "array", "items": {"type": "string", "maxLength": 15}, "minItems": 3, "maxItems": 5,
        "uniqueItems": True}}, "required": ["tags"], "additionalProperties": False}
    ask = ("Give a few distinct tags for a blog post about baking bread.\nAnswer with a JSON object that "
           f"follows this JSON schema: {json.dumps(schema)}")
    with ei.load("smollm2-135m-instruct", n_ctx=2048, n_threads=2, speculation=None,
                 kv=ei.KVOptions(settle=False)) as model:
        done = model.complete_chat([{"role": "user", "content": ask}], json_schema=schema, repeat_penalty=1.0,
                                   max_tokens=120, **GREEDY)
    assert done.finish_reason == "stop" and "BreadBreadBread" in done.parsed["tags"]
    jsonschema.validate(done.parsed, schema)
