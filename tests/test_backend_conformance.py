"""Every backend passes edgeinfer.backends.conformance: the fake, llama.cpp (SmolLM2 GGUF) and ONNX
(a tiny random decoder converted to fp32 ONNX). Real backends are opened through the registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgeinfer.backends import Backend, conformance, get_backend
from edgeinfer.backends.testing import EOS, FakeBackend

Opener = Callable[[], Backend]
OPTIONS = dict(n_ctx=256, n_threads=2, max_sequences=2)


def _fake() -> Backend:
    return FakeBackend(n_ctx=256, whole_history=True)  # predicts from the whole KV: KV ops show


def _onnx_dir(root: Path) -> Path:
    pytest.importorskip("onnxruntime")
    from edgeinfer_converters import convert
    from hf_fixtures import tiny_checkpoint

    out = root / "tiny-llama-fp32"
    convert(tiny_checkpoint("llama"), out, format="onnx", quant="fp32", n_threads=2)
    return out


OPENERS = ["fake", pytest.param("llama.cpp", marks=pytest.mark.slow),
           pytest.param("onnx", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=OPENERS)
def opener(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Opener:
    """Opens a fresh backend of one kind (the ONNX model is converted once per module)."""
    if request.param == "fake":
        return _fake
    if request.param == "llama.cpp":
        path = request.getfixturevalue("smollm2_path")
        return lambda: get_backend("llama.cpp")(path, **OPTIONS)
    folder = _onnx_dir(tmp_path_factory.mktemp("onnx"))
    return lambda: get_backend("onnx")(folder, **OPTIONS)


@pytest.fixture(scope="module")
def backend(opener: Opener) -> Iterator[Backend]:
    opened = opener()
    yield opened
    opened.close()


def eos_of(backend: Backend) -> int | None:
    return EOS if isinstance(backend, FakeBackend) else None  # real models name theirs in caps.eos_token


def test_capabilities(backend: Backend) -> None:
    conformance.check_capabilities(backend)


def test_tokenize_round_trip(backend: Backend) -> None:
    conformance.check_tokenize_round_trip(backend)


def test_eval_rows(backend: Backend) -> None:
    conformance.check_eval_rows(backend)


def test_kv_ops(backend: Backend) -> None:
    conformance.check_kv_ops(backend)


def test_state_round_trip(backend: Backend) -> None:
    conformance.check_state_round_trip(backend)


def test_sequences_grow(backend: Backend) -> None:
    conformance.check_sequences_grow(backend)


def test_is_end(backend: Backend) -> None:
    conformance.check_is_end(backend, eos_of(backend))


def test_close_is_idempotent(opener: Opener) -> None:
    conformance.check_close(opener())


def test_check_backend_runs_every_check(opener: Opener) -> None:
    fresh = opener()
    conformance.check_backend(fresh, eos=eos_of(fresh))


def test_a_broken_backend_fails_the_checks() -> None:
    """The checks catch a backend that ignores truncation (the suite is not vacuous)."""

    class NoTruncate(FakeBackend):
        def kv_truncate(self, seq_id: int, n: int) -> None:
            pass

    with pytest.raises(AssertionError, match="kv_truncate"):
        conformance.check_kv_ops(NoTruncate(n_ctx=256, whole_history=True))
