"""Third-party backends: registered in code or by an entry point, chosen for their own format by
ei.load(backend="auto"), serving generate through the engine; formats as data; cheap built-in specs."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edgeinfer as ei
from edgeinfer.backends import (
    ArtifactFormat,
    BackendSpec,
    backend_names,
    backend_specs,
    get_backend,
    get_spec,
    register_backend,
    registered,
    unregister_backend,
)
from edgeinfer.backends import format_of as artifact_format
from edgeinfer.backends.testing import FakeBackend

ROOT = Path(__file__).resolve().parent.parent


class ToyBackend(FakeBackend):
    """A plugin's backend as the loader opens it: a path and the loader's keyword options."""

    name = "toy"

    def __init__(self, path: Any, *, n_ctx: int | None = None, max_sequences: int = 4, **_: Any) -> None:
        super().__init__(n_ctx=n_ctx or 256, max_sequences=max_sequences)
        self.path = Path(path)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every registration a test makes is gone when it ends."""
    before = backend_names()
    yield
    assert backend_names() == before


def test_a_backend_registered_in_code_serves_its_own_format(tmp_path: Path) -> None:
    model_file = tmp_path / "weights.toy"
    model_file.write_bytes(b"toy weights")
    assert artifact_format(model_file) == "unknown"
    register_backend("toy", ToyBackend, formats=(ArtifactFormat("toy", ".toy"),))
    try:
        assert artifact_format(model_file) == "toy"
        model = ei.load(model_file, backend="auto")
        try:
            assert isinstance(model.backend, ToyBackend) and model.choice.backend == "toy"
            assert "toy artifact -> toy backend" in model.choice.reasons
            assert model.generate("ab", max_tokens=3, temperature=0).text == "cde"
        finally:
            model.close()
    finally:
        unregister_backend("toy")
    assert artifact_format(model_file) == "unknown"


def test_registered_restores_what_it_replaced_in_its_place() -> None:
    builtin, order = get_spec("llama.cpp"), [spec.name for spec in backend_specs()]
    with registered(BackendSpec("llama.cpp", ToyBackend, formats=["gguf"])):
        assert get_backend("llama.cpp") is ToyBackend and get_spec("llama.cpp").formats == ("gguf",)
    assert get_spec("llama.cpp") is builtin and [spec.name for spec in backend_specs()] == order


def test_a_lazy_factory_must_name_module_and_attribute() -> None:
    with pytest.raises(ValueError, match="module:attribute"):
        BackendSpec("bad", "just_a_module")


def test_register_backend_keeps_its_positional_form_and_unregisters() -> None:
    spec = register_backend("toy-positional", ToyBackend)
    try:
        assert spec.formats == () and spec.devices == ("cpu",) and spec.priority == 0
        assert get_backend("toy-positional") is ToyBackend
        assert "toy-positional" in backend_names()
    finally:
        assert unregister_backend("toy-positional") is spec


PLUGIN = '''
from pathlib import Path

from edgeinfer.backends import ArtifactFormat, BackendSpec
from edgeinfer.backends.testing import FakeBackend


def looks_like_toy(path: Path) -> bool:
    return path.is_file() and path.read_bytes().startswith(b"TOY!")


class ToyBackend(FakeBackend):
    name = "toy-plugin"

    def __init__(self, path, *, n_ctx=None, max_sequences=4, **_):
        super().__init__(n_ctx=n_ctx or 256, max_sequences=max_sequences, step=2)


SPEC = BackendSpec("toy-plugin", "toy_backend:ToyBackend",
                   formats=(ArtifactFormat("toybin", looks_like_toy),),
                   install_hint="pip install toy-backend")
'''


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Path]:
    """An installed distribution 'toy-backend' with a module and two entry points: a spec, and (the
    older form) a factory."""
    site = tmp_path / "site"
    (site / "toy_backend-0.1.dist-info").mkdir(parents=True)
    (site / "toy_backend.py").write_text(PLUGIN, encoding="utf-8")
    (site / "toy_backend-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: toy-backend\nVersion: 0.1\n", encoding="utf-8")
    (site / "toy_backend-0.1.dist-info" / "entry_points.txt").write_text(
        "[edgeinfer.backends]\ntoy-plugin = toy_backend:SPEC\ntoy-legacy = toy_backend:ToyBackend\n",
        encoding="utf-8")
    sys.path.insert(0, str(site))  # removed here, before the leak check (monkeypatch undoes later)
    importlib.invalidate_caches()
    yield site
    sys.path.remove(str(site))
    for name in ("toy-plugin", "toy-legacy"):
        unregister_backend(name)
    sys.modules.pop("toy_backend", None)


