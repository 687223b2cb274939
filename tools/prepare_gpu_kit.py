"""Prepare, on a CPU machine with the package registries, what the GPU check needs on a machine without them.

Writes ``gpu_kit/`` (git-ignored), everything ``tools/gpu_check.sh`` reads there:

  build/llama_cpp_python-0.3.36.tar.gz   the published sdist less what a build never reads (llama.cpp's
                                         vocab GGUFs, docs, tests, examples, tools other than mtmd,
                                         other GPU vendors' backends): ~77 MB -> ~10 MB
  build/wheels/                          run-time and build dependencies for CPython 3.12 / manylinux
                                         x86-64 that the GPU image lacks (``--all-wheels``: every one)
  models/<name>.partNN                   the bundled GGUFs cut into parts that fit one call each
  plan.json, PLAN.md                     the device calls in order: what each carries (<= 64 MiB with
                                         the working tree) and the one command each runs

Run:  python tools/prepare_gpu_kit.py [--models smollm2-135m-instruct gemma-3-270m] [--sdist FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "gpu_kit"
LLAMA_CPP_PYTHON = "0.3.36"
MIB = 1 << 20
CALL_LIMIT = 64 * MIB  # what one device call carries: the working tree and the carried paths together
CALL_MARGIN = 2 * MIB  # for files the tree gains between now and the call (results, notes)

# Paths of the sdist a build of the Python package never reads (the CMake project adds llama.cpp's
# src, ggml, common, vendor and tools/mtmd only: tests, examples and tools are standalone-only).
DROPPED = (
    ".git",  # a 38 MB pack of llama.cpp's history
    ".github",
    "vendor/llama.cpp/.git",
    "vendor/llama.cpp/.github",
    "vendor/llama.cpp/tools/mtmd/test-1.jpeg",
    "vendor/llama.cpp/tools/mtmd/test-2.mp3",
    "vendor/llama.cpp/tools/mtmd/test-3.mp4",
    "docs",
    "examples",
    "tests",
    "docker",
    "vendor/llama.cpp/models",
    "vendor/llama.cpp/docs",
    "vendor/llama.cpp/media",
    "vendor/llama.cpp/tests",
    "vendor/llama.cpp/benches",
    "vendor/llama.cpp/examples",
    "vendor/llama.cpp/pocs",
    "vendor/llama.cpp/app",
    "vendor/llama.cpp/gguf-py",
    "vendor/llama.cpp/conversion",
    "vendor/llama.cpp/scripts",
    "vendor/llama.cpp/ci",
    "vendor/llama.cpp/skills",
    "vendor/llama.cpp/requirements",
    "vendor/llama.cpp/grammars",
    *(
        f"vendor/llama.cpp/tools/{tool}"
        for tool in (
            "batched-bench",
            "cli",
            "completion",
            "cvector-generator",
            "export-lora",
            "fit-params",
            "gguf-split",
            "imatrix",
            "llama-bench",
            "perplexity",
            "quantize",
            "results",
            "rpc",
            "server",
            "tokenize",
            "tts",
            "tuning",
            "ui",
        )
    ),
    # backends for other accelerators: each is added only when its GGML_<NAME> option is on
    *(
        f"vendor/llama.cpp/ggml/src/ggml-{backend}"
        for backend in (
            "sycl",
            "vulkan",
            "opencl",
            "cann",
            "hexagon",
            "et",
            "openvino",
            "webgpu",
            "virtgpu",
            "zdnn",
            "zendnn",
        )
    ),
)

# Python packages the lent GPU machines' image ('cuda') already holds (the device library's KINDS.md,
# read 2026-11-17): their wheels need not travel. --all-wheels ignores this list (a bare Python 3.12).
IMAGE_HAS = frozenset(
    """
