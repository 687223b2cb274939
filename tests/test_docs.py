"""docs/ARCHITECTURE.md read as a newcomer would: every path it names exists, every name resolves."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import edgeinfer as ei

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"
TOP = ("edgeinfer", "converters", "apps", "tests", "benchmarks", "docs")
PATH = re.compile(r"[\w./-]+\.(?:py|md|toml|lock)\b|\b(?:" + "|".join(TOP) + r")/[\w/]*")
SOURCES = "\n".join(p.read_text(encoding="utf-8") for top in TOP[:5] for p in (ROOT / top).rglob("*.py"))


def _lines() -> list[str]:
    return DOC.read_text(encoding="utf-8").splitlines()


def _paths(line: str) -> list[str]:
    """Repository paths on a line; a bare ``x.py`` after one is a sibling of it (``a/b.py, c.py``)."""
    found, folder = [], None
    for token in PATH.findall(line):
        if "/" in token:
            folder = token.rsplit("/", 1)[0] if "." in token.rsplit("/", 1)[-1] else token.rstrip("/")
            found.append(token)
        else:
            found.append(f"{folder}/{token}" if folder is not None and token.endswith(".py") else token)
    return [p for p in found if "NAME" not in p and not p.startswith(("my_pkg", "./"))]


def test_every_path_in_the_architecture_doc_exists():
    missing = [(n, p) for n, line in enumerate(_lines(), 1) for p in _paths(line)
               if not (ROOT / p.rstrip("/")).exists()]
    assert missing == []
    assert len([p for line in _lines() for p in _paths(line)]) > 50  # the check reads the doc at all


def _resolve(dotted: str) -> object:
    parts = dotted.removesuffix("()").split(".")
    if parts[0] == "ei":
        parts[0] = "edgeinfer"
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            target = getattr(target, attr)
        return target
    raise ImportError(dotted)


def _names() -> tuple[set[str], set[str]]:
    """(dotted names of ours, bare identifiers) in backticks outside code blocks."""
    dotted, bare, fenced = set(), set(), False
    for line in _lines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for token in re.findall(r"`([^`\s]+)`", line):
            token = re.sub(r"\(.*\)$", "", token)
            if re.fullmatch(r"(?:ei|edgeinfer|edgeinfer_converters)(?:\.\w+)+", token):
                dotted.add(token)
            elif re.fullmatch(r"[A-Za-z_]\w*", token) and (token[0].isupper() or "_" in token):
                bare.add(token)
    return dotted, bare


def test_every_name_in_the_architecture_doc_resolves():
    dotted, bare = _names()
    assert {"ei.EdgeInferError", "edgeinfer.backends.conformance.check_backend"} <= dotted
    for name in sorted(dotted):
        assert _resolve(name) is not None, name
    unknown = sorted(n for n in bare if n not in ("NAME", "README") and not re.search(rf"\b{n}\b", SOURCES))
    assert unknown == []


@pytest.mark.parametrize("doc", ["README.md", "docs/ARCHITECTURE.md", "SECURITY.md", "tests/README.md",
                                 "BENCHMARKS.md"])
def test_project_docs_stand_alone(doc: str):
    """A clone has no ../shared/: the project's docs never point outside the repository."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert "../shared" not in text and "DESIGN.md" not in text
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith(("http://", "https://")):
            assert (ROOT / doc).parent.joinpath(link).resolve().exists(), link


def test_the_doc_is_linked_from_the_readme():
    assert "(docs/ARCHITECTURE.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert ei.__doc__ and "edgeinfer.backends" in ei.__doc__
