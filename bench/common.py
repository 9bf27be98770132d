"""Shared helpers of the CPU benchmarks: thread setup, robust timing, machine facts, the measured peak."""

from __future__ import annotations

import datetime
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from skysense.data.root import data_root

RESULTS = Path(__file__).resolve().parent / "results"
# Quoted figures use 2; SKYSENSE_BENCH_THREADS=1 runs two benchmarks side by side, one core each.
THREADS = int(os.environ.get("SKYSENSE_BENCH_THREADS", "2"))


def setup(threads: int = THREADS) -> None:
    """Fix the thread count (the benchmarks are quoted at 2 threads) and silence nothing else."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def data_folder(*parts: str) -> Path:
    """A folder of the shared data (``$SKYSENSE_DATA``, read in place); exits saying so if it is absent."""
    root = data_root().joinpath(*parts)
    if not root.is_dir():
        sys.exit(f"skip: {root} not found (set SKYSENSE_DATA to the shared data folder)")
    return root


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> dict[str, Any]:
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "isa": {f: f in flags for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")},
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_1m": os.getloadavg()[0],
    }


def busy_cores(window_s: float = 0.5) -> float:
    """Cores kept busy by everything on the box over ``window_s`` (call it while this process idles)."""

    def snap() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    t0, i0 = snap()
    time.sleep(window_s)
    t1, i1 = snap()
    return (os.cpu_count() or 1) * (1.0 - (i1 - i0) / max(t1 - t0, 1))


def wait_quiet(max_busy: float = 0.5, timeout_s: float = 3.0) -> float:
    """Wait (up to ``timeout_s``) until other processes use less than ``max_busy`` cores; return the last
    reading. This is a shared 2-core box: timing while someone else runs would measure them, not us."""
    deadline = time.monotonic() + timeout_s
    busy = busy_cores()
    while busy > max_busy and time.monotonic() < deadline:
        busy = busy_cores(1.0)
    return busy


def time_call(fn: Callable[[], Any], reps: int, warmup: int = 2) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def quiet_time_call(fn: Callable[[], Any], reps: int, warmup: int = 1) -> tuple[list[float], float]:
    """``time_call`` after ``wait_quiet``; also returns the foreign load (busy cores) seen just before."""
    busy = wait_quiet()
    return time_call(fn, reps, warmup), busy


def summary(seconds: list[float]) -> dict[str, float]:
    """Median and best (minimum) time: the median is the figure; the best bounds the noise of a shared box."""
    return {"median_s": statistics.median(seconds), "best_s": min(seconds), "n": len(seconds)}


def in_fresh_process(target: Callable[..., None], args: tuple) -> dict[str, Any]:
    """``target(args, queue)`` in a new spawned process, so that its peak memory is its own; returns the
    dict it puts on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(args, queue))
    proc.start()
    got = queue.get()
    proc.join()
    return got


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def load_peak() -> dict[str, float] | None:
    """The ``peak`` block of ``results/peak.json`` (GFLOP/s per path), or None if peak.py has not run."""
    path = RESULTS / "peak.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["peak"]


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """A GitHub-markdown table of ``rows`` restricted to ``cols``; floats get 3 significant digits."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