anyio certifi cmake filelock fsspec h11 hf-xet httpcore httpx huggingface-hub idna jinja2 markupsafe
ninja numpy onnx onnxruntime packaging pathspec pip psutil pyyaml requests shellingham click tokenizers tqdm
typer typing-extensions urllib3 charset-normalizer
""".split()
)

# What pip needs besides the project's own requirements, offline: llama-cpp-python's build backend, and
# edgeinfer's (an editable install of the checkout); they travel even where the image has a version.
BUILD_REQUIREMENTS = ("scikit-build-core>=0.9.2", "setuptools>=77", "wheel")


def normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pip_download(*args: str) -> None:
    """``pip download`` (quiet) with these arguments."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", *args], check=True)


def download_sdist(into: Path) -> Path:
    pip_download(
        "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(into)
    )
    return next(into.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"))


def trim_sdist(sdist: Path, out: Path) -> dict:
    """Copy ``sdist`` to ``out`` without the DROPPED paths; the same top folder, so pip reads it as is."""
    top = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/"
    kept = dropped = 0
    with tarfile.open(sdist) as src, tarfile.open(out, "w:gz", compresslevel=9) as dst:
        for member in src:
            rel = member.name.removeprefix(top)
            if any(rel == d or rel.startswith(d + "/") for d in DROPPED):
                dropped += member.size
                continue
            if not (member.isfile() or member.isdir() or member.issym()):
                continue
            kept += member.size
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return {
        "published_bytes": sdist.stat().st_size,
        "trimmed_bytes": out.stat().st_size,
        "source_bytes_kept": kept,
        "source_bytes_dropped": dropped,
    }


def requirements() -> list[str]:
    """The run-time requirements of edgeinfer[llama] (llama-cpp-python's own included), less the sdist."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["llama"]]
    wanted += ["typing-extensions>=4.5.0", "numpy>=1.20.0", "diskcache>=5.6.1", "jinja2>=2.11.3"]
    return [
        r for r in wanted if not normalized(r).startswith("llama-cpp-python") and "python_version <" not in r
    ] + list(BUILD_REQUIREMENTS)


def download_wheels(into: Path, *, every: bool) -> list[dict]:
    """Wheels for CPython 3.12 on manylinux x86-64 of the requirements and what they need."""
    with tempfile.TemporaryDirectory() as tmp:
        # manylinux tags pip matches exactly: 2_17 (manylinux2014) up to 2_39 (llguidance is 2_31)
        tags = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)]
        tags += ["manylinux2014_x86_64", "manylinux1_x86_64"]
        platforms = [arg for tag in tags for arg in ("--platform", tag)]
        pip_download(
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            tmp,
            *requirements(),
        )
        into.mkdir(parents=True, exist_ok=True)
        kept = []
        for wheel in sorted(Path(tmp).glob("*.whl")):
            project = normalized(wheel.name.split("-")[0])
            if not every and project in IMAGE_HAS:
                continue
            wheel.replace(into / wheel.name)
            kept.append({"file": wheel.name, "bytes": (into / wheel.name).stat().st_size})
        return kept


def tree_bytes() -> int:
    """What the working tree sends with every call: tracked and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return sum(
        (ROOT / name.decode()).stat().st_size for name in listed if name and (ROOT / name.decode()).is_file()
    )


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def split_models(
    models: list[tuple[str, Path]], into: Path, first_room: int, room: int, *, min_part: int = MIB
) -> tuple[list[dict], list[list[str]]]:
    """Cut each (name, file) into parts under ``into``: the first call has ``first_room`` bytes left (call 1
    also carries the build), the next ones ``room``. Returns the manifest entries and, per call, the
    parts it carries (as paths relative to the repository)."""
    from edgeinfer.hashing import sha256_file  # here: --requirements runs before edgeinfer is installed

    into.mkdir(parents=True, exist_ok=True)
    manifest, calls, left = [], [[]], first_room
    for name, path in models:
        size = path.stat().st_size
        parts, offset = [], 0
        with path.open("rb") as src:
            while offset < size:
                if left < min_part:  # this call is full: the next one
                    calls.append([])
                    left = room
                chunk = src.read(min(left, size - offset))
                part = into / f"{name}.part{len(parts):02d}"
                part.write_bytes(chunk)
                parts.append(part.name)
                calls[-1].append(
                    part.relative_to(ROOT).as_posix() if part.is_relative_to(ROOT) else str(part)
                )
                offset += len(chunk)
                left -= len(chunk)
        manifest.append(
            {"name": name, "file": path.name, "bytes": size, "sha256": sha256_file(path), "parts": parts}
        )
    return manifest, calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models",
        nargs="*",
        default=["smollm2-135m-instruct", "gemma-3-270m"],
        help="bundled models to carry, in order (the report covers those that arrive)",
    )
    parser.add_argument("--sdist", type=Path, help="the published sdist, if already downloaded")
    parser.add_argument(
        "--all-wheels",
        action="store_true",
        help="carry every dependency's wheel (for a bare Python 3.12, not the 'cuda' image)",
    )
    parser.add_argument(
        "--requirements",
        action="store_true",
        help="print what the kit's wheels install (tools/gpu_check.sh asks, offline) and stop",
    )
    args = parser.parse_args(argv)
    if args.requirements:
        print("\n".join(requirements()))
        return

    for stale in ("build", "models"):
        for path in sorted((KIT / stale).rglob("*"), reverse=True) if (KIT / stale).exists() else []:
            path.unlink() if path.is_file() else path.rmdir()
    build = KIT / "build"
    build.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(Path(tmp))
        archive = trim_sdist(sdist, build / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz")
    wheels = download_wheels(build / "wheels", every=args.all_wheels)

    tree = tree_bytes()
    room = CALL_LIMIT - tree - CALL_MARGIN
    first_room = room - folder_bytes(build)
    from edgeinfer.loader import locate_model

    located = [locate_model(name, offline=True) for name in args.models]
    files = [(m.name, m.path) for m in located]
    manifest, model_calls = split_models(files, KIT / "models", first_room, room)
    (KIT / "models" / "manifest.json").write_text(json.dumps(manifest, indent=1))
    calls = [
        {
            "carry": ["gpu_kit/build", "gpu_kit/models/manifest.json", *model_calls[0]],
            "command": "bash tools/gpu_check.sh",
        }
    ]
    calls += [{"carry": parts, "command": "bash tools/gpu_check.sh"} for parts in model_calls[1:]]
    calls[-1]["command"] = "bash tools/gpu_check.sh --wait"
    for call in calls:
        call["bytes"] = tree + sum(
            folder_bytes(ROOT / p) if (ROOT / p).is_dir() else (ROOT / p).stat().st_size
            for p in call["carry"]
        )
    plan = {
        "llama_cpp_python": LLAMA_CPP_PYTHON,
        "archive": archive,
        "wheels": wheels,
        "wheels_bytes": sum(w["bytes"] for w in wheels),
        "tree_bytes": tree,
        "call_limit": CALL_LIMIT,
        "models": manifest,
        "calls": calls,
    }
    (KIT / "plan.json").write_text(json.dumps(plan, indent=1))
    lines = [
        "# GPU check: the device calls, in order",
        "",
        "Each call within 30 s of the last (the machine is given back after 30 s idle and a fresh "
        "one starts bare: then begin again at call 1).",
        "",
        "| call | carry | MiB with the tree | command |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {i} | {', '.join(c['carry'])} | {c['bytes'] / MIB:.1f} | `{c['command']}` |"
        for i, c in enumerate(calls, 1)
    ]
    lines += [
        "",
        f"Archive: {archive['trimmed_bytes'] / MIB:.1f} MiB (published sdist "
        f"{archive['published_bytes'] / MIB:.1f} MiB). Wheels: {len(wheels)} files, "
        f"{plan['wheels_bytes'] / MIB:.1f} MiB. Working tree: {tree / MIB:.1f} MiB.",
    ]
    (KIT / "PLAN.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