def test_an_entry_point_plugin_is_chosen_for_its_format(plugin: Path, tmp_path: Path) -> None:
    model_file = tmp_path / "model.bin"
    model_file.write_bytes(b"TOY!...")
    assert artifact_format(model_file) == "toybin"  # the plugin's detector (a callable)
    spec = get_spec("toy-plugin")
    assert spec.install_hint == "pip install toy-backend" and spec.factory == "toy_backend:ToyBackend"
    model = ei.load(model_file, backend="auto")
    try:
        assert model.choice.backend == "toy-plugin" and type(model.backend).__module__ == "toy_backend"
        assert model.generate("ab", max_tokens=3, temperature=0).text == "dfh"  # step=2
    finally:
        model.close()


def test_an_entry_point_naming_a_factory_still_works(plugin: Path, tmp_path: Path) -> None:
    factory = get_backend("toy-legacy")
    assert factory.__name__ == "ToyBackend" and get_spec("toy-legacy").formats == ()
    model_file = tmp_path / "weights.anything"
    model_file.write_bytes(b"data")
    model = ei.load(model_file, backend="toy-legacy")
    try:
        assert model.generate("a", max_tokens=2, temperature=0).text == "ce"
    finally:
        model.close()


def test_unknown_backend_names_the_registered_ones() -> None:
    with pytest.raises(ei.BackendUnavailableError, match=r"unknown backend 'nope'.*llama\.cpp"):
        get_backend("nope")


def test_artifact_formats_of_existing_inputs_are_unchanged(tmp_path: Path) -> None:
    (tmp_path / "magic.bin").write_bytes(b"GGUF\x03\x00\x00\x00")
    (tmp_path / "named.gguf").write_bytes(b"not really")
    (tmp_path / "other.bin").write_bytes(b"GGUX")
    for folder, marker in (("onnx", "model.onnx"), ("hf", "config.json"), ("both", "model.onnx"),
                           ("empty", None)):
        (tmp_path / folder).mkdir()
        if marker:
            (tmp_path / folder / marker).write_text("{}")
    (tmp_path / "both" / "config.json").write_text("{}")  # an ONNX export keeps its config: still onnx
    expected = {"magic.bin": "gguf", "named.gguf": "gguf", "other.bin": "unknown", "onnx": "onnx",
                "hf": "hf", "both": "onnx", "empty": "unknown"}
    assert {name: artifact_format(tmp_path / name) for name in expected} == expected


def test_built_in_specs_are_entry_points_that_import_no_backend_library() -> None:
    """pyproject's entry points name BackendSpec objects; importing them loads neither llama_cpp nor
    onnxruntime (the registry reads every spec on each load)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    points = project["entry-points"]["edgeinfer.backends"]
    assert set(points) == {"llama.cpp", "onnx"}
    code = textwrap.dedent(f"""
        import importlib, sys
        from edgeinfer.backends import BackendSpec
        for name, value in {points!r}.items():
            module, _, attr = value.partition(":")
            spec = getattr(importlib.import_module(module), attr)
            assert isinstance(spec, BackendSpec) and spec.name == name, (name, spec)
        assert "llama_cpp" not in sys.modules and "onnxruntime" not in sys.modules
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
