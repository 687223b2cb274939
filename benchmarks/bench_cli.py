"""`edgeinfer bench` on the two default GGUF models and SmolLM2 converted to ONNX int4 (the artifact
benchmarks/onnx.py converts and caches under ~/.cache/edgeinfer-bench/onnx-bench; left out, with a
note, when that benchmark has not run here yet).

Run:  EDGEINFER_HOME=/tmp/eihome python benchmarks/bench_cli.py [extra edgeinfer bench options]
Writes benchmarks/results/bench.json, bench.md and bench.png.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ONNX_ARTIFACTS = Path.home() / ".cache" / "edgeinfer-bench" / "onnx-bench"


def onnx_artifact() -> Path | None:
    """The newest SmolLM2 ONNX int4 folder benchmarks/onnx.py left in its cache, if any."""
    found = [p for p in ONNX_ARTIFACTS.glob("smollm2-onnx-int4-*/model")
             if re.fullmatch(r"smollm2-onnx-int4-[0-9a-f]{16}", p.parent.name)]  # not int4-fast
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def main(argv: list[str]) -> int:
    artifacts = ["smollm2-135m-instruct", "gemma-3-270m"]
    onnx = onnx_artifact()
    if onnx is None:
        print("no ONNX int4 artifact yet: run benchmarks/onnx.py first to include one", file=sys.stderr)
    else:
        artifacts.append(str(onnx))
    command = [sys.executable, "-m", "edgeinfer", "bench", *artifacts, "--plot", str(RESULTS / "bench.png"),
               "--markdown", str(RESULTS / "bench.md"), "--json-out", str(RESULTS / "bench.json"), *argv]
    return subprocess.call(command, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
