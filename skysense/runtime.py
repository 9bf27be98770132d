"""``--threads N`` of the compute commands: how many CPU threads torch may use.

The default is the number of cores this process may run on (its CPU affinity, which containers and
``taskset`` restrict) less the cores other processes keep busy (the 1-minute load average), at least one.
Oversubscribed cores are the costly case: on a 2-core machine with another job running, two threads per
process made pre-training steps 10-20x slower than one.
"""

from __future__ import annotations

import argparse
import os


def available_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity`` where the platform has it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """:func:`available_cores` less those busy with other processes (1-minute load average), at least 1."""
    cores = available_cores()
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average on this platform
        busy = 0
    return max(1, cores - busy)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` (default 0: :func:`default_threads`) to ``parser``."""
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads for torch (default: the cores available to this process less those other "
        "processes keep busy, at least 1)",
    )


def apply_threads(n: int | None) -> int:
    """Set torch's intra-op threads and the BLAS threads of numpy and scipy to ``n`` (0 or None:
    :func:`default_threads`); returns the count used.

    Raises ``ValueError`` for a negative ``n``."""
    if n is not None and n < 0:
        raise ValueError(f"--threads {n}: give a positive number of threads, or 0 for the default")
    import torch
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    count = n or default_threads()
    torch.set_num_threads(count)
    threadpool_limits(count)  # numpy's and scipy's BLAS too (the probe's fits), for the rest of the process
    return count
