"""Whether llama.cpp's extra CPU buffer types (weight repacking: ``repack=True``) can run here.

On a CPU that reports AMX, llama.cpp repacks weights for its AMX kernels; a virtual machine that reports
AMX without granting the tiles kills the process with SIGILL at the first batched eval (seen on this
project's CI machines). So before a model is loaded with repacking on such a CPU, a child process loads
it that way and evaluates a batch; if the child dies, the model is loaded without repacking and a
warning says why. The answer is kept in the cache per file and llama.cpp build, so the probe runs once.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from ..paths import atomic_write, cache_root

log = logging.getLogger("edgeinfer.llama_cpp")
AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")
PROBE_TIMEOUT_S = 300
PROBE_BATCH = 64  # tokens in the probe's eval: llama.cpp takes its AMX path for batches of 32 and more
# Runs in the child: load with llama-cpp-python's defaults (extra buffer types on) and evaluate a batch.
PROBE_CODE = """
import sys
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_ctx=128, n_batch=128, n_threads=1, verbose=False)
n = llm.n_vocab()
llm.eval([(7 * i + 11) % n for i in range(int(sys.argv[2]))])
print("ok")
"""


def _cpu_reports_amx() -> bool:
    from ..loader import cached_probe  # the machine probe ei.load takes anyway, once per process

    return any(flag in cached_probe().cpu_features for flag in AMX_FLAGS)


def _stamp_path() -> Path:
    return cache_root() / "probes" / "extra-buffers.json"


def _key(path: Path) -> str:
    import llama_cpp

    st = path.stat()
    return f"{llama_cpp.__version__}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _read_stamps() -> dict[str, dict]:
    """The cached answers (a cache file: untrusted, so anything not shaped as written counts as empty)."""
    try:
        data = json.loads(_stamp_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("ok"), bool)
            and isinstance(v.get("why", ""), str)}


def run_probe(path: Path) -> tuple[bool, str]:
    """Load ``path`` with the extra buffer types in a child process and evaluate a batch; (ran, why)."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE_CODE, str(path), str(PROBE_BATCH)],
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"a child process loading it with repacking did not finish in {PROBE_TIMEOUT_S} s"
    if done.returncode == 0 and "ok" in done.stdout:
        return True, ""
    if done.returncode < 0:
        import signal

        name = signal.Signals(-done.returncode).name
        return False, (f"llama.cpp's repacked kernels kill the process here ({name} in a child process "
                       "that tried them; a virtual machine that reports AMX without granting it does this)")
    return False, f"a child process loading it with repacking failed (exit {done.returncode})"


def extra_buffers_usable(path: str | Path) -> tuple[bool, str]:
    """(True, "") where repacking ``path`` is safe here; else (False, why). Probed once per file."""
    if not _cpu_reports_amx():
        return True, ""
    path = Path(path)
    key = _key(path)
    stamps = _read_stamps()
    if key not in stamps:
        ok, why = run_probe(path)
        stamps[key] = {"ok": ok, "why": why}
        try:
            with atomic_write(_stamp_path(), "w") as handle:
                json.dump(stamps, handle, indent=1)
        except OSError as exc:  # a cache that cannot be written costs a probe next time, nothing more
            log.debug("could not keep the repacking probe's answer: %s", exc)
    return stamps[key]["ok"], stamps[key].get("why", "")
