"""HF -> GGUF: logit parity with transformers (tiny random checkpoints of every decoder family, and
SmolLM2 rebuilt from its GGUF), and the converter's behaviour on bad input (nothing left behind)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from child_hooks import child_code
from edgeinfer_converters import convert
from edgeinfer_converters.checkpoint import Checkpoint
from hf_fixtures import TINY_CONFIGS, rebuilt_checkpoint, tiny_checkpoint

import edgeinfer as ei

pytestmark = pytest.mark.slow


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    """Every position's logits from llama.cpp."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=256, n_batch=256, n_threads=2, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def hf_model(root: Path):  # noqa: ANN201
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32).eval()


def hf_logits(root: Path, ids: list[int], model=None) -> np.ndarray:  # noqa: ANN001
    import torch

    with torch.no_grad():
        return (model or hf_model(root))(torch.tensor([ids])).logits[0].numpy()


def assert_parity(reference: np.ndarray, ours: np.ndarray, *, tie_margin: float = 0.0) -> None:
    """Mean KL < 1e-4 and top-1 agreement >= 99%, counted where the reference's best token leads the
    runner-up by more than ``tie_margin`` logits (random tiny models have near-ties that float noise
    may flip; real models are checked with no margin)."""
    lr, lo = log_softmax(reference), log_softmax(ours)
    kl = float((np.exp(lr) * (lr - lo)).sum(-1).mean())
    top2 = np.sort(reference, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > tie_margin
    top1 = float((reference.argmax(-1) == ours.argmax(-1))[clear].mean())
    assert clear.mean() > 0.5 and kl < 1e-4 and top1 >= 0.99, f"mean KL {kl:.2e}, top-1 {top1:.3f}"


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_tiny_checkpoint_f32_matches_transformers(arch: str, tmp_path: Path) -> None:
    src = tiny_checkpoint(arch)
    out = tmp_path / f"{arch}.gguf"
    result = convert(src, out, quant="F32")
    assert result.quant == "F32" and result.quality is None  # F32 is the lossless reference itself
    rng = np.random.default_rng(1)
    ids = [1, *rng.integers(3, 49152, 63).tolist()]  # longer than Gemma 3's 16-token test window
    assert_parity(hf_logits(src, ids), llama_logits(out, ids), tie_margin=0.02)
    report = json.loads(result.report.read_text())
    assert report["sha256"] and report["size_bytes"] == out.stat().st_size


@pytest.fixture(scope="module")
def smollm2_hf() -> Path:
    return rebuilt_checkpoint("smollm2")


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_rebuilt_real_model_f32_matches_transformers(name: str, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    src = rebuilt_checkpoint(name)  # SmolLM2-135M-Instruct / Gemma 3 270M, rebuilt from their GGUFs
    out = tmp_path / f"{name}-f32.gguf"
    convert(src, out, quant="F32")
    text = ("The quick brown fox jumps over the lazy dog. In 1905, Einstein published four papers "
            "that changed physics; la maison est très belle. def f(x):\n    return x * 2  # doubles")
    ids = Tokenizer.from_file(str(src / "tokenizer.json")).encode(text).ids
    assert len(ids) > 30
    import torch

    reference = hf_model(src)
    assert_parity(hf_logits(src, ids, reference), llama_logits(out, ids))
    # and edgeinfer's engine runs it: greedy tokens equal transformers' greedy tokens
    with torch.no_grad():
        generated = reference.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    theirs = generated[0, len(ids):].tolist()
    model = ei.load(out, n_ctx=256, kv=ei.KVOptions(settle=False))
    try:
        ours = model.generate(ids, max_tokens=12, temperature=0).tokens
    finally:
        model.close()
    assert ours and ours == theirs[: len(ours)]


@pytest.mark.parametrize(("quant", "max_kl"), [("bf16", 0.01), ("q8_0", 0.01), ("Q4_K_M", 0.2)])
def test_quantized_output_has_quality_report(tmp_path: Path, quant: str, max_kl: float) -> None:
    src = tiny_checkpoint("llama")
    out = tmp_path / "tiny.gguf"
    result = convert(src, out, quant=quant)
    assert result.quant == quant.upper() and out.is_file()
    report = json.loads(result.report.read_text())
    assert report["quant"] == quant.upper() and report["bits_per_weight"] < 17
    assert 0 < report["quality"]["mean_kl"] < max_kl and report["quality"]["top1_agreement"] > 0.5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the reference is gone


def test_sharded_checkpoint_converts_to_the_same_file(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    src = tiny_checkpoint("qwen3")
    sharded = tmp_path / "sharded"
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.save_pretrained(sharded, max_shard_size="2MB")
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(src / name, sharded / name)
    assert len(list(sharded.glob("*.safetensors"))) >= 2
    assert (sharded / "model.safetensors.index.json").is_file()
    convert(src, tmp_path / "one.gguf", quant="F16")
    convert(sharded, tmp_path / "many.gguf", quant="F16")
    import gguf

    one, many = (gguf.GGUFReader(tmp_path / name).tensors for name in ("one.gguf", "many.gguf"))
    assert [t.name for t in one] == [t.name for t in many]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(one, many, strict=True))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_conversion_streams_instead_of_holding_the_model(smollm2_hf: Path, tmp_path: Path) -> None:
    # the child reports its own peak RSS (VmHWM: unlike wait4's ru_maxrss, it does not count the
    # pytest process's pages the child shared between fork and exec)
    args = ["convert", str(smollm2_hf), "-o", str(tmp_path / "s.gguf"), "--quant", "F16", "--no-quality"]
    peak_line = "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    proc = cli_in_child("", args, peak_line)
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout.split()[-1]) * 1024
    weights = sum(p.stat().st_size for p in smollm2_hf.glob("*.safetensors"))
    assert peak < weights / 3, f"peak RSS {peak / 1e6:.0f} MB for {weights / 1e6:.0f} MB of weights"


def test_auto_picks_a_quant_within_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "tiny-auto.gguf"
    result = convert(tiny_checkpoint("qwen2"), out, quant="auto", max_kl=0.02)
    report = json.loads(result.report.read_text())
    assert report["quant"] == result.quant and report["requested_quant"] == "auto"
    assert result.quant in ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F32")
    assert result.quant == "F32" or report["quality"]["mean_kl"] <= 0.02
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-auto.gguf", "tiny-auto.report.json"]


# --- bad input: a clear error, nothing written -------------------------------------------------
def copy_of(arch: str, dest: Path) -> Path:
    shutil.copytree(tiny_checkpoint(arch), dest)
    return dest


def edit_config(src: Path, **changes: object) -> None:
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, **changes}))


