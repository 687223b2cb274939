"""The translation artifact: the model's GGUF with its vocabulary cut to the translator's languages
(converters/shortlist.py), built once into the cache when a shipped shortlist fits the model."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from ..hashing import cached_digest, sha256_file
from ..loader import Located, artifact_format
from ..paths import cache_root

Progress = Callable[[float, str], None]


def shortlists_dir() -> Path:
    return Path(str(resources.files("edgeinfer") / "data" / "shortlists"))


def shortlist_for(model_sha256: str) -> Path | None:
    """The shipped shortlist built for this exact model file, if any."""
    for path in sorted(shortlists_dir().glob("*.json")):
        if model_sha256 in json.loads(path.read_text(encoding="utf-8")).get("models", []):
            return path
    return None


def shortlisted(located: Located, on_progress: Progress | None = None) -> Path:
    """``located``'s GGUF with a shipped vocabulary shortlist applied (cached), or the file itself when
    no shortlist fits it."""
    path = located.path
    if artifact_format(path) != "gguf":
        return path
    sha = located.entry.sha256 if located.entry else cached_digest(path, [path], sha256_file)
    found = shortlist_for(sha)
    if found is None:
        return path
    from converters.shortlist import Shortlist, write_shortlisted_gguf

    shortlist = Shortlist.from_json(found)
    target = cache_root() / "converted" / f"{path.stem}-{sha[:16]}-{shortlist.name}.gguf"
    if not target.is_file():
        if on_progress is not None:
            on_progress(0.3, f"cutting the vocabulary to {shortlist.description or shortlist.name} (once)")
        write_shortlisted_gguf(path, target, shortlist.keep)
    return target
