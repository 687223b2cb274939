"""`edgeinfer bench` on the default chat model as ``ei.load`` runs it (on a CPU: its GGUF's own weights on
onnxruntime, prepared first) beside the same GGUF on llama.cpp (given by its path), Gemma 3 270M, and
SmolLM2 converted to ONNX int4 (the artifact ``python -m benchmarks.onnx`` converts and caches under
~/.cache/edgeinfer-bench/onnx-bench; left out, with a note, when that benchmark has not run here yet).

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.bench_cli [extra edgeinfer bench options]
Writes benchmarks/results/bench.json (a summary), bench.md and bench.png; the full JSON to results/raw/.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.common import RAW_DIRNAME, RESULTS_DIR, write_results

ROOT = Path(__file__).resolve().parent.parent
ONNX_ARTIFACTS = Path.home() / ".cache" / "edgeinfer-bench" / "onnx-bench"
DEFAULT = "smollm2-135m-instruct"


def onnx_artifact() -> Path | None:
    """The newest SmolLM2 ONNX int4 folder benchmarks/onnx.py left in its cache, if any."""
    found = [p for p in ONNX_ARTIFACTS.glob("smollm2-onnx-int4-*/model")
             if re.fullmatch(r"smollm2-onnx-int4-[0-9a-f]{16}", p.parent.name)]  # not int4-fast
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def main(argv: list[str]) -> int:
    from edgeinfer_converters import prepare

    from edgeinfer.loader import locate_model

    prepare(DEFAULT, backend="auto")  # what the first command that loads it does
    artifacts = [str(locate_model(DEFAULT).path), DEFAULT, "gemma-3-270m"]  # by path: llama.cpp
    onnx = onnx_artifact()
    if onnx is None:
        print("no ONNX int4 artifact yet: run `python -m benchmarks.onnx` first to include one",
              file=sys.stderr)
    else:
        artifacts.append(str(onnx))
    raw = RESULTS_DIR / RAW_DIRNAME / "bench.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.unlink(missing_ok=True)  # summarized below only when this run writes it
    command = [sys.executable, "-m", "edgeinfer", "bench", *artifacts,
               "--plot", str(RESULTS_DIR / "bench.png"), "--markdown", str(RESULTS_DIR / "bench.md"),
               "--json-out", str(raw), *argv]
    code = subprocess.call(command, cwd=ROOT)
    if raw.is_file():  # the full JSON stays in raw/; the summary goes beside bench.md
        write_results("bench", json.loads(raw.read_text(encoding="utf-8")))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