def cli_in_child(prelude: str, args: list[str], epilogue: str = "") -> subprocess.CompletedProcess:
    """``edgeinfer ARGS`` in a fresh Python that first runs ``prelude`` (limits, signals)."""
    code = "\n".join(["import sys", prelude, "from edgeinfer.cli import main", "rc = main(sys.argv[1:])",
                      epilogue, "sys.exit(rc)"])
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def assert_nothing_written(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.suffix in (".gguf", ".part") or p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("quant", ["F32", "Q8_0"])
def test_an_output_that_reads_text_differently_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             quant: str) -> None:
    """The converter checks its output before it is renamed into place. Here the vocabulary writer swaps
    two tokens (a bug of the kind a new tokenizer layout brings): llama.cpp loads the file but reads the
    check text into other ids than the checkpoint's tokenizer.json, so the conversion fails naming the
    first difference, and leaves nothing behind."""
    from edgeinfer_converters.self_check import hf_token_ids
    from edgeinfer_converters.to_gguf import vocab

    src = tiny_checkpoint("llama")
    first, second = hf_token_ids(src)[:2]
    real = vocab.base_vocab

    def swapped(tok, n_vocab):  # noqa: ANN001, ANN202
        tokens, types = real(tok, n_vocab)
        tokens[first], tokens[second] = tokens[second], tokens[first]
        return tokens, types

    monkeypatch.setattr(vocab, "base_vocab", swapped)
    with pytest.raises(ei.ConversionError, match=r"tokenizes text differently .*\(from token 0: llama.cpp "
                                                 rf"\[{second}, {first}"):
        convert(src, tmp_path / "out.gguf", quant=quant, quality=False)
    assert_nothing_written(tmp_path)


