"""Backend registry. Built-in backends register exactly as a third-party one would."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from ..errors import BackendUnavailableError
from .base import Backend, Capabilities, EvalItem, LogitsSampler, Sampler

BackendFactory = Callable[..., Backend]
_REGISTRY: dict[str, tuple[str, str]] = {}  # name -> (module, attribute), imported lazily
_FACTORIES: dict[str, BackendFactory] = {}
ENTRY_POINT_GROUP = "edgeinfer.backends"


def register_backend(name: str, factory: BackendFactory | str) -> None:
    """Register a backend by factory, or by 'module:attribute' so heavy imports wait for use."""
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        _REGISTRY[name] = (module, attr)
    else:
        _FACTORIES[name] = factory


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY and ep.name not in _FACTORIES:
            register_backend(ep.name, ep.value)


def backend_names() -> list[str]:
    _load_entry_points()
    return sorted(set(_REGISTRY) | set(_FACTORIES))


def get_backend(name: str) -> BackendFactory:
    """The factory of a registered backend; a clear error when it is missing or not installed."""
    if name not in _FACTORIES and name not in _REGISTRY:
        _load_entry_points()
    if name in _FACTORIES:
        return _FACTORIES[name]
    if name not in _REGISTRY:
        raise BackendUnavailableError(f"unknown backend {name!r}; available: {backend_names()}")
    module, attr = _REGISTRY[name]
    try:
        mod: Any = __import__(module, fromlist=[attr])
        factory = getattr(mod, attr)
    except ImportError as exc:
        extra = {"llama.cpp": "llama", "onnx": "onnx"}.get(name, name)
        raise BackendUnavailableError(
            f"the {name} backend is not installed ({exc.name} missing): "
            f"pip install 'edgeinfer[{extra}]'"
        ) from exc
    _FACTORIES[name] = factory
    return factory


register_backend("llama.cpp", "edgeinfer.backends.llamacpp:LlamaCppBackend")
register_backend("onnx", "edgeinfer.backends.onnx_factory:open_onnx")  # decoder or embedding encoder

__all__ = [
    "Backend",
    "BackendFactory",
    "Capabilities",
    "EvalItem",
    "LogitsSampler",
    "Sampler",
    "backend_names",
    "get_backend",
    "register_backend",
]
