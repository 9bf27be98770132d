"""``--threads``: the default is the free cores (affinity less the load); the value reaches torch.
``--precision``: auto follows the measured matmul speeds; ``linear`` equals ``F.linear`` on every path."""

import argparse
import os

import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_info, threadpool_limits

from skysense import runtime
from skysense.runtime import (
    add_precision_argument,
    add_threads_argument,
    apply_threads,
    available_cores,
    default_threads,
    linear,
    matmul_speeds,
    resolve_precision,
)


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


@pytest.fixture
def speeds(monkeypatch):
    """Stand-in matmul speeds (GFLOP/s), restored afterwards."""
    fake: dict[str, float] = {}
    monkeypatch.setattr(runtime, "_SPEEDS", fake)
    return fake


def test_precision_argument_choices() -> None:
    parser = argparse.ArgumentParser()
    add_precision_argument(parser)
    assert parser.parse_args([]).precision == "auto"
    assert parser.parse_args(["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])


@pytest.mark.parametrize(
    ("measured", "expected"),
    [
        ({"fp32": 100.0, "fp32_onednn": 200.0, "bf16": 420.0}, torch.bfloat16),  # AVX512-BF16 (AMD)
        ({"fp32": 400.0, "fp32_onednn": 370.0, "bf16": 205.0}, torch.float32),  # AVX-512 without BF16/AMX
        ({"fp32": 100.0, "fp32_onednn": 0.0, "bf16": 110.0}, torch.float32),  # not clearly faster
    ],
)
def test_auto_precision_follows_the_measured_matmuls(speeds, measured, expected) -> None:
    speeds.update(measured)
    assert resolve_precision("auto") == expected
    assert resolve_precision("fp32") == torch.float32 and resolve_precision("bf16") == torch.bfloat16


def test_speeds_are_measured_once_per_process(speeds) -> None:
    first = matmul_speeds()
    assert set(first) == {"fp32", "fp32_onednn", "bf16"} and first["fp32"] > 0 and first["bf16"] > 0
    speeds["bf16"] = -1.0  # a second measurement would overwrite this
    assert matmul_speeds()["bf16"] == -1.0


def test_unknown_precision_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="use one of auto, fp32, bf16"):
        resolve_precision("fp16")


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("gelu", [True, False])
def test_linear_equals_f_linear(speeds, onednn, gelu) -> None:
    if onednn and not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    speeds.update({"fp32": 100.0, "fp32_onednn": 200.0 if onednn else 50.0, "bf16": 1.0})
    x, w, b = torch.randn(3, 5, 64), torch.randn(96, 64), torch.randn(96)
    want = F.linear(x.double(), w.double(), b.double())
    want = F.gelu(want) if gelu else want
    with torch.inference_mode():
        got = linear(x.transpose(0, 1), w, b, gelu=gelu).transpose(0, 1)  # a strided input too
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            linear(x, w).double(), F.linear(x.double(), w.double()), atol=1e-4, rtol=1e-4
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps its own path: bf16 out
            assert linear(x, w, b, gelu=gelu).dtype == torch.bfloat16


def test_onednn_runs_only_in_inference_mode(speeds) -> None:
    speeds.update({"fp32": 1.0, "fp32_onednn": 100.0, "bf16": 1.0})
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    with torch.no_grad():  # the EMA teacher and the probes: aten's numerics, as in training
        assert runtime._onednn_path(x, w) is None
    with torch.inference_mode():
        assert runtime._onednn_path(x, w) == ("fp32" if torch.backends.mkldnn.is_available() else None)


def test_linear_keeps_autograd(speeds) -> None:
    speeds.update({"fp32": 1.0, "fp32_onednn": 100.0, "bf16": 1.0})
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(6, 8, requires_grad=True)
    linear(x, w, gelu=True).sum().backward()
    assert x.grad is not None and w.grad is not None


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_bf16_linear_uses_a_cached_cast_that_follows_the_weight(speeds) -> None:
    speeds.update({"fp32": 100.0, "fp32_onednn": 200.0, "bf16": 400.0})
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(2, 5, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear(x, lin.weight, lin.bias, gelu=True)
        want = F.gelu(F.linear(x, lin.weight, lin.bias).float())
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.02)
    assert id(lin.weight) in runtime._BF16_CACHE
    with torch.no_grad():
        lin.weight.mul_(-1.0)  # an optimizer step or load_state_dict: the cached cast must not be reused
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear(x, lin.weight, lin.bias)
    torch.testing.assert_close(got.float(), F.linear(x, lin.weight, lin.bias), atol=0.05, rtol=0.02)
    key = id(lin.weight)
    del lin
    assert key not in runtime._BF16_CACHE  # dropped with its weight


@pytest.mark.parametrize(
    ("measured", "env", "expected"),
    [
        (
            {"fp32": 100.0, "fp32_onednn": 400.0, "bf16": 800.0},
            "",
            {"compute_dtype": "bf16", "fp32_linear": "onednn"},
        ),
        (
            {"fp32": 400.0, "fp32_onednn": 370.0, "bf16": 205.0},
            "",
            {"compute_dtype": "fp32", "fp32_linear": "aten"},
        ),
        (
            {"fp32": 400.0, "fp32_onednn": 370.0, "bf16": 205.0},
            "onednn",
            {"compute_dtype": "fp32", "fp32_linear": "onednn"},
        ),
        (
            {"fp32": 100.0, "fp32_onednn": 400.0, "bf16": 800.0},
            "aten",
            {"compute_dtype": "bf16", "fp32_linear": "aten"},
        ),
    ],
)
def test_kernels_name_what_a_run_computes_with(speeds, monkeypatch, measured, env, expected) -> None:
    # what a resumable run records: a rerun measuring otherwise is refused, not mixed
    speeds.update(measured)
    monkeypatch.setenv("SKYSENSE_FP32_LINEAR", env)
    assert runtime.kernels("auto") == expected
    assert runtime.kernels("fp32")["compute_dtype"] == "fp32"
