"""Prepare pinned models before their first load: the work behind ``edgeinfer pull`` (the runtime only
plans it, in ``edgeinfer.prepared``, and loads the results).

    from edgeinfer_converters import prepare
    prepare("all-minilm-l6-v2")   # the checkpoint converted to an F16 GGUF in the cache, once
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path

from edgeinfer.errors import EdgeInferError, OutputExistsError
from edgeinfer.loader import locate_model
from edgeinfer.prepared import (
    CHECKPOINT_GGUF,
    GGUF_ONNX,
    KINDS,
    SHORTLIST,
    Located,
    Preparation,
    kinds_for,
    preparations,
)

Progress = Callable[[str], None]
log = logging.getLogger(__name__)


def _checkpoint_gguf(preparation: Preparation) -> None:
    from .conversion import convert

    convert(preparation.source, preparation.target, format="gguf", quant=preparation.quant or "F16",
            quality=False, name=preparation.model_name)


def _shortlist(preparation: Preparation) -> None:
    from .shortlist import Shortlist, write_shortlisted_gguf

    assert preparation.recipe is not None  # a SHORTLIST plan always names its shortlist
    keep = Shortlist.from_json(preparation.recipe).keep
    write_shortlisted_gguf(preparation.source, preparation.target, keep)


def _gguf_onnx(preparation: Preparation) -> None:
    from .conversion import convert

    convert(preparation.source, preparation.target, format="onnx")  # with its report vs the GGUF


RECIPES: dict[str, Callable[[Preparation], None]] = {CHECKPOINT_GGUF: _checkpoint_gguf,
                                                         SHORTLIST: _shortlist, GGUF_ONNX: _gguf_onnx}


def run_preparation(preparation: Preparation) -> Path:
    """Do one planned transform unless its output is there; written to a temp file, then renamed, so a
    concurrent preparation of the same model is harmless."""
    if not preparation.done:
        preparation.target.parent.mkdir(parents=True, exist_ok=True)
        try:
            RECIPES[preparation.kind](preparation)
        except OutputExistsError:  # another process prepared it meanwhile
            pass
    return preparation.target


def prepare(model: str | Path | Located, *, offline: bool | None = None, on_progress: Progress | None = None,
            kinds: Collection[str] = KINDS, backend: str | None = None) -> list[Path]:
    """Every transform a models.lock name (or a path) gets before use (or only ``kinds`` of them), done
    once; their outputs. With ``backend``, also the ONNX folder of a GGUF that runs there (asked for,
    or by "auto" where its lock entry says so: ``edgeinfer.prepared.runs_on_onnx``)."""
    located = model if isinstance(model, Located) else locate_model(model, offline=offline)
    if backend is not None:
        kinds = kinds_for(located, backend, kinds)
    outputs = []
    for preparation in preparations(located, kinds):
        if on_progress is not None and not preparation.done:
            on_progress(f"{located.name}: {preparation.description} (once)")
        outputs.append(run_preparation(preparation))
    return outputs


def prepare_for_use(model: object, *, offline: bool | None = None, on_progress: Progress | None = None,
                    kinds: Collection[str] = KINDS, backend: str | None = None) -> None:
    """``prepare`` before an app or a command loads ``model`` by name or path; a model that cannot be
    prepared (a missing dependency, a damaged file) is reported when it is loaded, not here."""
    if not isinstance(model, (str, Path)):
        return  # a loaded model is used as it is
    try:
        prepare(model, offline=offline, on_progress=on_progress, kinds=kinds, backend=backend)
    except EdgeInferError as exc:  # an unknown name, a damaged file: loading it says so, once
        log.debug("could not prepare %s: %s", model, exc)
    except ImportError as exc:
        log.warning("could not prepare %s (%s missing); loading it as it is", model, exc.name)
    except OSError as exc:  # a full disk, a cache folder it may not write: the model loads as it is
        log.warning("could not prepare %s (%s); loading it as it is", model, exc)
