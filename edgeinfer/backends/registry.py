"""The backend registry: each backend declares a BackendSpec; edgeinfer picks among them by format and probe.

Built-in backends register exactly as a third-party one does: a ``BackendSpec`` (cheap to import: its
factory is a lazy "module:attribute" string) registered in code or named by an entry point in the
``edgeinfer.backends`` group. An entry point may also name a factory (the older form).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BackendUnavailableError
from .base import Backend
from .formats import FORMATS, ArtifactFormat, detect_format

if TYPE_CHECKING:  # hooks take device.py's Probe; device imports the registry, so only for typing
    from ..device import GPU, Probe

log = logging.getLogger("edgeinfer.backends")
BackendFactory = Callable[..., Backend]
ENTRY_POINT_GROUP = "edgeinfer.backends"


@dataclass(frozen=True)
class BackendSpec:
    """What a backend declares so edgeinfer can choose it for an artifact without importing it."""

    name: str
    factory: BackendFactory | str  # the factory, or "module:attribute" imported on first use
    formats: tuple[str | ArtifactFormat, ...] = ()  # format names it reads; ArtifactFormat declares one
    devices: tuple[str, ...] = ("cpu",)  # device kinds it can run on: "cpu", "cuda", "metal", ...
    install_hint: str | None = None  # e.g. "pip install 'edgeinfer[llama]'"
    requires: str | None = None  # what must be installed, named in errors (default: the factory's module)
    priority: int = 0  # among installed backends reading a format, the highest wins (ties: first registered)
    installed: Callable[[Probe], bool] | None = None  # default: the factory's module is importable
    gpu_usable: Callable[[Probe, GPU], bool] | None = None  # default: the GPU's api is in ``devices``
    gpu_hint: Callable[[Probe], str] | None = None  # why the GPUs present are not used, and the fix

    def __post_init__(self) -> None:
        """Refuse a lazy factory without ':attribute' now, not at first load; keep sequences as tuples."""
        if isinstance(self.factory, str) and not all(self.factory.partition(":")[::2]):
            raise ValueError(f"backend {self.name!r}: a lazy factory is 'module:attribute', "
                             f"not {self.factory!r}")
        object.__setattr__(self, "formats", tuple(self.formats))  # lists given by a plugin become tuples
        object.__setattr__(self, "devices", tuple(self.devices))

    @property
    def module(self) -> str | None:
        """The module a lazy factory lives in (None for a factory object)."""
        return self.factory.partition(":")[0] if isinstance(self.factory, str) else None

    @property
    def format_names(self) -> tuple[str, ...]:
        """Names of the formats this backend reads."""
        return tuple(f.name if isinstance(f, ArtifactFormat) else f for f in self.formats)

    @property
    def declared_formats(self) -> tuple[ArtifactFormat, ...]:
        """Formats this backend brings, with their detectors."""
        return tuple(f for f in self.formats if isinstance(f, ArtifactFormat))

    def is_installed(self, probe: Probe) -> bool:
        """Whether this machine can run the backend (checked without importing it)."""
        if self.installed is not None:
            return bool(self.installed(probe))
        return self.module is None or _importable(self.module)

    def can_use_gpu(self, probe: Probe, gpu: GPU) -> bool:
        """Whether the installed backend can drive ``gpu``."""
        if self.gpu_usable is not None:
            return bool(self.gpu_usable(probe, gpu))
        return gpu.api in self.devices

    def why_no_gpu(self, probe: Probe) -> str:
        """Why the GPUs on ``probe`` are left unused, with the fix where one is known."""
        if self.gpu_hint is not None:
            return self.gpu_hint(probe)
        return (f"GPU present ({', '.join(probe.gpu_apis())}) but the {self.name} backend runs on "
                f"{', '.join(self.devices)}; running on the CPU")

    def unavailable(self) -> str:
        """The error message for a machine where this backend is not installed."""
        needs = self.requires or self.module or "its package"
        return f"the {self.name} backend needs {needs}" + _hint(self.install_hint)


def _hint(install_hint: str | None) -> str:
    """': <how to install>' for an error message, or nothing when the spec gives no hint."""
    return f": {install_hint}" if install_hint else ""


def _importable(module: str) -> bool:
    """True when ``module`` can be found (its parent packages may be imported; the module is not)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


_SPECS: dict[str, BackendSpec] = {}  # registration order breaks priority ties
_FACTORIES: dict[str, BackendFactory] = {}  # lazy factories once imported
_BROKEN_ENTRY_POINTS: set[tuple[str, str]] = set()  # (name, value) that failed to load: not retried
_scanned_path: tuple[str, ...] | None = None  # the sys.path the installed entry points were last read for


