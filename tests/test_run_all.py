"""benchmarks/run_all.py: BENCHMARKS.md from the committed results (no models, no benchmark runs)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import run_all
from benchmarks.common import RAW_DIRNAME, SUMMARY_MAX_ITEMS, write_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """A copy of the committed results folder, without any run log of the author's machine."""
    out = tmp_path / "results"
    shutil.copytree(RESULTS, out, ignore=shutil.ignore_patterns(RAW_DIRNAME))  # what git holds
    (out / run_all.LOG_NAME).unlink(missing_ok=True)
    return out


def rows(report: str) -> list[list[str]]:
    """The rows of the 'Every headline ratio' table, as cells."""
    section = report.split("## Every headline ratio", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| benchmark ")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]


def build(results: Path, tmp_path: Path, *extra: str, steps=run_all.STEPS) -> tuple[int, str]:
    output = tmp_path / "BENCHMARKS.md"
    code = run_all.main(["--results", str(results), "--output", str(output), *extra], steps=steps)
    return code, output.read_text(encoding="utf-8")


def test_every_benchmark_with_results_has_a_section_and_headlines(results: Path, tmp_path: Path) -> None:
    code, report = build(results, tmp_path, "--report-only")
    assert code == 0
    table = rows(report)
    present = [s for s in run_all.STEPS if (results / s.json_name).is_file()]
    assert len(present) >= 9  # decode, batching, speculative, cache, convert, onnx, routing x2, translate
    for step in present:
        assert f"\n## {step.title}\n" in report, step.name
        mine = [r for r in table if r[0] == step.name]
        assert mine, step.name
        assert any(re.search(r"\d", r[2]) for r in mine), (step.name, mine)
        assert all(r[3] == f"`{step.command()}`" for r in mine), step.name
        assert "EDGEINFER_HOME=" in step.command()
        assert "results lack the expected figures" not in " ".join(r[2] for r in mine), mine
        # its own Markdown report is embedded, headings demoted under the section
        md = (results / step.md_name).read_text(encoding="utf-8")
        first_heading = next(ln for ln in md.splitlines() if ln.startswith("# "))
        assert "\n##" + first_heading + "\n" in report, step.name
    # the machine/date line of each benchmark, and the charts with links relative to the report
    for step in present:
        data = json.loads((results / step.json_name).read_text(encoding="utf-8"))
        assert data["machine"]["time_utc"] in report
    assert "![routing chart](results/routing.png)" in report
    assert "![routing_fewshot chart](results/routing_fewshot.png)" in report
    assert "±25%" in report


def test_headlines_come_from_the_json(results: Path, tmp_path: Path) -> None:
    data = json.loads((results / "decode.json").read_text(encoding="utf-8"))
    data["ratios"]["A/C"]["decode_paired"]["median"] = 1.2345
    (results / "decode.json").write_text(json.dumps(data), encoding="utf-8")
    _, report = build(results, tmp_path, "--report-only")
    assert any(r[0] == "decode" and r[2].startswith("1.23x") for r in rows(report))


def test_missing_results_read_not_run_yet(results: Path, tmp_path: Path) -> None:
    for name in ("translate.json", "translate.md", "bench.json", "bench.md", "bench.png"):
        (results / name).unlink(missing_ok=True)
    code, report = build(results, tmp_path, "--report-only")
    assert code == 0
    for name in ("translate", "bench"):
        mine = [r for r in rows(report) if r[0] == name]
        assert len(mine) == 1 and mine[0][2] == "not run yet", mine
        step = next(s for s in run_all.STEPS if s.name == name)
        assert mine[0][3] == f"`{step.command()}`"
        assert f"## {step.title}\n\nNot run yet" in report


def test_a_results_file_missing_a_figure_does_not_break_the_report(results: Path, tmp_path: Path) -> None:
    (results / "onnx.json").write_text(json.dumps({"machine": {}, "variants": {}, "target": {"x": {}}}))
    code, report = build(results, tmp_path, "--report-only")
    assert code == 0
    onnx = [r for r in rows(report) if r[0] == "onnx"]
    assert len(onnx) == 1 and "results lack the expected figures" in onnx[0][2]


def test_a_failing_step_is_reported_and_the_others_still_run(results: Path, tmp_path: Path) -> None:
    marker = tmp_path / "second-ran"
    fail = replace(run_all.STEPS[0], name="fails", title="A failing step", outputs=("fails.json",),
                   args=("-c", "import sys; print('partial output', file=sys.stderr); sys.exit(3)"))
    ok = replace(run_all.STEPS[0], name="works", title="A working step", outputs=("works.json",),
                 args=("-c", f"import pathlib; pathlib.Path({str(marker)!r}).write_text('x')"))
    code, report = build(results, tmp_path, steps=(fail, ok))
    assert code == 1
    assert marker.exists()  # the step after the failing one ran
    log = json.loads((results / run_all.LOG_NAME).read_text(encoding="utf-8"))["steps"]
    assert log["fails"]["status"] == "failed" and log["fails"]["returncode"] == 3
    assert log["fails"]["stderr_tail"] == ["partial output"]
    assert log["works"]["returncode"] == 0
    assert log["works"]["status"] == "no results"  # exit 0 but it wrote no works.json
    table = {r[0]: r for r in rows(report)}
    assert "FAILED" in table["fails"][2] and "exit code 3" in table["fails"][2]
    assert "run_all.json" in table["fails"][2]

    # --only runs a subset; a later success replaces the failure in the log and the report
    fixed = replace(fail, args=("-c", f"import pathlib; pathlib.Path({str(results / 'fails.json')!r})"
                                      ".write_text('{}')"))
    code, report = build(results, tmp_path, "--only", "fails", steps=(fixed, ok))
    assert code == 0
    log = json.loads((results / run_all.LOG_NAME).read_text(encoding="utf-8"))["steps"]
    assert log["fails"]["status"] == "ok" and log["works"]["status"] == "no results"
    assert "FAILED" not in report


def test_unknown_only_name_is_refused(results: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown step"):
        build(results, tmp_path, "--only", "decode,nope")



def test_bench_results_of_edgeinfer_bench_give_headlines(results: Path, tmp_path: Path) -> None:
    def artifact(name: str, decode: list[float]) -> dict:
        samples = [{"prefill_tok_s": 300.0, "ttft_s": 0.8, "decode_tok_s": v, "generated": 64}
                   for v in decode]
        return {"artifact": name, "name": name, "format": "gguf", "backend": "llama.cpp", "device": "cpu",
                "size_bytes": 10**8, "bytes_per_token": 10**8, "load_s": 0.5, "peak_rss_bytes": 2 * 10**8,
                "samples": samples, "error": None,
                "decode_tok_s": {"median": sorted(decode)[1], "min": min(decode), "max": max(decode)},
                "bound_tok_s": 200.0, "share_of_bound": sorted(decode)[1] / 200.0}

    data = {"results": [artifact("a", [100.0, 110.0, 90.0]), artifact("b", [50.0, 55.0, 45.0]),
                        {"artifact": "broken.gguf", "error": "no such file", "samples": []}],
            "bandwidth_bytes_s": 2e10, "settings": {"repeats": 3},
            "machine": {"cpu": "Some CPU", "cpus_usable": 2, "platform": "Linux",
                        "time_utc": "2030-01-01T00:00:00Z"}}
    (results / "bench.json").write_text(json.dumps(data), encoding="utf-8")
    _, report = build(results, tmp_path, "--report-only")
    bench = [r for r in rows(report) if r[0] == "bench"]
    assert any(r[2].startswith("0.50x") for r in bench), bench  # b / a, paired by repeat
    assert any("failed: no such file" in r[2] for r in bench)
    assert "| 2030-01-01T00:00:00Z | Some CPU | 2 |" in report


def test_write_report_commits_a_summary_and_keeps_the_raw_json_aside(tmp_path: Path) -> None:
    data = {"machine": {"time_utc": "2030-01-01T00:00:00Z", "loadavg": [1.0, 2.0, 3.0]},
            "ratio": {"median": 1.23456}, "samples": list(range(SUMMARY_MAX_ITEMS + 1)),
            "rows": [{"tokens": list(range(100)), "median": 2.0}]}
    json_path, md_path = write_report("x", data, "# X", tmp_path)
    summary = json.loads(json_path.read_text(encoding="utf-8"))
    raw = json.loads((tmp_path / RAW_DIRNAME / "x.json").read_text(encoding="utf-8"))
    assert raw == {"command": raw["command"], **data, "ratio": {"median": 1.2346}}
    assert summary == {"command": raw["command"], "machine": data["machine"], "ratio": {"median": 1.2346},
                       "rows": [{"median": 2.0}]}
    assert raw["command"].startswith("python ") and md_path.read_text(encoding="utf-8") == "# X\n"


def test_committed_results_are_summaries() -> None:
    def longest(value: object) -> int:
        if isinstance(value, dict):
            return max(map(longest, value.values()), default=0)
        if isinstance(value, list):
            return max([len(value), *map(longest, value)])
        return 0

    for path in (p for p in RESULTS.glob("*.json") if p.name != run_all.LOG_NAME):
        assert longest(json.loads(path.read_text(encoding="utf-8"))) <= SUMMARY_MAX_ITEMS, path.name
