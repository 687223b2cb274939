"""Batching on the onnx backend, for real: SmolLM2-135M converted to fp32 and int4 ONNX. One-token items of
several sequences share one onnxruntime run (gaps padded), and every row's logits equal those of the
same item run alone, bit for bit; concurrent greedy requests get exactly their unbatched output. A model
whose kernels are not row-exact (MatMulNBits below accuracy level 4) runs its items one by one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from hf_fixtures import cache_key, cached_build, converters_digest, rebuilt_checkpoint, tiny_checkpoint  # noqa: E402
from waits import BATCH_PROMPTS, concurrently, one_by_one  # noqa: E402

import edgeinfer as ei  # noqa: E402
from edgeinfer.backends.base import EvalItem  # noqa: E402
from edgeinfer.backends.onnx import OnnxBackend, plan_runs, rows_computed_alike  # noqa: E402

pytestmark = pytest.mark.slow
PROMPTS = BATCH_PROMPTS


def converted_smollm2(quant: str) -> Path:
    """SmolLM2 as an edgeinfer ONNX folder of ``quant``, cached across sessions (int4 quantizes for
    ~40 s), keyed by the checkpoint and the converter's sources."""
    from edgeinfer_converters import convert

    source = rebuilt_checkpoint("smollm2")

    def build(out: Path) -> None:
        convert(source, out / "model", format="onnx", quant=quant, quality=False, n_threads=2)

    key = cache_key("onnx", quant, source.name, converters_digest())
    return cached_build(f"onnx-smollm2-{quant}", key, build) / "model"


@pytest.fixture(scope="module", params=["fp32", "int4"])
def folder(request: pytest.FixtureRequest) -> Path:
    return converted_smollm2(request.param)


def prefill(backend: OnnxBackend, seqs: list[int]) -> dict[int, int]:
    """Each sequence gets its own prompt (lengths differ); returns its greedy next token."""
    nxt = {}
    for seq, prompt in zip(seqs, PROMPTS, strict=False):
        (row,) = backend.eval([EvalItem(seq, backend.tokenize(prompt))])
        nxt[seq] = int(backend.logits(row).argmax())
    return nxt


def decode(backend: OnnxBackend, seqs: list[int], steps: int, *, together: bool) -> np.ndarray:
    """Greedy steps of every sequence (one eval for all, or one eval per sequence); [steps, seqs, vocab]."""
    nxt = prefill(backend, seqs)
    out = []
    for _ in range(steps):
        items = [EvalItem(seq, [nxt[seq]]) for seq in seqs]
        groups = [items] if together else [[item] for item in items]
        rows = [backend.logits(row).copy() for group in groups for row in backend.eval(group)]
        nxt = {seq: int(row.argmax()) for seq, row in zip(seqs, rows, strict=True)}
        out.append(np.stack(rows))
    return np.stack(out)


def test_one_eval_runs_its_decode_steps_together_with_the_logits_of_each_alone(folder: Path) -> None:
    """Slots 0, 2, 3, 5: one run per step (slots 1 and 4 padded), and the logits of every row equal
    those of one-by-one steps bit for bit; the padded slot's own sequence is untouched."""
    seqs = [0, 2, 3, 5]
    alone = OnnxBackend(folder, n_ctx=256, n_threads=2, max_sequences=6, batch=False)
    expected = decode(alone, seqs, 8, together=True)  # batch=False: each item in its own run anyway
    assert alone.session_runs == 4 + 8 * 4
    together = OnnxBackend(folder, n_ctx=256, n_threads=2, max_sequences=6)
    assert together.batching and together.caps.exact_batch
    together.eval([EvalItem(1, together.tokenize("A sequence that pads the batch"))])
    before = together.session_runs
    got = decode(together, seqs, 8, together=True)
    assert together.session_runs - before == 4 + 8 and together.padding_rows == 8 * 2
    assert np.array_equal(got, expected)
    length = together.seq_length(1)  # slot 1 was a padding row 8 times: its KV still continues exactly
    reference = OnnxBackend(folder, n_ctx=256, n_threads=2, max_sequences=1)
    ids = reference.tokenize("A sequence that pads the batch")
    reference.eval([EvalItem(0, ids)])
    assert length == len(ids)
    (a,) = reference.eval([EvalItem(0, [42])])
    (b,) = together.eval([EvalItem(1, [42])])
    assert np.array_equal(reference.logits(a), together.logits(b))
    for backend in (alone, together, reference):
        backend.close()


def test_items_of_several_tokens_run_alone_and_rows_keep_item_order(folder: Path) -> None:
    backend = OnnxBackend(folder, n_ctx=256, n_threads=2, max_sequences=4)
    nxt = prefill(backend, [0, 1, 2, 3])
    extra = backend.tokenize(" and then", add_special=False)
    items = [EvalItem(3, [nxt[3]]), EvalItem(1, [nxt[1], *extra], n_outputs=2), EvalItem(0, [nxt[0]]),
             EvalItem(2, [nxt[2]])]
    assert plan_runs(items, lambda s: False) == [[2], [3, 0], [1]]  # slot 1 is busy: slot 0 runs alone
    before = backend.session_runs
    rows = backend.eval(items)
    assert backend.session_runs - before == 3 and len(rows) == 5
    got = [backend.logits(r).copy() for r in rows]
    for item in items:
        backend.kv_truncate(item.seq_id, backend.seq_length(item.seq_id) - len(item.tokens))
    alone = [backend.logits(r).copy() for item in items for r in backend.eval([item])]
    assert all(np.array_equal(a, b) for a, b in zip(got, alone, strict=True))
    twice = [EvalItem(0, [5]), EvalItem(0, [6])]  # one sequence twice: in order, one after the other
    got = [backend.logits(r).copy() for r in backend.eval(twice)]
    backend.kv_truncate(0, backend.seq_length(0) - 2)
    alone = [backend.logits(r).copy() for item in twice for r in backend.eval([item])]
    assert all(np.array_equal(a, b) for a, b in zip(got, alone, strict=True))
    backend.close()


