"""Measured matmul GFLOP/s of this CPU at 2 threads: fp32 through MKL and through oneDNN, and bf16.

Every path computes ``y = x @ w.T`` (a Linear without bias) with ``x`` (M, K) and ``w`` (N, K);
FLOPs = 2*M*N*K. Shapes: square ones and the transformer ones of the benchmarked encoders at batch 8.
Each (shape, path) is timed in several interleaved rounds, each after waiting (briefly) for the box to
be quiet; rows give the median and the fastest call. The peak of a path is its fastest call over all
shapes (robust to the other users of a shared box); ``results/peak.json`` holds it, with the CPU it was
measured on (model name, family/model numbers, ISA extensions, threads): :func:`load_peak_file` refuses
the file on any other CPU, and ``bench/encoders.py`` measures its own peak in the same run by default
(:func:`measure_peak`).

    .venv/bin/python -m bench.peak [--quick]   (from the repository root)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench.common import machine, quiet_time_call, save, setup, summary, table, time_call  # noqa: E402

# (label, M, K, N)
SQUARE = [
    ("square 1024", 1024, 1024, 1024),
    ("square 2048", 2048, 2048, 2048),
    ("square 4096", 4096, 4096, 4096),
]
TRANSFORMER = [
    ("ViT-B qkv 8x257", 2056, 768, 2304),
    ("ViT-B fc1 8x257", 2056, 768, 3072),
    ("ViT-B fc2 8x257", 2056, 3072, 768),
    ("Swin-B s3 fc1 8x256", 2048, 512, 2048),
    ("Swin-B s1 fc1 8x4096", 32768, 128, 512),
]


def cpu_identity() -> dict[str, Any]:
    """What a matmul peak holds for: CPU model name and family/model numbers, ISA extensions, threads."""
    info = machine()
    ident: dict[str, Any] = {"cpu": info["cpu"], "isa": info["isa"], "threads": info["threads"]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("cpu family", "model") and key.strip() not in ident:
                ident[key.strip()] = value.strip()
            if not line.strip():  # the first processor's block is enough
                break
    except OSError:
        pass
    return ident


def load_peak_file(path: str | Path) -> dict[str, float]:
    """The ``peak`` block of a ``bench/peak.py`` result; ``SystemExit`` if it was measured on another CPU
    (or does not say on which): a peak of another machine makes every "% of peak" meaningless."""
    payload = json.loads(Path(path).read_text())
    theirs, mine = payload.get("machine", {}), cpu_identity()
    differ = [k for k in mine if theirs.get(k) != mine[k]]
    if differ:
        raise SystemExit(
            f"{path}: measured on {theirs.get('cpu', 'an unrecorded CPU')!r}, not this machine "
            f"({mine['cpu']!r}); differs in {', '.join(differ)}. Run `python -m bench.peak` here, or "
            "leave out the peak file to measure the peak in the same run."
        )
    return payload["peak"]


def peaks(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per path its fastest call over all shapes, and per dtype its fastest path.

    On a shared box the median measures the neighbours too, while the fastest of many short calls is
    what the cores do when they are ours."""
    peak: dict[str, float] = {}
    for r in rows:
        peak[r["path"]] = max(peak.get(r["path"], 0.0), r["gflops_best"])
    peak["fp32"] = max(v for p, v in peak.items() if p.startswith("fp32/"))
    peak["bf16"] = max(v for p, v in peak.items() if p.startswith("bf16/"))
    return peak


def measure_peak(quick: bool = False, verbose: bool = False) -> dict[str, float]:
    """This machine's matmul peak now (:func:`peaks`), from two shapes (one if ``quick``): about 20 s."""
    shapes = [SQUARE[0]] if quick else [SQUARE[0], TRANSFORMER[3]]
    with torch.inference_mode():
        rows = measure(shapes, rounds=1 if quick else 2, target_s=0.3 if quick else 1.0, verbose=verbose)
    return peaks(rows)


def paths(x: Tensor, w: Tensor) -> dict[str, Callable[[], Tensor]]:
    """The ways of running one fp32 / bf16 matmul, keyed by ``dtype/backend``."""
    m = x.shape[0]
    xb, wb = x.bfloat16(), w.bfloat16()
    x_md, w_md = x.to_mkldnn(), w.to_mkldnn()
    w_mkl = torch.ops.mkl._mkl_reorder_linear_weight(w, m)  # what inductor's freezing pass prepacks for fp32
    return {
        # aten addmm -> MKL sgemm: the default fp32 path of eager PyTorch
        "fp32/mkl": lambda: F.linear(x, w),
        "fp32/mkl-packed": lambda: torch.ops.mkl._mkl_linear(x, w_mkl, w, None, m),
        # oneDNN on plain tensors (inductor's mkldnn linear) and on oneDNN-layout tensors
        "fp32/onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""),
        "fp32/onednn-blocked": lambda: torch._C._nn.mkldnn_linear(x_md, w_md, None),
        # bf16 in, bf16 out (fp32 accumulation): aten -> oneDNN brgemm
        "bf16/aten": lambda: F.linear(xb, wb),
        "bf16/onednn": lambda: torch.ops.mkldnn._linear_pointwise(xb, wb, None, "none", [], ""),
    }


def measure(
    shapes: list[tuple[str, int, int, int]], rounds: int, target_s: float, verbose: bool = True
) -> list[dict]:
    rows = []
    for label, m, k, n in shapes:
        x, w = torch.randn(m, k), torch.randn(n, k) / k**0.5
        fns = paths(x, w)
        flops = 2.0 * m * n * k
        times: dict[str, list[float]] = {p: [] for p in fns}
        busy: dict[str, float] = {p: 0.0 for p in fns}
        for _ in range(rounds):  # interleave the paths so that a burst of foreign load hits all of them
            for p, fn in fns.items():
                one = min(time_call(fn, 1, warmup=1))
                reps = max(2, min(20, int(target_s / rounds / one)))
                ts, b = quiet_time_call(fn, reps, warmup=0)
                times[p] += ts
                busy[p] = max(busy[p], b)
        for p, ts in times.items():
            s = summary(ts)
            rows.append(
                {
                    "shape": label,
                    "M": m,
                    "K": k,
                    "N": n,
                    "path": p,
                    "gflops": flops / s["median_s"] / 1e9,
                    "gflops_best": flops / s["best_s"] / 1e9,
                    "n": s["n"],
                    "foreign_busy_cores": busy[p],
                }
            )
        if verbose:
            cols = ["shape", "path", "gflops", "gflops_best", "n", "foreign_busy_cores"]
            print(table([r for r in rows if r["shape"] == label], cols))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two shapes, one round: a smoke run")
    args = ap.parse_args()
    setup()
    shapes = [SQUARE[0], TRANSFORMER[1]] if args.quick else SQUARE + TRANSFORMER
    with torch.inference_mode():
        rows = measure(shapes, rounds=1 if args.quick else 3, target_s=0.5 if args.quick else 2.5)
    peak = peaks(rows)
    info = {**machine(), **cpu_identity()}
    print(f"\npeak GFLOP/s ({info['cpu']}, {info['threads']} threads, torch {info['torch']}):")
    print(table([{"path": p, "gflops": v} for p, v in peak.items()], ["path", "gflops"]))
    if args.quick:
        print("(quick run: results/peak.json left as is)")
        return
    print("wrote", save("peak.json", {"machine": info, "flops": "2*M*N*K", "peak": peak, "rows": rows}))


if __name__ == "__main__":
    main()