def register_spec(spec: BackendSpec) -> BackendSpec:
    """Register (or replace) a backend by its spec: what entry points and built-ins use."""
    _SPECS[spec.name] = spec
    _FACTORIES.pop(spec.name, None)
    return spec


def register_backend(
    name: str,
    factory: BackendFactory | str,
    *,
    formats: tuple[str | ArtifactFormat, ...] = (),
    devices: tuple[str, ...] = ("cpu",),
    install_hint: str | None = None,
    requires: str | None = None,
    priority: int = 0,
    installed: Callable[[Probe], bool] | None = None,
    gpu_usable: Callable[[Probe, GPU], bool] | None = None,
    gpu_hint: Callable[[Probe], str] | None = None,
) -> BackendSpec:
    """Register a backend by factory, or by 'module:attribute' so heavy imports wait for use."""
    return register_spec(BackendSpec(
        name=name, factory=factory, formats=formats, devices=devices, install_hint=install_hint,
        requires=requires, priority=priority, installed=installed, gpu_usable=gpu_usable, gpu_hint=gpu_hint,
    ))


def unregister_backend(name: str) -> BackendSpec | None:
    """Remove a registered backend (tests, or a plugin replaced at run time); returns its spec."""
    _FACTORIES.pop(name, None)
    return _SPECS.pop(name, None)


@contextmanager
def registered(spec: BackendSpec) -> Iterator[BackendSpec]:
    """Register ``spec`` for the duration of a ``with`` block, then restore what was there before."""
    previous = _SPECS.get(spec.name)
    register_spec(spec)
    try:
        yield spec
    finally:
        if previous is None:
            unregister_backend(spec.name)
        else:  # replaced in place: the registration order (which breaks priority ties) is kept
            register_spec(previous)


def _load_entry_point(ep: EntryPoint) -> None:
    """Register what an entry point names: a BackendSpec, or (the older form) a factory."""
    target = ep.load()
    if isinstance(target, BackendSpec):  # registered under the entry point's name, the registry key
        register_spec(target if target.name == ep.name else replace(target, name=ep.name))
    else:
        register_backend(ep.name, target)


def _load_entry_points() -> None:
    """Register installed plugins not registered yet (read again only when sys.path changed: a scan of
    every installed distribution costs milliseconds); a broken one is logged and skipped."""
    global _scanned_path
    if _scanned_path == tuple(sys.path):
        return
    _scanned_path = tuple(sys.path)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _SPECS or (ep.name, ep.value) in _BROKEN_ENTRY_POINTS:
            continue
        try:
            _load_entry_point(ep)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not break every load
            _BROKEN_ENTRY_POINTS.add((ep.name, ep.value))
            log.warning("backend entry point %s = %s failed to load: %s", ep.name, ep.value, exc)


def backend_specs() -> list[BackendSpec]:
    """Every registered backend (installed plugins included), in registration order."""
    _load_entry_points()
    return list(_SPECS.values())


def backend_names() -> list[str]:
    """Names of the registered backends, sorted."""
    return sorted(spec.name for spec in backend_specs())


def get_spec(name: str) -> BackendSpec:
    """The spec of a registered backend; a clear error naming the others when it is unknown."""
    if name not in _SPECS:
        _load_entry_points()
    if name not in _SPECS:
        raise BackendUnavailableError(f"unknown backend {name!r}; available: {backend_names()}")
    return _SPECS[name]


def get_backend(name: str) -> BackendFactory:
    """The factory of a registered backend; a clear error when it is missing or not installed."""
    spec = get_spec(name)
    if not isinstance(spec.factory, str):
        return spec.factory
    if name not in _FACTORIES:
        module, _, attr = spec.factory.partition(":")
        try:
            _FACTORIES[name] = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the {name} backend is not installed ({exc.name} missing){_hint(spec.install_hint)}"
            ) from exc
    return _FACTORIES[name]


def pick_backend(probe: Probe, fmt: str) -> BackendSpec:
    """The installed backend with the highest priority that reads ``fmt`` (ties: first registered)."""
    readers = sorted((s for s in backend_specs() if fmt in s.format_names), key=lambda s: -s.priority)
    if not readers:
        raise BackendUnavailableError(f"no backend runs {fmt!r} artifacts")
    for spec in readers:
        if spec.is_installed(probe):
            return spec
    raise BackendUnavailableError(readers[0].unavailable())


def known_formats() -> list[ArtifactFormat]:
    """The built-in formats, then those registered backends declare (first of a name wins)."""
    table = {fmt.name: fmt for fmt in FORMATS}
    for spec in backend_specs():
        for fmt in spec.declared_formats:
            table.setdefault(fmt.name, fmt)
    return list(table.values())


def format_of(path: Path) -> str:
    """The format of the artifact at ``path`` per the format table ('unknown' when none matches)."""
    return detect_format(path, known_formats())
