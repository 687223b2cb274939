"""edgeinfer: run language models cheaply on the user's own device.

    import edgeinfer as ei
    model = ei.load("smollm2-135m-instruct")
    print(model.generate("The capital of France is", max_tokens=8, temperature=0).text)
"""

from __future__ import annotations

from .backends import Backend, Capabilities, EvalItem, backend_names, register_backend
from .chat_template import render_chat
from .device import Artifact, Choice, Probe, choose, probe_system
from .engine import Completion, CompletionStream, Engine
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
    InvalidDatasetError,
    InvalidRequestError,
    LockFileError,
    ModelError,
    ModelLoadError,
    ModelNotAvailableError,
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
from .loader import load
from .lock import ModelEntry, ModelLock
from .metrics import ModelMetrics
from .model import Conversation, Model
from .remote import RemoteModel
from .routing import Cascade, Learned, LocalCost, Router, Rule, Rules, Tier, TokenPrice, train_router
from .sampling import SamplingParams
from .sources import ResolvedModel, resolve
from .stats import Stats
from .translate import LANGUAGES, Translation, TranslationStats, Translator

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "Backend",
    "backend_names",
    "BackendError",
    "BackendUnavailableError",
    "Capabilities",
    "Cascade",
    "ChatTemplateError",
    "CheckpointError",
    "ChecksumMismatchError",
    "Choice",
    "choose",
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
    "Engine",
    "EvalItem",
    "EvaluationError",
    "InvalidDatasetError",
    "InvalidRequestError",
    "LANGUAGES",
    "Learned",
    "load",
    "LocalCost",
    "LockFileError",
    "Model",
    "ModelEntry",
    "ModelError",
    "ModelLoadError",
    "ModelLock",
    "ModelMetrics",
    "ModelNotAvailableError",
    "OutputExistsError",
    "Probe",
    "probe_system",
    "register_backend",
    "RemoteError",
    "RemoteModel",
    "RemoteProtocolError",
    "RemoteRequestError",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
    "StorageError",
    "render_chat",
    "resolve",
    "ResolvedModel",
    "Router",
    "Rule",
    "Rules",
    "SamplingParams",
    "Stats",
    "TextTooLongError",
    "Tier",
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