def test_plan_runs_joins_one_token_items_of_nearby_slots() -> None:
    items = [EvalItem(s, [1]) for s in (0, 1, 3, 7)] + [EvalItem(4, [1, 2])]
    assert plan_runs(items, lambda s: True) == [[0, 1, 2], [3], [4]]  # slot 2 pads; 4..6 is too wide a gap
    assert plan_runs(items, lambda s: s != 2) == [[0, 1], [2], [3], [4]]  # slot 2 cannot pad (e.g. full)
    assert plan_runs(items, lambda s: True, max_gap=3) == [[0, 1, 2, 3], [4]]
    assert plan_runs([EvalItem(0, [1]), EvalItem(0, [2])], lambda s: True) == [[0], [1]]


def test_batched_requests_give_exactly_their_unbatched_greedy_output(folder: Path) -> None:
    with ei.load(folder, n_ctx=256, n_threads=2, max_sequences=4, kv=ei.KVOptions(settle=False),
                 speculation=None) as model:
        alone = [c.tokens for c in one_by_one(model, PROMPTS, max_tokens=24, temperature=0)]
        backend = model.backend
        runs, generated = backend.session_runs, sum(len(tokens) for tokens in alone)
        together = concurrently(model, PROMPTS, max_tokens=24, temperature=0)
        assert backend.sequences_allocated == 4
        # alone, every token but each request's first costs a run of its own (the first: its prefill)
        assert backend.session_runs - runs < generated * 3 // 4
    assert [c.tokens for c in together] == alone


def test_kernels_below_accuracy_level_4_run_one_by_one(tmp_path: Path) -> None:
    """MatMulNBits at accuracy level 0 sums a batch in another order than one row: auto batching is off
    for such a model (outputs exact), and forcing it on says so in caps.exact_batch."""
    from edgeinfer_converters import convert
    from edgeinfer_converters.to_onnx.quantize import quantize_onnx

    from edgeinfer.onnx_check import load_checked

    fp32 = convert(tiny_checkpoint("llama"), tmp_path / "fp32", format="onnx", quant="fp32",
                   quality=False).artifact
    levels = {level: quantize_onnx(fp32, tmp_path / f"int4-acc{level}", "int4", accuracy_level=level)
              for level in (0, 4)}
    assert rows_computed_alike(load_checked(levels[4])) and not rows_computed_alike(load_checked(levels[0]))
    assert rows_computed_alike(load_checked(fp32))
    auto = OnnxBackend(levels[0], n_ctx=64, n_threads=2, max_sequences=2)
    forced = OnnxBackend(levels[0], n_ctx=64, n_threads=2, max_sequences=2, batch=True)
    assert not auto.batching and auto.caps.exact_batch
    assert forced.batching and not forced.caps.exact_batch
    for backend in (auto, forced):
        prefill(backend, [0, 1])
        before = backend.session_runs
        backend.eval([EvalItem(0, [5]), EvalItem(1, [7])])
        assert backend.session_runs - before == (1 if backend is forced else 2)
        backend.close()


def test_sequences_and_kv_bytes_grow_as_used(folder: Path) -> None:
    backend = OnnxBackend(folder, n_ctx=1024, n_threads=2, max_sequences=4)
    per_position = backend.kv_bytes_per_token()
    assert per_position == 2 * backend.n_layers * backend.kv_shape[1] * backend.kv_shape[3] * 4
    assert backend.sequences_allocated == 1 and backend.kv_bytes_allocated() == 256 * per_position
    backend.eval([EvalItem(2, backend.tokenize("Hello there"))])  # slot 2 used: slots 0..2 held
    assert backend.sequences_allocated == 3 and backend.kv_bytes_allocated() == 3 * 256 * per_position
    assert backend.grow_sequences(9) == 4 and backend.kv_bytes_allocated() == 4 * 256 * per_position
    ids = backend.tokenize("Hello there")
    backend.eval([EvalItem(0, backend.tokenize(" ".join(PROMPTS * 10))[:300])])  # past 256 positions
    assert backend.kv_bytes_allocated() == 4 * 512 * per_position and backend.seq_length(2) == len(ids)
    (a,) = backend.eval([EvalItem(2, [42])])  # carried across both growths: continues exactly
    fresh = OnnxBackend(folder, n_ctx=1024, n_threads=2, max_sequences=1)
    fresh.eval([EvalItem(0, ids)])
    (b,) = fresh.eval([EvalItem(0, [42])])
    assert np.array_equal(backend.logits(a), fresh.logits(b))
    backend.kv_drop(3)  # dropping or truncating a sequence allocates nothing
    assert backend.kv_bytes_allocated() == 4 * 512 * per_position
    for opened in (backend, fresh):
        opened.close()
