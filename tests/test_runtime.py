"""``--threads``: the default is the free cores (affinity less the load); the value reaches torch."""

import argparse
import os

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from skysense.runtime import add_threads_argument, apply_threads, available_cores, default_threads


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    with threadpool_limits(limits=None):  # restores the BLAS pools' limits on exit
        yield
    torch.set_num_threads(before)


def test_explicit_threads_reach_torch_and_blas(threads_restored) -> None:
    parser = argparse.ArgumentParser()
    add_threads_argument(parser)
    assert parser.parse_args([]).threads == 0
    for n in (2, 1):
        assert apply_threads(parser.parse_args(["--threads", str(n)]).threads) == n
        assert torch.get_num_threads() == n
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == n for p in blas)  # numpy's BLAS: the probe's fits


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
@pytest.mark.parametrize(("load", "expected"), [(0.0, 4), (0.4, 4), (1.2, 3), (2.6, 1), (9.0, 1)])
def test_default_is_the_free_cores(monkeypatch, threads_restored, load, expected) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert available_cores() == 4
    assert default_threads() == expected
    assert apply_threads(0) == expected and torch.get_num_threads() == expected


def test_negative_threads_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="positive number"):
        apply_threads(-2)
