"""Shared benchmark helpers: machine info, sample summaries, ratios, Markdown tables, report files.

Every benchmark writes its full JSON to ``results/raw/`` (git-ignored; re-run the benchmark to regenerate
it) and a summary of it, ``results/<name>.json``, beside its Markdown report: the summary is the same
JSON less every list longer than ``SUMMARY_MAX_ITEMS`` (per-request samples, token ids, evaluation rows),
so it keeps the medians, ratios, curves, machine, command and date that the tables and BENCHMARKS.md use.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RAW_DIRNAME = "raw"  # under the results folder; git-ignored
SUMMARY_MAX_ITEMS = 32  # a longer list is per-sample data: in the raw JSON only


def quiet_logging(level: int = logging.WARNING) -> None:
    """Keep edgeinfer's and llama.cpp's loggers below ``level`` off the console."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in ("edgeinfer", "edgeinfer.llama_cpp", "llama-cpp-python"):
        logging.getLogger(name).setLevel(max(level, logging.ERROR))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except (ImportError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """Platform, CPU, load and library versions, for the report header."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "loadavg": [round(x, 2) for x in load] if load else None,
        "llama_cpp_python": _version("llama_cpp"),
        "edgeinfer": _version("edgeinfer"),
        "numpy": _version("numpy"),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def median_summary(samples: Sequence[float]) -> dict[str, float | int | None]:
    """Median, min, max, mean and count of ``samples`` (None values when there are none)."""
    values = [float(x) for x in samples]
    if not values:
        return {"median": None, "min": None, "max": None, "mean": None, "n": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
        "n": len(values),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | None]:
    """Summary of a[i] / b[i] over runs taken side by side (robust to slow drift of the machine)."""
    return median_summary([x / y for x, y in zip(a, b, strict=True) if y])


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; '-' when missing."""
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _rounded(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v, digits) for v in value]
    return value


def summary(data: Any) -> Any:
    """``data`` less every list longer than ``SUMMARY_MAX_ITEMS``, at any depth."""
    if isinstance(data, dict):
        return {k: summary(v) for k, v in data.items()
                if not (isinstance(v, list) and len(v) > SUMMARY_MAX_ITEMS)}
    if isinstance(data, list):
        return [summary(v) for v in data]
    return data


def command_line() -> str:
    """The command that started this process, as ``python -m benchmarks.NAME ARGS``."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = ["-m", spec.name] if spec else [sys.argv[0]]
    return shlex.join(["python", *program, *sys.argv[1:]])


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON at ``path`` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def write_results(name: str, data: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``data`` to ``raw/<name>.json`` and its summary to ``<name>.json``; return the latter."""
    data = _rounded({"command": command_line(), **data})
    write_json(results_dir / RAW_DIRNAME / f"{name}.json", data)
    return write_json(results_dir / f"{name}.json", summary(data))


def write_report(name: str, data: dict[str, Any], markdown: str,
                 results_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write the results (``write_results``) and ``<name>.md``; return the summary and Markdown paths."""
    md_path = results_dir / f"{name}.md"
    json_path = write_results(name, data, results_dir)
    md_path.write_text(markdown.rstrip("\n") + "\n", encoding="utf-8")
    return json_path, md_path


def publish(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``write_report`` and print the Markdown and where both went (how every benchmark ends)."""
    paths = write_report(name, data, markdown)
    print(markdown.rstrip("\n"))
    print(f"wrote {paths[0]} and {paths[1]}")
    return paths


def steal_ticks() -> int:
    """The hypervisor's steal time so far (/proc/stat, all CPUs): its growth over a run says whether the
    host took CPU time from this machine while it measured."""
    return int(Path("/proc/stat").read_text().split("\n")[0].split()[8])


def run_in_tree(tree: Path, code: str, *args: str, timeout: float = 900) -> dict:
    """Run ``code`` in a fresh process with the checkout ``tree`` first on the path (before/after
    comparisons of two trees side by side); its last stdout line is JSON."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args)} in {tree} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def without_weight_repacking() -> None:
    """Make llama-cpp-python's ``Llama`` load without llama.cpp's extra buffer types (the same patch as
    tests/conftest.py): with them, weights are repacked for AMX, and on this VM (which reports AMX without
    granting it) the process dies with SIGILL. edgeinfer loads without them as well."""
    import llama_cpp.llama_cpp as native

    original = native.llama_model_default_params
    if getattr(original, "without_repacking", False):
        return

    def params():  # noqa: ANN202 - llama_cpp's own struct
        value = original()
        value.use_extra_bufts = False
        return value

    params.without_repacking = True  # type: ignore[attr-defined]
    native.llama_model_default_params = params
