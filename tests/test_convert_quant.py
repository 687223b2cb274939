"""Quantization with llama.cpp, quality against the unquantized model, report.json, --quant auto,
and `edgeinfer lock add`.

The F16 reference is the bundled SmolLM2 Q4_1 requantized to F16: not a true F16 model, but the
same tensors, shapes and tokenizer, which is what these mechanics need.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from edgeinfer_converters.auto_quant import DEFAULT_AUTO_ORDER, choose_quant
from edgeinfer_converters.quality import (
    QualityMetrics,
    compare_logits,
    gguf_logits,
    measure_quality,
    quality_text,
)
from edgeinfer_converters.report import bits_per_weight, report_path, write_report
from edgeinfer_converters.to_gguf.quantize import QUANT_TYPES, gguf_file_type, quantize_gguf

from edgeinfer.errors import ChecksumMismatchError, ConversionError, LockFileError

QUALITY_TOKENS = 128  # enough to order Q8_0 / Q4_K_M (KL ~10x apart), and quick on 2 cores
# One thread: llama.cpp's OpenMP workers spin at barriers, so two threads on a busy 2-core CI machine
# run up to 10x slower than one (measured: 128-token F16 eval 1.1 s on 1 thread, 9-19 s on 2).
THREADS = 1


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".part")]


# --- synthetic: no model needed -----------------------------------------------------------------
def test_compare_logits_identical_inputs():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 50)).astype(np.float32)
    targets = rng.integers(0, 50, size=7)
    m = compare_logits(logits, logits.copy(), targets)
    assert m.mean_kl == 0.0 and m.top1_agreement == 1.0 and m.n_tokens == 7
    assert m.ppl_reference == pytest.approx(m.ppl_candidate)


def test_compare_logits_hand_computed_case():
    # reference logits (0, 0): p = (1/2, 1/2); candidate logits (ln 3, 0): q = (3/4, 1/4), then mirrored
    ref = np.array([[0.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    cand = np.array([[math.log(3.0), 0.0], [0.0, math.log(3.0)]], dtype=np.float32)
    targets = np.array([0, 0])
    m = compare_logits(ref, cand, targets)
    # KL(p||q) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(4/3), the same for both rows
    assert m.mean_kl == pytest.approx(0.5 * math.log(4.0 / 3.0), rel=1e-6)
    # argmax: the reference ties (argmax 0); the candidate says 0 then 1
    assert m.top1_agreement == 0.5
    assert m.ppl_reference == pytest.approx(2.0)
    # candidate NLL of token 0: -ln(3/4) then -ln(1/4)
    assert m.ppl_candidate == pytest.approx(math.exp((-math.log(0.75) - math.log(0.25)) / 2), rel=1e-6)
    assert set(m.to_dict()) == {"mean_kl", "top1_agreement", "ppl_reference", "ppl_candidate", "n_tokens"}


def test_compare_logits_chunks_large_vocabularies_the_same(monkeypatch):
    import edgeinfer_converters.quality as quality

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(9, 300)).astype(np.float32)
    cand = ref + rng.normal(scale=0.3, size=ref.shape).astype(np.float32)
    targets = rng.integers(0, 300, size=9)
    whole = compare_logits(ref, cand, targets)
    monkeypatch.setattr(quality, "_CHUNK_ELEMENTS", 600)  # 2 rows per chunk
    chunked = compare_logits(ref, cand, targets)
    assert chunked.mean_kl == pytest.approx(whole.mean_kl, rel=1e-12)
    assert chunked.ppl_candidate == pytest.approx(whole.ppl_candidate, rel=1e-12)


def test_compare_logits_refuses_mismatched_inputs():
    with pytest.raises(ConversionError, match="shapes differ"):
        compare_logits(np.zeros((2, 5)), np.zeros((2, 6)), np.array([0, 1]))
    with pytest.raises(ConversionError, match="target"):
        compare_logits(np.zeros((2, 5)), np.zeros((2, 5)), np.array([0, 9]))


def test_quality_text_is_packaged_and_long_enough():
    text = quality_text()
    assert len(text.split()) > 1000


def test_unknown_quant_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConversionError, match="Q4_K_M"):
        quantize_gguf(tmp_path / "in.gguf", tmp_path / "out.gguf", "Q4_X")


def test_quant_table_covers_the_documented_types():
    assert {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_S",
            "Q5_K_M", "Q6_K"} <= set(QUANT_TYPES)
    orders = [QUANT_TYPES[q].bpw for q in DEFAULT_AUTO_ORDER]
    assert orders == sorted(orders)


def test_not_a_gguf_leaves_nothing_behind(tmp_path):
    src = tmp_path / "model.gguf"
    src.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(ConversionError, match="not a GGUF"):
        quantize_gguf(src, tmp_path / "out.gguf", "q8_0")
    assert not (tmp_path / "out.gguf").exists() and no_temp_files(tmp_path)


@pytest.mark.parametrize("max_kl", [0, -1.0, float("nan"), float("inf")])
def test_choose_quant_refuses_a_bad_budget(tmp_path, max_kl):
    with pytest.raises(ConversionError, match="max_kl"):
        choose_quant(tmp_path / "ref.gguf", tmp_path / "out.gguf", max_kl=max_kl)


# --- real model: SmolLM2-135M ------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quant")


@pytest.fixture(scope="module")
def f16(work: Path, smollm2_path: Path) -> Path:
    out = work / "smollm2-f16.gguf"
    quantize_gguf(smollm2_path, out, "F16", n_threads=THREADS, allow_requantize=True)
    return out


@pytest.fixture(scope="module")
def quantized(work: Path, f16: Path) -> dict[str, Path]:
    out = {}
    for quant in ("Q8_0", "Q6_K", "q4_k_m"):  # names are case-insensitive
        out[quant.upper()] = work / f"smollm2-{quant.upper()}.gguf"
        quantize_gguf(f16, out[quant.upper()], quant, n_threads=THREADS)
    return out


@pytest.fixture(scope="module")
def quality(f16: Path, quantized: dict[str, Path]) -> dict[str, QualityMetrics]:
    return {q: measure_quality(f16, p, max_tokens=QUALITY_TOKENS, n_threads=THREADS)
            for q, p in quantized.items() if q != "Q6_K"}


@pytest.mark.slow
def test_quantized_files_have_their_type_and_load(quantized, work):
    import edgeinfer as ei

    for quant, path in quantized.items():
        assert gguf_file_type(path) == quant
    assert quantized["Q4_K_M"].stat().st_size < quantized["Q6_K"].stat().st_size < \
        quantized["Q8_0"].stat().st_size
    assert no_temp_files(work)
    for quant in ("Q4_K_M", "Q8_0"):
        model = ei.load(quantized[quant], n_ctx=256, n_threads=THREADS, kv=ei.KVOptions(settle=False),
                        speculation=None)
        try:
            c = model.generate("The capital of France is", max_tokens=6, temperature=0)
            assert c.text.strip() and c.stats.backend == "llama.cpp"
        finally:
            model.close()


@pytest.mark.slow
def test_already_quantized_source_is_refused_without_allow_requantize(smollm2_path, tmp_path):
    with pytest.raises(ConversionError, match="already quantized"):
        quantize_gguf(smollm2_path, tmp_path / "x.gguf", "Q8_0")
    assert no_temp_files(tmp_path)


@pytest.mark.slow
def test_llama_cpp_failure_and_ctrl_c_leave_no_temp_file(f16, tmp_path, monkeypatch):
    import llama_cpp

    truncated = tmp_path / "in" / "truncated.gguf"  # a whole header, half the tensor data
    truncated.parent.mkdir()
    with open(f16, "rb") as src, open(truncated, "wb") as out:
        out.write(src.read(f16.stat().st_size // 2))
    out_dir = tmp_path / "out"
    dst = out_dir / "out.gguf"
    with pytest.raises(ConversionError, match="could not quantize"):
        quantize_gguf(truncated, dst, "Q8_0", n_threads=THREADS)
    assert list(out_dir.iterdir()) == []

    def interrupted(src, dst, params):
        Path(dst.decode()).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(llama_cpp, "llama_model_quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quantize_gguf(f16, dst, "Q4_K_M")
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow
def test_gguf_logits_are_deterministic_and_windowed(f16):
    tokens = list(range(100, 140))
    a = gguf_logits(f16, tokens, n_ctx=32, n_threads=THREADS)
    b = gguf_logits(f16, tokens, n_ctx=32, n_threads=THREADS)
    assert a.shape == (40, 49152) and a.dtype == np.float32
    assert np.array_equal(a, b)
    # the second window starts from an empty context: its first row is the first row of a fresh run
    fresh = gguf_logits(f16, tokens[32:], n_ctx=32, n_threads=THREADS)
    assert np.array_equal(a[32:], fresh)


@pytest.mark.slow
def test_measure_quality_orders_quantizations(f16, quality):
    same = measure_quality(f16, f16, max_tokens=QUALITY_TOKENS, n_threads=THREADS)
    assert same.mean_kl == pytest.approx(0.0, abs=1e-9) and same.top1_agreement == 1.0
    assert same.n_tokens == QUALITY_TOKENS - 1
    q8, q4 = quality["Q8_0"], quality["Q4_K_M"]
    assert q4.mean_kl > q8.mean_kl > 0
    assert q8.top1_agreement > 0.85 and q4.top1_agreement <= q8.top1_agreement
    assert q8.ppl_reference == pytest.approx(same.ppl_reference)
    assert 1.0 < q8.ppl_candidate < 1000


@pytest.mark.slow
def test_report_json(f16, quantized, quality):
    from edgeinfer import __version__
    from edgeinfer.hashing import sha256_file

    art = quantized["Q4_K_M"]
    path = write_report(art, source=Path("/ckpt/smollm2"), fmt="gguf", quant="Q4_K_M",
                        quality=quality["Q4_K_M"], reference=f"F16 GGUF {f16.name}", extra={"auto": False})
    assert path == report_path(art) == art.with_name("smollm2-Q4_K_M.report.json")
    report = json.loads(path.read_text())
    assert report["artifact"] == art.name and report["format"] == "gguf" and report["quant"] == "Q4_K_M"
    assert report["size_bytes"] == art.stat().st_size and report["sha256"] == sha256_file(art)
    assert 130e6 < report["n_params"] < 140e6  # SmolLM2-135M
    assert report["bits_per_weight"] == pytest.approx(bits_per_weight(art), abs=1e-3)
    assert 4.0 < report["bits_per_weight"] < bits_per_weight(quantized["Q8_0"]) < bits_per_weight(f16)
    assert report["quality"]["mean_kl"] == quality["Q4_K_M"].mean_kl
    assert report["reference"].startswith("F16") and report["source"] == str(Path("/ckpt/smollm2").resolve())
    assert report["edgeinfer_version"] == __version__ and report["created"] and report["auto"] is False
    ref_report = json.loads(write_report(f16, source=Path("x"), fmt="gguf", quant="F16", quality=None,
                                         reference=None).read_text())
    assert ref_report["quality"] is None and ref_report["bits_per_weight"] == pytest.approx(16.0, abs=0.1)


@pytest.fixture
def prebuilt(quantized, monkeypatch):
    """choose_quant's quantizer copies the module's files (the real one is tested above)."""
    import edgeinfer_converters.auto_quant as auto_quant

    def copy(src, dst, quant, **_):
        shutil.copyfile(quantized[quant], dst)

    monkeypatch.setattr(auto_quant, "quantize_gguf", copy)


@pytest.mark.slow
def test_choose_quant_picks_the_smallest_within_budget(f16, quality, tmp_path, prebuilt):
    # a budget between Q8_0's and Q4_K_M's KL: Q4_K_M (tried first, though listed last) fails
    budget = math.sqrt(quality["Q8_0"].mean_kl * quality["Q4_K_M"].mean_kl)
    tried = []
    dst = tmp_path / "auto.gguf"
    choice = choose_quant(f16, dst, max_kl=budget, candidates=("Q8_0", "q4_k_m"), n_threads=THREADS,
                          max_tokens=QUALITY_TOKENS, on_trial=lambda q, m: tried.append(q))
    quant, metrics = choice
    assert tried == ["Q4_K_M", "Q8_0"] and quant == "Q8_0" and not choice.fallback
    assert metrics.mean_kl <= budget and gguf_file_type(dst) == "Q8_0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.gguf"]


@pytest.mark.slow
def test_choose_quant_falls_back_to_the_reference(f16, tmp_path, prebuilt):
    dst = tmp_path / "auto.gguf"
    choice = choose_quant(f16, dst, max_kl=1e-12, candidates=("Q8_0",), n_threads=THREADS,
                          max_tokens=32)
    assert choice.fallback and choice.quant == "F16" and choice.quality.mean_kl == 0.0
    assert dst.read_bytes()[:4] == b"GGUF" and dst.stat().st_size == f16.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.gguf"]


@pytest.mark.slow
def test_choose_quant_refuses_a_quantized_reference(smollm2_path, tmp_path):
    with pytest.raises(ConversionError, match="F16"):
        choose_quant(smollm2_path, tmp_path / "out.gguf", max_kl=0.1)


# --- lock add ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_lock_add_then_load_by_name(quantized, tmp_path, monkeypatch):
    import edgeinfer as ei
    from edgeinfer.cli.main import main
    from edgeinfer.lock import ModelLock, add_entry
    from edgeinfer.sources import resolve

    folder = tmp_path / "models"
    folder.mkdir()
    art = folder / "mine.gguf"
    shutil.copyfile(quantized["Q4_K_M"], art)
    write_report(art, source=Path("ckpt"), fmt="gguf", quant="Q4_K_M", quality=None, reference=None)
    lock_path = folder / "models.lock"
    shutil.copyfile(ModelLock.load().path, lock_path)  # an existing lock with comments and entries
    before = lock_path.read_text()

    assert main(["lock", "add", str(art), "--name", "mine", "--role", "chat", "--tier", "small",
                 "--lock", str(lock_path)]) == 0
    text = lock_path.read_text()
    assert text.startswith(before.rstrip("\n"))  # appended: the other entries and comments intact
    lock = ModelLock.load(lock_path)
    entry = lock.get("mine")
    assert entry.quantization == "Q4_K_M" and entry.format == "gguf" and entry.size == art.stat().st_size
    assert entry.license == "apache-2.0"  # from the GGUF metadata (SmolLM2's general.license)
    assert entry.sources[0].type == "path" and Path(entry.sources[0].path) == art
    assert 'path = "mine.gguf"' in text  # relative to the lock file
    assert len(lock.entries) == len(ModelLock.load().entries) + 1

    monkeypatch.setenv("EDGEINFER_LOCK", str(lock_path))
    model = ei.load("mine", n_ctx=256, n_threads=THREADS, kv=ei.KVOptions(settle=False), speculation=None)
    try:
        assert model.path == art and model.sha256 == entry.sha256
        assert model.generate("Hello", max_tokens=4, temperature=0).text
    finally:
        model.close()

    with pytest.raises(LockFileError, match="--force"):
        add_entry(art, name="MINE", lock_path=lock_path)
    assert main(["lock", "add", str(art), "--name", "mine", "--lock", str(lock_path)]) == 1
    replaced = add_entry(art, name="mine", lock_path=lock_path, force=True, license="MIT")
    assert replaced.license == "MIT" and ModelLock.load(lock_path).get("mine").license == "MIT"
    assert lock_path.read_text().startswith("# models.lock")  # header comments re-emitted

    with open(art, "ab") as handle:  # the pinned file changes afterwards
        handle.write(b"\0" * 16)
    with pytest.raises(ChecksumMismatchError, match="changed since it was pinned"):
        resolve(ModelLock.load(lock_path).get("mine"))
    art.unlink()
    with pytest.raises(ei.ModelNotAvailableError, match="not found"):
        resolve(ModelLock.load(lock_path).get("mine"))
    assert no_temp_files(folder)


def test_lock_add_refuses_bad_input(tmp_path):
    from edgeinfer.lock import add_entry

    lock_path = tmp_path / "models.lock"
    with pytest.raises(LockFileError, match="no such file"):
        add_entry(tmp_path / "missing.gguf", name="x", lock_path=lock_path)
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"hello")
    with pytest.raises(LockFileError, match="not a model artifact"):
        add_entry(bad, name="x", lock_path=lock_path)
    with pytest.raises(LockFileError, match="invalid model name"):
        add_entry(bad, name="../evil", lock_path=lock_path)
    assert not lock_path.exists()
