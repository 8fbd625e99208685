"""CPU accounting shared by the benchmarks: other work on a 2-core machine skews every number."""

from __future__ import annotations

import os
import resource


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (Linux /proc/stat)."""
    with open("/proc/stat") as fh:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, fh.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """User + system CPU seconds of this process (RUSAGE_SELF) or its finished children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