def test_a_phi3_name_is_kept_only_where_llama_cpp_can_apply_its_rules() -> None:
    """llama.cpp's Phi-3 rules (for a general.name with "phi3" or "phi-3") look up "</s>", "<unk>", "<s>"
    and "<|endoftext|>": Phi-3.5's vocabulary has them, Phi-4-mini's byte-level BPE does not."""
    from edgeinfer_converters.to_gguf.writer import general_name

    phi35 = {"model": {"vocab": {"</s>": 2, "<unk>": 0, "<s>": 1}},
             "added_tokens": [{"content": "<|endoftext|>"}]}
    assert general_name("Phi-3.5-mini-instruct", phi35) == "Phi-3.5-mini-instruct"
    assert general_name("my-phi3-finetune", {"model": {"vocab": {"a": 0}}}) == "my-phi 3-finetune"
    assert general_name("Phi-4-mini-instruct", {"model": {"vocab": {"a": 0}}}) == "Phi-4-mini-instruct"
    assert general_name("PHI-3", {"model": {"vocab": [["<unk>", 0.0]]}}) == "PHI 3"  # a Unigram vocabulary


def test_an_output_llama_cpp_refuses_is_not_written(tmp_path: Path) -> None:
    from edgeinfer_converters.self_check import check_gguf

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\0\0\0" + b"\xff" * 64)
    with pytest.raises(ei.ConversionError, match="does not load in llama.cpp"):
        check_gguf(bad, tiny_checkpoint("llama"))


def test_missing_config(tmp_path: Path) -> None:
    src = copy_of("llama", tmp_path / "ck")
    (src / "config.json").unlink()
    with pytest.raises(ei.CheckpointError, match="config.json"):
        convert(src, tmp_path / "out.gguf")
    assert_nothing_written(tmp_path)


def test_unknown_architecture(tmp_path: Path) -> None:
    src = copy_of("llama", tmp_path / "ck")
    edit_config(src, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ei.UnsupportedArchitectureError, match="GPT2LMHeadModel.*supported: .*Qwen3"):
        convert(src, tmp_path / "out.gguf")
    assert_nothing_written(tmp_path)


def test_pickles_and_remote_code_are_refused(tmp_path: Path) -> None:
    src = copy_of("llama", tmp_path / "ck")
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    with pytest.raises(ei.CheckpointError, match="safetensors"):
        convert(src, tmp_path / "out.gguf")
    src = copy_of("llama", tmp_path / "ck2")
    edit_config(src, auto_map={"AutoModelForCausalLM": "modeling_x.X"})
    with pytest.raises(ei.CheckpointError, match="trust_remote_code"):
        convert(src, tmp_path / "out.gguf")
    assert_nothing_written(tmp_path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    src = copy_of("llama", tmp_path / "ck")
    weights = src / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size - 1000)
    with pytest.raises(ei.CheckpointError, match="truncated"):
        convert(src, tmp_path / "out.gguf")
    assert_nothing_written(tmp_path)


def rewrite_header(path: Path, edit) -> None:  # noqa: ANN001
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (n - len(encoded)) if len(encoded) <= n else b""
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + n :])


@pytest.mark.parametrize("lie", ["past_end", "overlap", "size"])
def test_header_lying_about_offsets(tmp_path: Path, lie: str) -> None:
    src = copy_of("llama", tmp_path / "ck")

    def edit(header: dict) -> None:
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        first, second = header[names[0]], header[names[1]]
        if lie == "past_end":
            size = second["data_offsets"][1] - second["data_offsets"][0]
            second["data_offsets"] = [10**9, 10**9 + size]
        elif lie == "overlap":
            size = second["data_offsets"][1] - second["data_offsets"][0]
            start = first["data_offsets"][0] + 4
            second["data_offsets"] = [start, start + size]
        else:
            first["shape"] = [first["shape"][0] + 1, *first["shape"][1:]]

    rewrite_header(src / "model.safetensors", edit)
    with pytest.raises(ei.CheckpointError, match="truncated|overlap|corrupt"):
        convert(src, tmp_path / "out.gguf")
    assert_nothing_written(tmp_path)


