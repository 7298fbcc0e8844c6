"""Helpers several benchmarks share: the machine (CPU model, the load other processes put on it, waiting for it to go
idle), latency percentiles, and writing a result as ``.json`` + ``.md``.

Import it as ``from bench_support import ...`` with ``benchmarks/`` on ``sys.path`` (a benchmark run as a script has
its own folder there)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

# ------------------------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: The CPU features the LLM's number format and the matmul speed depend on (``egmf_core.precision``), reported by
#: every benchmark whose numbers they move.
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_flag_table() -> dict[str, bool]:
    """Which of ``CPU_FLAGS`` this CPU has (from /proc/cpuinfo; all False where it cannot be read)."""
    from egmf_core.precision import cpu_flags

    have = cpu_flags()
    return {f: f in have for f in CPU_FLAGS}


def proc_stat_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores; idle and iowait excluded)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_sample() -> tuple[float, float | None, float]:
    """(wall, machine busy s, own CPU s) now: two samples give :func:`other_cores` between them."""
    return time.monotonic(), proc_stat_busy_s(), time.process_time()


def other_cores(a: tuple, b: tuple) -> float | None:
    """Cores other processes kept busy on average between two (wall, machine busy s, own CPU s) samples."""
    if a[1] is None or b[1] is None or b[0] <= a[0]:
        return None
    return round(max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0]), 2)


def wait_for_idle(timeout_s: float, say=print, window_s: float = 10.0, max_other_cores: float = 0.2) -> dict:
    """Wait (up to ``timeout_s``) until other processes used less than ``max_other_cores`` over ``window_s``."""
    t0 = time.monotonic()
    while True:
        a = cpu_sample()
        time.sleep(window_s)
        other = other_cores(a, cpu_sample())
        waited = time.monotonic() - t0
        if other is None or other < max_other_cores:
            return {"waited_s": round(waited, 1), "idle_reached": other is not None, "other_cores_last_window": other}
        if waited >= timeout_s:
            return {"waited_s": round(waited, 1), "idle_reached": False, "other_cores_last_window": other}
        say(f"machine busy (other processes {other:.2f} cores over {window_s:.0f} s), waiting ...")


class MachineLoad:
    """Load average and the CPU time of OTHER processes over an interval (this process's own time subtracted)."""

    def __init__(self) -> None:
        self.load_before = os.getloadavg()
        self._busy0, self._own0, self._wall0 = proc_stat_busy_s(), time.process_time(), time.monotonic()

    def finish(self) -> dict[str, Any]:
        busy1, own1, wall1 = proc_stat_busy_s(), time.process_time(), time.monotonic()
        wall = wall1 - self._wall0
        d: dict[str, Any] = {"load_average_before": [round(v, 2) for v in self.load_before],
                             "load_average_after": [round(v, 2) for v in os.getloadavg()],
                             "interval_s": round(wall, 1), "this_process_cores": round((own1 - self._own0) / wall, 2)}
        if busy1 is not None and self._busy0 is not None:
            d["other_processes_cores"] = round(max(0.0, (busy1 - self._busy0) - (own1 - self._own0)) / wall, 2)
        return d


# ------------------------------------------------------------------------------------------------------ statistics


def percentile(a: Any, q: float, nd: int | None = 1) -> float | None:
    """The ``q``-th percentile of ``a`` rounded to ``nd`` decimals (``None``: not rounded); ``None`` when empty."""
    a = np.asarray(a, float)
    if not len(a):
        return None
    v = float(np.percentile(a, q))
    return v if nd is None else round(v, nd)


def latency_stats(a: Any, nd: int = 1) -> dict[str, Any]:
    """n, p50, p95, mean, min and max of ``a`` rounded to ``nd`` decimals (``{"n": 0}`` when empty)."""
    a = np.asarray(a, float)
    if not len(a):
        return {"n": 0}
    return {"n": len(a), "p50": round(float(np.median(a)), nd), "p95": round(float(np.percentile(a, 95)), nd),
            "mean": round(float(a.mean()), nd), "min": round(float(a.min()), nd), "max": round(float(a.max()), nd)}


# ------------------------------------------------------------------------------------------------------ reports


def write_report_files(out: Path, result: dict, markdown: Callable[[dict], str], *, indent: int = 2,
                       json_end: str = "\n") -> None:
    """Write `out`.json (``result``, then ``json_end``) and `out`.md (``markdown(result)``), and print the Markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=indent) + json_end)
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text)


def write_table_report(out: Path, result: dict, markdown: Callable[[dict], str], script: str,
                       argv: list[str] | None) -> None:
    """Record the command that made `result`, write `out`.json and `out`.md (`markdown(result)`) and print the
    Markdown: the closing steps of the benchmarks that report one table."""
    result["command"] = " ".join([f"python benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])
    write_report_files(out, result, markdown)
