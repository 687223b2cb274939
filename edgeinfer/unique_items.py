"""``uniqueItems`` for constrained JSON: llguidance (like XGrammar and OpenAI's strict mode) cannot
express "no two items equal", so the grammar is compiled without it and this module keeps the output
unique at decode time.

``UniqueTracker`` follows the output as it is written (a small incremental JSON reader that knows which
arrays the schema makes unique) and tells the sampler when a token would complete an item equal to an
earlier one; the sampler then takes the next best token instead. Items must be scalars (strings,
numbers, booleans, null, enums of them): a scalar's end is always a choice of the model, so a duplicate
can be refused at the token that would complete it, while an object's closing brace is usually forced.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from .errors import InvalidRequestError

# keywords whose value is a map of names to schemas, a list of schemas, or one schema
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "if", "then", "else", "contains",
                  "propertyNames", "additionalItems", "unevaluatedItems", "unevaluatedProperties")
_SCALAR_TYPES = {"string", "number", "integer", "boolean", "null"}
_MAX_REF_HOPS = 32


def uses_unique_items(schema: Any) -> bool:
    """Does any schema node in ``schema`` ask for ``uniqueItems: true``?"""
    return any(node.get("uniqueItems") is True for node in _nodes(schema))


def without_unique_items(schema: Any) -> Any:
    """``schema`` with every schema node's ``uniqueItems`` removed (for the grammar compiler); a property
    that happens to be called "uniqueItems" is kept."""
    if isinstance(schema, list):
        return [without_unique_items(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "uniqueItems":
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: without_unique_items(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS or key in _SCHEMA_VALUES:
            out[key] = without_unique_items(value)
        else:
            out[key] = value  # data (enum, const, default, examples, ...): never a schema
    return out


def check_supported(schema: dict) -> None:
    """Refuse ``uniqueItems`` where the tracker cannot keep it: on arrays whose items may be objects or
    arrays, or under keywords it does not follow (patternProperties, not, if/then/else, contains...)."""
    followed = {id(node) for node in _reachable(schema, schema)}
    for node in _nodes(schema):
        if node.get("uniqueItems") is not True:
            continue
        if id(node) not in followed:
            raise InvalidRequestError(
                "uniqueItems is supported on arrays reached through properties, items, prefixItems, "
                "additionalProperties, anyOf/oneOf/allOf and $ref; not under patternProperties, not, "
                "if/then/else, contains or dependentSchemas")
        items = [n for item in _item_schemas(node) for n in _expand(schema, [item])]
        if not items or not all(_is_scalar(n) for n in items):
            raise InvalidRequestError(
                "uniqueItems is supported on arrays of strings, numbers, booleans or enums of them "
                "(give the array's items a scalar type); not on arrays of objects, arrays or untyped items")


class UniqueTracker:
    """Reads the output as it is generated and knows, for the unique arrays the schema has, which items
    have been written. ``feed`` advances it; ``trial`` tells, without advancing, whether some bytes
    would finish an item equal to an earlier one."""

    def __init__(self, schema: dict) -> None:
        self._root = schema
        self._stack: list[dict] = []  # one frame per open object/array
        self._scalar: str | None = None  # the text of the scalar being read (a key or a value)
        self._kind = ""  # "string", "number" or "literal" while a scalar is read
        self._escaped = False
        self._nodes = _expand(schema, [schema])  # the schema candidates of the next value
        self.duplicate = False  # set once an item equal to an earlier one was completed

    def active(self) -> bool:
        """Is the output inside a unique array (where a token can complete an item)?"""
        return bool(self._stack) and self._stack[-1]["seen"] is not None

    def feed(self, data: bytes) -> None:
        for char in data.decode("utf-8", errors="replace"):
            self._char(char)

    def trial(self, data: bytes) -> UniqueTracker:
        """A copy that has read ``data`` next (this one is unchanged): did it complete a duplicate?"""
        trial = copy.copy(self)  # the schema and its nodes are shared; frames and item sets are copied
        trial._stack = [{**frame, "seen": None if frame["seen"] is None else set(frame["seen"])}
                        for frame in self._stack]
        trial.feed(data)
        return trial

    def pending_duplicate(self) -> str | None:
        """"string" or "number" when a scalar is being written in a unique array that, ended right here,
        would equal an earlier item (whether it may still go on is for the grammar to say); else None."""
        if self._kind not in ("string", "number") or not self.active():
            return None
        text = self._scalar + '"' if self._kind == "string" else self._scalar
        try:
            value = json.loads(text)
        except ValueError:  # an escape or a number half written
            return None
        return self._kind if _key(value) in self._stack[-1]["seen"] else None

    # --- the reader ------------------------------------------------------------------------------------
    def _char(self, c: str) -> None:
        if self._kind == "string":
            self._scalar += c
            if self._escaped:
                self._escaped = False
            elif c == "\\":
                self._escaped = True
            elif c == '"':
                self._scalar_done()
            return
        if self._kind == "number":
            if c in "0123456789+-.eE":
                self._scalar += c
                return
            self._scalar_done()
        elif self._kind == "literal":
            self._scalar += c
            if self._scalar in ("true", "false", "null"):
                self._scalar_done()
            return
        if c == '"':
            self._kind, self._scalar = "string", c
        elif c in "-0123456789":
            self._kind, self._scalar = "number", c
        elif c in "tfn":
            self._kind, self._scalar = "literal", c
        elif c in "{[":
            self._open(c)
        elif c in "}]":
            if self._stack:
                self._stack.pop()
        elif c == ":" and self._stack:
            self._stack[-1]["in_key"] = False
        elif c == "," and self._stack:
            self._next_slot(self._stack[-1])

    def _open(self, c: str) -> None:
        nodes = self._nodes
        if c == "{":
            frame = {"object": True, "nodes": nodes, "in_key": True, "seen": None}
        else:
            unique = any(n.get("uniqueItems") is True for n in nodes)
            frame = {"object": False, "nodes": nodes, "index": 0, "seen": set() if unique else None}
        self._stack.append(frame)
        self._next_slot(frame, first=True)

    def _next_slot(self, frame: dict, first: bool = False) -> None:
        """After "[" / "{" or ",": what the next value's schema candidates are."""
        if frame["object"]:
            frame["in_key"] = True
            return
        if not first:
            frame["index"] += 1
        index = frame["index"]
        self._nodes = _expand(self._root, [s for n in frame["nodes"] for s in _item_schemas(n, index)])

    def _scalar_done(self) -> None:
        text, self._scalar, self._kind = self._scalar, None, ""
        if not self._stack:
            return
        frame = self._stack[-1]
        if frame["object"]:
            if frame["in_key"]:
                try:
                    key = json.loads(text)
                except ValueError:
                    key = None
                nodes = [s for n in frame["nodes"] for s in _property_schemas(n, key)]
                self._nodes = _expand(self._root, nodes)
            return
        if frame["seen"] is not None:
            try:
                key = _key(json.loads(text))
            except ValueError:
                return
            if key in frame["seen"]:
                self.duplicate = True
            frame["seen"].add(key)