def test_config_disagreeing_with_weights(tmp_path: Path) -> None:
    src = copy_of("llama", tmp_path / "ck")
    edit_config(src, hidden_size=128)
    with pytest.raises(ei.CheckpointError, match="hidden_size"):
        convert(src, tmp_path / "out.gguf")
    assert_nothing_written(tmp_path)


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(ei.OutputExistsError, match="pass force=True"):  # Python's keyword in Python
        convert(tiny_checkpoint("llama"), out, quant="F32")
    assert out.read_bytes() == b"keep me"
    proc = run_cli(["convert", str(tiny_checkpoint("llama")), "-o", str(out), "--quant", "F32"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "add --force to overwrite it" in err and "force=True" not in err
    convert(tiny_checkpoint("llama"), out, quant="F32", force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_bad_options(tmp_path: Path) -> None:
    src = tiny_checkpoint("llama")
    with pytest.raises(ei.ConversionError, match="unknown quantization 'Q3_X'.*Q4_K_M"):
        convert(src, tmp_path / "a.gguf", quant="Q3_X")
    with pytest.raises(ei.ConversionError, match="is a folder"):
        convert(src, tmp_path, quant="F32")
    with pytest.raises(ei.ConversionError, match="max-kl"):
        convert(src, tmp_path / "a.gguf", quant="auto", max_kl=-1)
    assert_nothing_written(tmp_path)


def test_interrupt_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeinfer_converters.to_gguf.writer as writer

    calls = {"n": 0}
    real = writer.encode

    def interrupted(array: np.ndarray, qtype):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(array, qtype)

    monkeypatch.setattr(writer, "encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_checkpoint("llama"), tmp_path / "out.gguf", quant="F32")
    assert_nothing_written(tmp_path)


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:  # noqa: ANN003
    return subprocess.Popen([sys.executable, "-m", "edgeinfer", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_disk_full_mid_write(tmp_path: Path) -> None:
    # the child may write at most 2 MB per file (RLIMIT_FSIZE): the GGUF write fails part way
    limit = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))")
    args = ["convert", str(tiny_checkpoint("llama")), "-o", str(tmp_path / "out.gguf"), "--quant", "F32"]
    proc = cli_in_child(limit, args)
    assert proc.returncode == 1, proc.stderr
    assert "nothing was written" in proc.stderr
    assert_nothing_written(tmp_path)


def test_ctrl_c_during_cli_conversion(smollm2_hf: Path, tmp_path: Path) -> None:
    """Ctrl-C while the output GGUF is half written: exit 130, nothing left behind. The child stops
    mid-write (a test hook) and says so before the signal is sent, so it always lands there."""
    out = tmp_path / "out.gguf"
    ready_read, ready_write = os.pipe()
    hook = f"pause_gguf_output({str(out)!r}, {ready_write})"
    args = ["convert", str(smollm2_hf), "-o", str(out), "--quant", "F16"]
    with (tmp_path.parent / f"{tmp_path.name}-stderr.txt").open("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", child_code(hook), *args], stdout=subprocess.DEVNULL,
                                stderr=err, text=True, pass_fds=(ready_write,))
        os.close(ready_write)
        try:
            with os.fdopen(ready_read) as ready:
                said = ready.readline()  # blocks until the child is mid-write (or has died: "")
            assert said == "writing\n", f"the child never reached the write (exit {proc.wait(60)})"
            part = [p.name for p in tmp_path.iterdir() if p.suffix == ".part" and "reference" not in p.name]
            assert part, "the output was not being written"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 130
        finally:
            if proc.poll() is None:  # a failed test leaves no child behind
                proc.kill()
                proc.wait()
        err.seek(0)
        assert "Traceback" not in err.read()
    assert_nothing_written(tmp_path)


def test_cli_convert_json(tmp_path: Path) -> None:
    out = tmp_path / "tiny.gguf"
    proc = run_cli(["convert", str(tiny_checkpoint("qwen3")), "-o", str(out), "--quant", "F32", "--json"],
                   env={**os.environ, "EDGEINFER_HOME": str(tmp_path / "home")})
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["quant"] == "F32" and Path(result["artifact"]) == out
    assert Checkpoint.open(tiny_checkpoint("qwen3")).architecture == "Qwen3ForCausalLM"
