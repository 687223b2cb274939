"""The plugin surface for backends: the contract, the spec a backend declares, and the registry.

Built-in backends register exactly as a third-party one would (see ``builtin`` and ``registry``).
"""

from __future__ import annotations

from ..device import GPU, Artifact, Choice, Probe, choose, probe_system
from .base import Backend, Capabilities, EvalItem, LogitsSampler, Sampler
from .builtin import BUILTIN_SPECS
from .formats import ArtifactFormat, Detector, folder_with
from .registry import (
    ENTRY_POINT_GROUP,
    BackendFactory,
    BackendSpec,
    backend_names,
    backend_specs,
    format_of,
    get_backend,
    get_spec,
    known_formats,
    pick_backend,
    register_backend,
    register_spec,
    registered,
    unregister_backend,
)

# Registered in code too, so nothing depends on the installed entry points being current.
for _spec in BUILTIN_SPECS:
    register_spec(_spec)

__all__ = [
    "ENTRY_POINT_GROUP",
    "GPU",
    "Artifact",
    "ArtifactFormat",
    "Backend",
    "backend_names",
    "backend_specs",
    "BackendFactory",
    "BackendSpec",
    "Capabilities",
    "Choice",
    "choose",
    "Detector",
    "EvalItem",
    "folder_with",
    "format_of",
    "get_backend",
    "get_spec",
    "known_formats",
    "LogitsSampler",
    "pick_backend",
    "Probe",
    "probe_system",
    "register_backend",
    "register_spec",
    "registered",
    "Sampler",
    "unregister_backend",
]
