"""The GPU check kit's pieces that take seconds (the whole CPU rehearsal takes minutes: docs/GPU_CHECK.md)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import gpu_check  # noqa: E402
import prepare_gpu_kit  # noqa: E402

from edgeinfer.hashing import sha256_file  # noqa: E402


def make_sdist(path: Path, files: dict[str, bytes]) -> None:
    top = f"llama_cpp_python-{prepare_gpu_kit.LLAMA_CPP_PYTHON}/"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(top + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_the_trimmed_archive_keeps_what_the_build_reads_and_drops_the_rest(tmp_path):
    kept = [
        "CMakeLists.txt",
        "pyproject.toml",
        "PKG-INFO",
        "llama_cpp/llama_cpp.py",
        "vendor/llama.cpp/CMakeLists.txt",
        "vendor/llama.cpp/src/llama.cpp",
        "vendor/llama.cpp/ggml/src/ggml-cuda/mmq.cu",
        "vendor/llama.cpp/ggml/src/ggml-metal/ggml-metal.m",
        "vendor/llama.cpp/ggml/src/ggml-cpu/ggml-cpu.c",
        "vendor/llama.cpp/tools/mtmd/mtmd.cpp",
        "vendor/llama.cpp/common/common.cpp",
        "vendor/llama.cpp/vendor/nlohmann/json.hpp",
    ]
    dropped = [
        ".git/modules/vendor/llama.cpp/objects/pack/pack-1.pack",
        "vendor/llama.cpp/models/ggml-vocab.gguf",
        "vendor/llama.cpp/docs/build.md",
        "vendor/llama.cpp/tools/server/server.cpp",
        "vendor/llama.cpp/ggml/src/ggml-vulkan/ggml-vulkan.cpp",
        "vendor/llama.cpp/tests/test-backend-ops.cpp",
        "examples/chat.py",
        "vendor/llama.cpp/tools/mtmd/test-3.mp4",
    ]
    sdist, out = tmp_path / "published.tar.gz", tmp_path / "trimmed.tar.gz"
    make_sdist(sdist, {name: b"x" * 100 for name in kept + dropped})
    facts = prepare_gpu_kit.trim_sdist(sdist, out)
    with tarfile.open(out) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
    assert names == set(kept)
    assert facts["source_bytes_dropped"] == 100 * len(dropped)


def test_each_call_carries_at_most_its_room_and_the_parts_rebuild_the_models(tmp_path):
    models = []
    for name, size in (("small", 2500), ("large", 7000)):
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(bytes(i % 251 for i in range(size)))
        models.append((name, path))
    manifest, calls = prepare_gpu_kit.split_models(
        models, tmp_path / "parts", first_room=1000, room=3000, min_part=100
    )
    sizes = [sum(Path(p).stat().st_size for p in call) for call in calls]
    assert sizes[0] <= 1000 and all(size <= 3000 for size in sizes[1:])
    assert sum(sizes) == 9500 and len(calls) == 4  # 1000 + 3000 + 3000 + 2500
    for entry, (_, path) in zip(manifest, models, strict=True):
        rebuilt = b"".join((tmp_path / "parts" / part).read_bytes() for part in entry["parts"])
        assert rebuilt == path.read_bytes() and entry["sha256"] == sha256_file(path)


def test_the_requirements_the_kit_installs_offline_cover_the_project_and_its_build():
    printed = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "prepare_gpu_kit.py"), "--requirements"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = {prepare_gpu_kit.normalized(r.split(">")[0].split("=")[0].split("<")[0]) for r in printed}
    assert {"numpy", "llguidance", "gguf", "diskcache", "jinja2", "scikit-build-core", "setuptools"} <= names
    assert not any(name.startswith("llama-cpp-python") for name in names)  # built from the archive


def test_the_rehearsal_sizes_a_model_larger_than_free_vram_with_an_injected_probe():
    """With free VRAM = reserve + half the model some layers go to the GPU; with half the model, none."""
    out = gpu_check.too_large("smollm2-135m-instruct", cpu_rehearsal=True)
    partial = out["free = reserve + half the model"]["auto"]
    assert partial["device"] == "cuda:0" and 0 < partial["n_gpu_layers"] < 31
    assert any("layers fit" in reason for reason in partial["reasons"])
    none = out["free = half the model"]["auto"]
    assert none["device"] == "cpu" and any("nothing fits" in reason for reason in none["reasons"])
