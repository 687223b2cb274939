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
    UnknownModelError,
    UnsupportedArchitectureError,
)
from .loader import load
from .lock import ModelEntry, ModelLock
from .model import Conversation, Model
from .remote import RemoteModel
from .routing import Cascade, Learned, LocalCost, Router, Rule, Rules, Tier, TokenPrice, train_router
from .sampling import SamplingParams
from .sources import ResolvedModel, resolve
from .stats import Stats

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "Capabilities",
    "Cascade",
    "ChatTemplateError",
    "CheckpointError",
    "ConversionError",
    "ChecksumMismatchError",
    "Choice",
    "Completion",
    "CompletionStream",
    "ContextOverflowError",
    "Conversation",
    "CorruptModelError",
    "DeviceError",
    "EdgeInferError",
    "EmptyPromptError",
    "EvaluationError",
    "InvalidDatasetError",
    "Engine",
    "EvalItem",
    "InvalidRequestError",
    "Learned",
    "LocalCost",
    "LockFileError",
    "Model",
    "ModelEntry",
    "ModelError",
    "ModelLoadError",
    "ModelLock",
    "ModelNotAvailableError",
    "OutputExistsError",
    "Probe",
    "RemoteError",
    "RemoteModel",
    "RemoteProtocolError",
    "RemoteRequestError",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
    "ResolvedModel",
    "Router",
    "Rule",
    "Rules",
    "SamplingParams",
    "Stats",
    "Tier",
    "TokenPrice",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "__version__",
    "backend_names",
    "choose",
    "load",
    "probe_system",
    "register_backend",
    "render_chat",
    "resolve",
    "train_router",
]
