"""Per-machine runtime choices of the compute commands: CPU threads, inference precision, fp32 GEMM path.

``--threads N``: the default is the number of cores this process may run on (its CPU affinity, which
containers and ``taskset`` restrict) less the cores other processes keep busy (the 1-minute load average),
at least one. Oversubscribed cores are the costly case: on a 2-core machine with another job running, two
threads per process made pre-training steps 10-20x slower than one.

``--precision auto|fp32|bf16``: ``auto`` measures one short fp32 and bf16 matmul (once per process) and
takes bf16 only where it is clearly faster: AVX512-BF16 or AMX CPUs, not AVX2 ones, where bf16 is slower.
The same measurement sends fp32 inference ``Linear`` layers through oneDNN where that beats aten's BLAS
(:func:`linear`; MKL runs AVX2 code on AMD CPUs, half their AVX-512 rate).
"""

from __future__ import annotations

import argparse
import math
import os
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


# ----------------------------------------------------------------------------- precision and GEMM path

PRECISIONS = ("auto", "fp32", "bf16")
BF16_MARGIN = 1.25  # auto picks bf16 only where its matmul beats fp32's by this much (it rounds coarser)
ONEDNN_MARGIN = 1.1  # fp32 Linear goes through oneDNN only where that is clearly faster than aten's
_SPEEDS: dict[str, float] = {}
_BF16_CACHE: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}  # id -> (tensor, version, bf16 copy)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--precision auto|fp32|bf16`` (default auto: :func:`resolve_precision`) to ``parser``."""
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="inference precision of the encoders: fp32, bf16 autocast, or auto (bf16 where this "
        f"machine's bf16 matmul is at least {BF16_MARGIN}x its fp32 one, measured once; bf16 on GPUs "
        "that support it)",
    )


