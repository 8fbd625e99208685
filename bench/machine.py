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


def describe() -> str:
    """The machine in one line: CPU model, cores, whether it has AVX512-BF16 (Linux /proc/cpuinfo)."""
    text = open("/proc/cpuinfo").read()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    bf16 = "AVX512-BF16" if "avx512_bf16" in text else "no AVX512-BF16"
    return f"{os.cpu_count()} cores {model} ({bf16})"