def _key(value: Any) -> tuple[str, Any]:
    """Equality as JSON Schema's uniqueItems sees it: 1 == 1.0, but true != 1."""
    if isinstance(value, bool) or value is None:
        return "literal", value
    if isinstance(value, float) and value.is_integer():
        return "number", int(value)
    return ("number" if isinstance(value, int | float) else "string"), value


def _is_scalar(node: dict) -> bool:
    if "enum" in node or "const" in node:
        values = node.get("enum", [node.get("const")])
        return all(not isinstance(v, dict | list) for v in values)
    types = node.get("type")
    types = [types] if isinstance(types, str) else types
    return bool(types) and set(types) <= _SCALAR_TYPES


def _item_schemas(node: dict, index: int | None = None) -> list:
    """The schemas an array's item (at ``index``, or any item) may have to match."""
    prefix = node.get("prefixItems") if isinstance(node.get("prefixItems"), list) else []
    items = node.get("items")
    if isinstance(items, list):  # the old tuple form
        prefix, items = items, node.get("additionalItems")
    if index is None:
        return [s for s in [*prefix, items] if isinstance(s, dict)]
    chosen = prefix[index] if index < len(prefix) else items
    return [chosen] if isinstance(chosen, dict) else []


def _property_schemas(node: dict, key: Any) -> list:
    properties = node.get("properties")
    if isinstance(properties, dict) and isinstance(properties.get(key), dict):
        return [properties[key]]
    extra = node.get("additionalProperties")
    return [extra] if isinstance(extra, dict) else []


def _expand(root: dict, nodes: list) -> list[dict]:
    """``nodes`` with $ref resolved and anyOf/oneOf/allOf branches added: every schema a value may meet."""
    out: list[dict] = []
    seen: set[int] = set()
    pending = [(n, 0) for n in nodes if isinstance(n, dict)]
    while pending:
        node, hops = pending.pop()
        if hops > _MAX_REF_HOPS or id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = _resolve(root, ref)
            if target is not None:
                pending.append((target, hops + 1))
        for key in ("anyOf", "oneOf", "allOf"):
            if isinstance(node.get(key), list):
                pending.extend((branch, hops + 1) for branch in node[key] if isinstance(branch, dict))
    return out


def _resolve(root: dict, ref: str) -> dict | None:
    """A local ``#/...`` JSON pointer; anything else is not followed (llguidance refuses it anyway)."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _reachable(root: dict, schema: dict) -> list[dict]:
    """The schema nodes the tracker follows from ``schema``: properties, additionalProperties, items,
    prefixItems, anyOf/oneOf/allOf and $ref."""
    out: list[dict] = []
    seen: set[int] = set()
    pending = [schema]
    while pending:
        node = pending.pop()
        for expanded in _expand(root, [node]):
            if id(expanded) in seen:
                continue
            seen.add(id(expanded))
            out.append(expanded)
            properties = expanded.get("properties")
            if isinstance(properties, dict):
                pending.extend(s for s in properties.values() if isinstance(s, dict))
            if isinstance(expanded.get("additionalProperties"), dict):
                pending.append(expanded["additionalProperties"])
            pending.extend(_item_schemas(expanded))
    return out


def _nodes(schema: Any) -> list[dict]:
    """Every schema node in use under ``schema``: following the keywords that hold schemas (not data)
    and local $refs (definitions nothing refers to are left out)."""
    out: list[dict] = []
    seen: set[int] = set()
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
            continue
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        if isinstance(node.get("$ref"), str) and isinstance(schema, dict):
            pending.append(_resolve(schema, node["$ref"]))
        for key, value in node.items():
            if key in ("$defs", "definitions"):
                continue
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                pending.extend(value.values())
            elif key in _SCHEMA_LISTS or key in _SCHEMA_VALUES:
                pending.append(value)
    return out
