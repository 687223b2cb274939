"""Checks on an ONNX model folder before onnxruntime opens it.

onnxruntime follows a model's external-data paths wherever they point, so a downloaded model could
make it read any file the user can read. Every external tensor must live in a regular file inside
the model's folder (no absolute paths, no "..", no symlinks leading out), and fit in that file.
The I/O names are checked against the contract the backend drives (a decoder's, or an encoder's).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import CorruptModelError, ModelLoadError

DECODER_INPUTS = ("input_ids", "attention_mask", "position_ids")
DECODER_OUTPUTS = ("logits",)
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ENCODER_OUTPUTS = ("sentence_embedding",)
ENCODER_OPTIONAL_OUTPUTS = ("last_hidden_state",)


def _external_tensors(model: Any) -> list[Any]:
    from onnx import TensorProto
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(model) if t.data_location == TensorProto.EXTERNAL]


def check_external_data(model: Any, folder: Path) -> None:
    """Refuse external data outside ``folder`` or past the end of its file (CorruptModelError)."""
    root = folder.resolve()
    for tensor in _external_tensors(model):
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"tensor {tensor.name!r} of {folder / 'model.onnx'}"
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            raise CorruptModelError(
                f"{where} keeps its weights at {location!r}, outside the model folder: refused "
                "(external data must be a plain file name inside the folder); re-export the model"
            )
        path = folder / location
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise CorruptModelError(f"{where}: {location!r} is a link out of the model folder: refused")
        if not path.is_file():
            raise CorruptModelError(f"{where}: its data file {location!r} is missing; copy the whole folder")
        offset, length = int(info.get("offset", 0)), int(info.get("length", 0))
        size = path.stat().st_size
        if offset + length > size:
            raise CorruptModelError(
                f"{where}: needs bytes {offset}..{offset + length} of {location!r}, which has {size}: "
                "the file is truncated; copy or convert the model again"
            )


def _check_io(model: Any, want_in: set[str], want_out: set[str], contract: str,
              optional_out: set[str] | None = None) -> None:
    """Graph inputs/outputs exactly as wanted (``optional_out`` may be there or not); else ModelLoadError."""
    initializers = {t.name for t in model.graph.initializer}
    have_in = {i.name for i in model.graph.input} - initializers
    have_out = {o.name for o in model.graph.output}
    problems = []
    for kind, want, have, extra in (("input", want_in, have_in, set()),
                                    ("output", want_out, have_out, optional_out or set())):
        if want - have:
            problems.append(f"missing {kind}s {sorted(want - have)[:4]}")
        if have - want - extra:
            problems.append(f"unexpected {kind}s {sorted(have - want - extra)[:4]}")
    if problems:
        raise ModelLoadError(
            f"the ONNX graph does not follow edgeinfer's {contract} contract ({'; '.join(problems)}); "
            "convert the checkpoint with `edgeinfer convert --format onnx`"
        )


def check_decoder_io(model: Any, n_layers: int) -> None:
    """The inputs/outputs the engine feeds and reads, no more and no fewer (ModelLoadError)."""
    layers = [(i, kv) for i in range(n_layers) for kv in ("key", "value")]
    want_in = {*DECODER_INPUTS, *(f"past_key_values.{i}.{kv}" for i, kv in layers)}
    want_out = {*DECODER_OUTPUTS, *(f"present.{i}.{kv}" for i, kv in layers)}
    _check_io(model, want_in, want_out, "decoder")


def check_encoder_io(model: Any) -> None:
    """An embedding encoder's inputs and its pooled output, as the embedding backend feeds and reads them."""
    _check_io(model, set(ENCODER_INPUTS), set(ENCODER_OUTPUTS), "encoder", set(ENCODER_OPTIONAL_OUTPUTS))


def load_checked(folder: Path, *, n_layers: int | None = None, encoder: bool = False) -> Any:
    """The folder's model.onnx (graph only, weights left on disk) after every check above: the decoder
    contract when ``n_layers`` is given, the embedding encoder's when ``encoder``."""
    import onnx
    from google.protobuf.message import DecodeError

    path = folder / "model.onnx"
    if not path.is_file():
        raise CorruptModelError(f"{folder} has no model.onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise CorruptModelError(f"{path} is not a valid ONNX file ({exc}); convert or copy it again") from exc
    check_external_data(model, folder)
    if n_layers is not None:
        check_decoder_io(model, n_layers)
    if encoder:
        check_encoder_io(model)
    return model