def matmul_speeds() -> dict[str, float]:
    """GFLOP/s of one (1024 x 1024) @ (1024 x 1024) CPU matmul per path, at the current thread count:
    ``fp32`` (aten, i.e. MKL or OpenBLAS), ``fp32_onednn`` (0 where torch has no oneDNN), ``bf16``.

    Measured once per process, the fastest of a few calls interleaved between the paths (a burst of
    foreign load then hits all of them, and the fastest call is the one that had the cores).
    """
    if not _SPEEDS:
        import time

        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x, w = torch.randn(1024, 1024), torch.randn(1024, 1024)
            xb, wb = x.bfloat16(), w.bfloat16()
            paths = {"fp32": lambda: F.linear(x, w), "bf16": lambda: F.linear(xb, wb)}
            if torch.backends.mkldnn.is_available():
                paths["fp32_onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
            best = {name: math.inf for name in paths}
            for rep in range(6):
                for name, fn in paths.items():
                    t0 = time.perf_counter()
                    fn()
                    if rep:  # the first call of each path warms it up
                        best[name] = min(best[name], time.perf_counter() - t0)
        _SPEEDS.update({name: 2 * 1024**3 / t / 1e9 for name, t in best.items()})
        _SPEEDS.setdefault("fp32_onednn", 0.0)
    return dict(_SPEEDS)


def resolve_precision(choice: str, device: str = "cpu") -> torch.dtype:
    """The compute dtype of ``--precision choice``: fp32 or bf16 as asked; ``auto`` is bf16 where it
    pays: a GPU that supports it, or a CPU whose measured bf16 matmul (:func:`matmul_speeds`) is at
    least ``BF16_MARGIN`` times its best fp32 one (AVX512-BF16 or AMX: yes; AVX2 alone: no).

    Raises ``ValueError`` for any other ``choice``."""
    import torch

    if choice not in PRECISIONS:
        raise ValueError(f"--precision {choice!r}: use one of {', '.join(PRECISIONS)}")
    if choice != "auto":
        return torch.float32 if choice == "fp32" else torch.bfloat16
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    s = matmul_speeds()
    return torch.bfloat16 if s["bf16"] >= BF16_MARGIN * max(s["fp32"], s["fp32_onednn"]) else torch.float32


def onednn_fp32() -> bool:
    """Whether fp32 ``Linear`` layers run through oneDNN here: where it is measured ``ONEDNN_MARGIN``
    faster than aten's path (MKL dispatches AMD CPUs to AVX2 code; oneDNN uses their AVX-512)."""
    forced = os.environ.get("SKYSENSE_FP32_LINEAR", "")  # "onednn" | "aten": pin the measured choice
    if forced in ("onednn", "aten"):
        return forced == "onednn"
    s = matmul_speeds()
    return s["fp32_onednn"] >= ONEDNN_MARGIN * s["fp32"]


def kernels(choice: str, device: str = "cpu") -> dict[str, str]:
    """What ``--precision choice`` computes with here: the dtype, and on a CPU the fp32 GEMM of the
    encoders' linears. Both may be measured, so a resumable run records them in its fingerprint: a rerun
    that would compute otherwise is refused instead of mixing tiles of two numerics."""
    import torch

    dtype = "bf16" if resolve_precision(choice, device) == torch.bfloat16 else "fp32"
    gemm = "onednn" if torch.device(device).type == "cpu" and onednn_fp32() else "aten"
    return {"compute_dtype": dtype, "fp32_linear": gemm}


def _bf16_copy(t: torch.Tensor) -> torch.Tensor:
    """``t`` in bf16, cached while ``t`` lives and is unchanged (its version counter): autocast's own
    cache of weight casts ends with each ``torch.autocast`` block; this one spans calls."""
    import torch

    hit = _BF16_CACHE.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor: later training may save it
        low = t.detach().to(torch.bfloat16)
    key = id(t)
    _BF16_CACHE[key] = (weakref.ref(t, lambda _: _BF16_CACHE.pop(key, None)), t._version, low)
    return low


def _onednn_path(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Which oneDNN linear fits this call: "fp32", "bf16" (under CPU bf16 autocast) or None (F.linear)."""
    import torch

    if (
        torch.compiler.is_compiling()  # inductor picks (it lowers this op only on frozen weights)
        or x.device.type != "cpu"
        or weight.dtype != torch.float32
        # inference only: training, the EMA teacher and no_grad probes keep aten's numerics (under FSDP2
        # the fused op made the teacher's losses drift from DDP's beyond rounding)
        or not torch.is_inference_mode_enabled()
        or not torch.backends.mkldnn.is_available()
    ):
        return None
    autocast = torch.is_autocast_enabled("cpu")
    fp32 = x.dtype == torch.float32 and not autocast
    if autocast:
        bf16 = (
            torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
        lowp_ok = x.dtype in (torch.float32, torch.bfloat16) and not weight.is_inference()  # cache key
        return "bf16" if bf16 and lowp_ok else None
    return "fp32" if fp32 and onednn_fp32() else None


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then exact GELU if ``gelu``.

    In CPU inference (``torch.inference_mode``) through oneDNN with the bias and GELU fused into the
    GEMM, which saves aten's copy of the bias into the output and a pass of GELU: under bf16 autocast
    always (aten's bf16 GEMM is oneDNN's too), in fp32 where :func:`onednn_fp32`; not while compiling.
    Equal up to rounding."""
    import torch
    import torch.nn.functional as F

    path = _onednn_path(x, weight)
    attr = "gelu" if gelu else "none"
    if path == "fp32":
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], "none")
    if path == "bf16":
        b = None if bias is None else bias.to(torch.bfloat16)  # small; may be made per call (Swin's qkv)
        return torch.ops.mkldnn._linear_pointwise(
            x.to(torch.bfloat16), _bf16_copy(weight), b, attr, [], "none"
        )
    y = F.linear(x, weight, bias)
    if not gelu:
        return y
    return F.gelu(y) if torch.is_grad_enabled() and y.requires_grad else torch.ops.aten.gelu_(y)
