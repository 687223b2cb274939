"""One compute queue per device: every model's evals on one worker thread, fair, by priority, idle asleep."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from waits import wait_until

import edgeinfer as ei
from edgeinfer.backends.testing import FakeBackend
from edgeinfer.compute import BACKGROUND, INTERACTIVE, ComputeQueue, device_queue
from edgeinfer.threads import ThreadTuner


def test_calls_run_on_one_worker_by_priority_then_arrival():
    queue = ComputeQueue("test")
    gate, order, threads = threading.Event(), [], set()

    def record(tag: str) -> str:
        threads.add(threading.get_ident())
        order.append(tag)
        return tag

    first = threading.Thread(target=queue.run, args=(gate.wait,))  # holds the worker
    first.start()
    wait_until(lambda: queue._thread is not None and not queue._heap, "the worker took the first call")
    callers = [threading.Thread(target=queue.run, args=(record, tag), kwargs={"priority": priority})
               for tag, priority in (("bg", BACKGROUND), ("a", INTERACTIVE), ("b", INTERACTIVE))]
    for queued, t in enumerate(callers, 1):
        t.start()
        wait_until(lambda n=queued: len(queue._heap) == n, "queued")  # arrival order is the start order
    gate.set()
    for t in [first, *callers]:
        t.join(timeout=10)
    assert order == ["a", "b", "bg"]  # interactive first, in arrival order; background after
    assert threads == {queue._thread.ident}


def test_errors_reach_the_caller_and_the_worker_lives_on():
    queue = ComputeQueue("test")
    with pytest.raises(ZeroDivisionError):
        queue.run(lambda: 1 / 0)
    assert queue.run(lambda: 42) == 42
    assert queue.run(lambda: queue.run(lambda: "nested")) == "nested"  # a call on the worker runs inline


def test_the_idle_worker_sleeps():
    queue = ComputeQueue("test")
    queue.run(lambda: None)
    native = queue._thread.native_id

    def cpu() -> float:
        return next(t.user_time + t.system_time for t in psutil.Process().threads() if t.id == native)

    before = cpu()
    time.sleep(0.5)
    assert cpu() - before < 0.02


def test_two_models_take_turns_on_one_thread():
    a, b = FakeBackend(n_ctx=128), FakeBackend(n_ctx=128)
    seen: list[tuple[str, int]] = []
    for name, backend in (("a", a), ("b", b)):
        inner = backend.eval

        def traced(items, inner=inner, name=name):  # noqa: ANN001, ANN202
            seen.append((name, threading.get_ident()))
            time.sleep(0.002)  # long enough that both engines wait on the queue at once
            return inner(items)

        backend.eval = traced
    models = [ei.Model(x, name=n, speculation=None, settle=False) for n, x in (("a", a), ("b", b))]
    streams = [m.stream("xy", max_tokens=12, temperature=0) for m in models]
    assert all(s.result().stats.completion_tokens == 12 for s in streams)
    for m in models:
        m.close()
    assert {t for _, t in seen} == {device_queue("cpu")._thread.ident}
    names = [n for n, _ in seen]
    middle = names[len(names) // 4: 3 * len(names) // 4]  # both running: they alternate step by step
    assert sum(x != y for x, y in zip(middle, middle[1:], strict=False)) >= len(middle) - 3


@pytest.mark.slow
def test_llama_models_in_one_process_share_one_worker(smollm2_path: Path):
    from edgeinfer.backends import llamacpp

    threads: list[int] = []
    original = llamacpp.LlamaCppBackend.eval

    def traced(self, items):  # noqa: ANN001, ANN202
        threads.append(threading.get_ident())
        return original(self, items)

    llamacpp.LlamaCppBackend.eval = traced
    try:
        with ei.load(smollm2_path, n_ctx=256, n_threads=2, speculation=None) as one, \
                ei.load(smollm2_path, n_ctx=256, n_threads=2, speculation=None) as two:
            solo = one.generate("The sea is", max_tokens=8, temperature=0).text
            both = [m.stream("The sea is", max_tokens=8, temperature=0) for m in (one, two)]
            assert [s.result().text for s in both] == [solo, solo]
    finally:
        llamacpp.LlamaCppBackend.eval = original
    assert set(threads) == {device_queue("cpu")._thread.ident}


# --- adaptive threads ------------------------------------------------------------------------------------
class Machine:
    """A simulated 2-core machine: step time per thread count, a clock that steps advance."""

    def __init__(self) -> None:
        self.now = 0.0
        self.busy = False

    def step_time(self, threads: int) -> float:
        if self.busy:  # one core held by another process: 2 threads stall at every barrier
            return {1: 0.016, 2: 0.045}[threads]
        return {1: 0.012, 2: 0.0075}[threads]

    def run(self, tuner: ThreadTuner, steps: int) -> list[int]:
        used = []
        for _ in range(steps):
            threads = tuner.threads()
            seconds = self.step_time(threads)
            self.now += seconds
            tuner.record(threads, 1, seconds)
            used.append(threads)
        return used


def test_a_quiet_machine_keeps_every_core_and_probes_less_and_less():
    machine = Machine()
    tuner = ThreadTuner(2, clock=lambda: machine.now)
    used = machine.run(tuner, 8000)  # a minute of decoding
    assert tuner.current == 2 and tuner.switches == 0
    assert used.count(1) / len(used) < 0.01  # the probes of 1 thread cost under 1% of the steps
    assert used[-2000:].count(1) <= 2 * 5  # and back off: at most two probes in the last 15 s


def test_a_busy_core_is_noticed_within_steps_and_the_quiet_machine_again_within_a_probe_interval():
    machine = Machine()
    tuner = ThreadTuner(2, clock=lambda: machine.now)
    machine.run(tuner, 400)
    machine.busy = True
    used = machine.run(tuner, 400)
    assert tuner.current == 1 and used.index(1) < 40  # switched after a few slow steps
    assert used[40:].count(2) / len(used[40:]) < 0.05
    machine.busy = False
    start = machine.now
    while tuner.current == 1 and machine.now - start < 40:
        machine.run(tuner, 10)
    assert tuner.current == 2 and machine.now - start <= 33  # the next probe found the core free


def test_outputs_and_pinned_threads(smol):
    """An explicit n_threads pins the count: no tuner. (Outputs per count: test_llamacpp_backend.)"""
    assert device_queue("cpu").tuner(smol.backend) is None and smol.backend.threads == 2


# --- a busy machine is said, not measured -----------------------------------------------------------------
SPIN = "import time\nt = time.time()\nwhile time.time() - t < {}: pass"


def test_unsteady_repeats_make_the_bench_table_say_the_machine_was_busy():
    from edgeinfer.bench import markdown
    from edgeinfer.machine_load import LoadWindow

    report = LoadWindow.start().report({"smol decode": 2.4})
    assert report["widest_spread"] == 2.4 and "smol decode varied 2.4x" in report["warning"]
    assert "measure again when it is quiet" in report["warning"]
    data = {"results": [], "settings": {"repeats": 1, "prompt_tokens": 8, "gen_tokens": 2, "threads": None},
            "bandwidth_bytes_s": 1e10, "machine": {"cpu": "x", "cpus_usable": 2}, "load": report}
    assert markdown(data).startswith("**Warning: the machine was busy")
    assert "of 1 repeat, alternating" in markdown(data)  # not "1 repeats"


def test_other_processes_count_and_our_own_work_does_not():
    from edgeinfer.machine_load import LoadWindow

    window = LoadWindow.start()
    t = time.perf_counter()
    while time.perf_counter() - t < 0.5:  # our own work
        pass
    own = window.report()
    window = LoadWindow.start()
    hog = subprocess.Popen([sys.executable, "-c", SPIN.format(5)])
    time.sleep(1.0)
    others = window.report()
    hog.kill()
    hog.wait()
    assert others["others_cores"] > 0.5 and "other processes used" in others["warning"]
    assert own["others_cores"] < others["others_cores"] - 0.3
