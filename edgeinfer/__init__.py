"""edgeinfer: run language models cheaply on the user's own device.

    import edgeinfer as ei
    model = ei.load("smollm2-135m-instruct")
    print(model.generate("The capital of France is", max_tokens=8, temperature=0).text)

This module is the user API. Backend authors use ``edgeinfer.backends`` (the plugin API); every other
module is internal and may change between releases.
"""

from __future__ import annotations

import warnings
from typing import Any

from .conversation import Conversation
from .engine import Completion, CompletionStream
from .errors import (
    BackendError,
    BackendUnavailableError,
    ChatTemplateError,
    CheckpointError,
    ChecksumMismatchError,
    ContextOverflowError,
    ConversionError,
    CorruptModelError,
    DeviceError,
    EdgeInferError,
    EmptyPromptError,
    EmptyTextError,
    EvaluationError,
    GatedModelError,
    InvalidDatasetError,
    InvalidRequestError,
    LockFileError,
    MemoryBudgetError,
    ModelError,
    ModelLoadError,
    ModelNotAvailableError,
    ModelNotPreparedError,
    OutputExistsError,
    RemoteError,
    RemoteProtocolError,
    RemoteRequestError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    StorageError,
    TextTooLongError,
    TranslationError,
    UnknownModelError,
    UnsupportedArchitectureError,
    UnsupportedLanguageError,
    WrongSourceLanguageError,
)
from .kv_options import KVOptions
from .loader import load
from .lock import ModelEntry, ModelLock
from .metrics import ModelMetrics
from .model import Model
from .protocol import LanguageModel, Message, Tokenizer
from .remote import RemoteModel
from .routing import Always, Cascade, Learned, LocalCost, Router, Rule, Rules, Tier, TokenPrice, train_router
from .sampling import SamplingParams
from .stats import Stats
from .translate import LANGUAGES, Translation, TranslationStats, Translator

__version__ = "0.1.0"

# Names that used to be exported here and now live where they belong: (module, attribute).
_MOVED = {
    "Artifact": "edgeinfer.backends", "Backend": "edgeinfer.backends", "backend_names": "edgeinfer.backends",
    "Capabilities": "edgeinfer.backends", "Choice": "edgeinfer.backends", "choose": "edgeinfer.backends",
    "EvalItem": "edgeinfer.backends", "Probe": "edgeinfer.backends", "probe_system": "edgeinfer.backends",
    "register_backend": "edgeinfer.backends", "Engine": "edgeinfer.engine",
    "render_chat": "edgeinfer.chat_template", "resolve": "edgeinfer.sources",
    "ResolvedModel": "edgeinfer.sources",
}


def __getattr__(name: str) -> Any:
    """Old spellings keep working for a release, with a warning that says where the name lives now."""
    if name not in _MOVED:
        raise AttributeError(f"module 'edgeinfer' has no attribute {name!r}")
    import importlib

    warnings.warn(f"edgeinfer.{name} moved: import it from {_MOVED[name]}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)


__all__ = [
    "Always",
    "BackendError",
    "BackendUnavailableError",
    "Cascade",
    "ChatTemplateError",
    "CheckpointError",
    "ChecksumMismatchError",
    "GatedModelError",
    "Completion",
    "CompletionStream",
    "ContextOverflowError",
    "Conversation",
    "ConversionError",
    "CorruptModelError",
    "DeviceError",
    "EdgeInferError",
    "EmptyPromptError",
    "EmptyTextError",
    "EvaluationError",
    "InvalidDatasetError",
    "InvalidRequestError",
    "KVOptions",
    "LanguageModel",
    "LANGUAGES",
    "Learned",
    "load",
    "LocalCost",
    "LockFileError",
    "MemoryBudgetError",
    "Message",
    "Model",
    "ModelEntry",
    "ModelError",
    "ModelLoadError",
    "ModelLock",
    "ModelMetrics",
    "ModelNotAvailableError",
    "ModelNotPreparedError",
    "OutputExistsError",
    "RemoteError",
    "RemoteModel",
    "RemoteProtocolError",
    "RemoteRequestError",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
    "Router",
    "Rule",
    "Rules",
    "SamplingParams",
    "Stats",
    "StorageError",
    "TextTooLongError",
    "Tier",
    "Tokenizer",
    "TokenPrice",
    "train_router",
    "Translation",
    "TranslationError",
    "TranslationStats",
    "Translator",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "UnsupportedLanguageError",
    "WrongSourceLanguageError",
    "__version__",
]
