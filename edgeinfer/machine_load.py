"""Was the machine busy while we measured? Other processes' CPU use, steal time, and step-time spread.

A benchmark run while another program holds a core can print a fraction of the real speed; rather than
report that as a result, ``edgeinfer bench`` says the figures are not comparable.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from typing import Any

import psutil

OTHERS_CORES = 0.25  # other processes using more than this many cores on average: busy
STEAL_SHARE = 0.05  # the hypervisor taking more than this share of CPU time: busy
SPREAD = 1.5  # a figure whose fastest repeat is this much faster than its slowest: unsteady


def _own_cpu_s() -> float:
    """CPU seconds used by this process and its reaped children (the benchmark's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class LoadWindow:
    """CPU counters at the start of a measurement."""

    wall: float
    cpu: Any  # psutil.cpu_times(): user, system, idle, iowait, steal, ... seconds
    own_cpu_s: float

    @classmethod
    def start(cls) -> LoadWindow:
        return cls(time.perf_counter(), psutil.cpu_times(), _own_cpu_s())

    def report(self, spreads: dict[str, float] | None = None) -> dict:
        """Other processes' average cores, the steal share, the widest spread, and a warning if busy."""
        wall = max(time.perf_counter() - self.wall, 1e-9)
        now = psutil.cpu_times()
        busy = sum(now) - now.idle - getattr(now, "iowait", 0.0)
        busy_before = sum(self.cpu) - self.cpu.idle - getattr(self.cpu, "iowait", 0.0)
        steal = getattr(now, "steal", 0.0) - getattr(self.cpu, "steal", 0.0)
        others = max(0.0, (busy - busy_before) - steal - (_own_cpu_s() - self.own_cpu_s)) / wall
        cpus = os.cpu_count() or 1
        steal_share = steal / (wall * cpus)
        widest = max((spreads or {}).items(), key=lambda kv: kv[1], default=("", 1.0))
        reasons = []
        if others > OTHERS_CORES:
            reasons.append(f"other processes used {others:.2f} cores on average")
        if steal_share > STEAL_SHARE:
            reasons.append(f"the hypervisor took {100 * steal_share:.0f}% of the CPU time (steal)")
        if widest[1] > SPREAD:
            reasons.append(f"{widest[0]} varied {widest[1]:.1f}x between repeats")
        warning = None
        if reasons:
            warning = ("the machine was busy during this run (" + "; ".join(reasons) + "): these figures are "
                       "not comparable with a quiet run; measure again when it is quiet")
        return {"others_cores": round(others, 3), "steal_share": round(steal_share, 4),
                "widest_spread": round(widest[1], 2), "warning": warning}
