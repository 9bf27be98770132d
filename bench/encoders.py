"""Inference throughput of our ``hr`` SwinV2 and ``s2`` ViT encoders against same-size timm models.

One run, side by side, on this CPU at 2 threads, batch 8, ``torch.inference_mode()``. Modes:

* ``fp32``, ``bf16`` (``torch.autocast("cpu", bfloat16)``): eager;
* ``fp32 onednn``: eager with every fp32 ``F.linear`` sent to oneDNN (``mkldnn._linear_pointwise``);
* ``... compile`` / ``... compile+freeze``: ``torch.compile`` (inductor), the latter with
  ``torch._inductor.config.freezing = True`` (weights folded and prepacked: timm's best case).

FLOPs are counted once per model with ``torch.utils.flop_counter.FlopCounterMode`` on the module
that is timed (fp32 eager, batch 8): 2 FLOPs per multiply-add of matmuls, convolutions and
attention; element-wise work is not counted. GFLOP/s = counted FLOPs / median time; "% peak" divides it
by the matmul peak of the mode's dtype on this machine, measured in the same run before and after the
encoders (``bench.peak.measure_peak``; the higher of the two), or read from ``--peak-file`` (refused when
measured on another CPU). Every row records the CPU it ran on. Ours and timm are timed in alternating
rounds so that foreign load on the box hits both alike. The fusion block runs at the paper's shapes
(64x64 cells, 1+20+10 dates, batch 1, eager). ``--large``: instead, the paper's ViT-L (``large`` preset)
and the huge SwinV2 (``huge``) at batch 1 and 2, ours only, with the peak memory of a forward (the
resident set's growth over the call, sampled every 2 ms, after freed memory is handed back).

    .venv/bin/python -m bench.encoders [--quick] [--large] [--modes fp32,bf16,...] [--only swin,vit,fusion]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench.common import machine, quiet_time_call, save, setup, summary, table  # noqa: E402
from bench.peak import cpu_identity, load_peak_file, measure_peak  # noqa: E402
from skysense.config import get_preset  # noqa: E402
from skysense.runtime import matmul_speeds, resolve_precision  # noqa: E402

ALL_MODES = ("fp32", "fp32 onednn", "bf16", "fp32 compile+freeze", "bf16 compile", "bf16 compile+freeze")
TIMM_SWIN = "swinv2_base_window8_256"
DEFAULT_MODES = ("fp32", "fp32 onednn", "bf16", "fp32 compile+freeze", "bf16 compile+freeze")
LARGE_MODES = ("fp32", "bf16", "bf16 compile+freeze")
CPU = cpu_identity()["cpu"]  # recorded with every row


class OneDNNLinear(TorchFunctionMode):
    """Run fp32 ``F.linear`` (hence ``nn.Linear``) through oneDNN instead of MKL's sgemm."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            named = dict(zip(("input", "weight", "bias"), args), **kwargs)
            x, w, b = named["input"], named["weight"], named.get("bias")
            if x.dtype == torch.float32:
                return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return func(*args, **kwargs)


class Runner(nn.Module):
    """``fn(model, x)`` as a module, so that torch.compile (and freezing) sees the parameters."""

    def __init__(self, model: nn.Module, fn: Callable[[Any, Tensor], Any]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x: Tensor) -> Any:
        return self.fn(self.model, x)


@dataclass
class Case:
    pair: str  # e.g. "SwinV2-B 256px"
    who: str  # "ours" or "timm"
    build: Callable[[], Runner]
    shape: tuple[int, ...]


def swin_cases(preset: str, img: int, timm_name: str | None, batch: int) -> list[Case]:
    from skysense.models.swin import SwinTransformerV2

    cfg = get_preset(preset).hr
    assert cfg is not None
    pair = f"SwinV2 {preset} {img}px b{batch}"
    shape = (batch, cfg.in_chans, img, img)

    def ours() -> Runner:
        return Runner(SwinTransformerV2(cfg), lambda m, x: m(x))

    def theirs() -> Runner:  # all four stage maps, like ours
        assert timm_name is not None
        return Runner(
            timm.create_model(timm_name, pretrained=False, features_only=True, img_size=img),
            lambda m, x: m(x),
        )

    return [Case(pair, "ours", ours, shape)] + ([Case(pair, "timm", theirs, shape)] if timm_name else [])


def vit_cases(preset: str, batch: int, with_timm: bool = True) -> list[Case]:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    from skysense.models.vit import VisionTransformer

    cfg = get_preset(preset).s2
    assert cfg is not None
    pair = f"ViT {preset} {cfg.img_size}px/p{cfg.patch_size} b{batch}"
    shape = (batch, cfg.in_chans, cfg.img_size, cfg.img_size)
    idx = [i % cfg.depth for i in cfg.out_indices]

    def ours() -> Runner:
        return Runner(VisionTransformer(cfg), lambda m, x: m(x))

    def theirs() -> Runner:  # the same maps as ours: intermediates of the same layers, NCHW, no final norm
        m = TimmViT(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            in_chans=cfg.in_chans,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            class_token=True,
            global_pool="",
            num_classes=0,
        )
        return Runner(m, lambda m, x: m.forward_intermediates(x, indices=idx, intermediates_only=True))

    return [Case(pair, "ours", ours, shape)] + ([Case(pair, "timm", theirs, shape)] if with_timm else [])


def _onednn_linear_flops(x_shape: Any, w_shape: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    """2 FLOPs per multiply-add of ``mkldnn._linear_pointwise`` (skysense.runtime.linear's GEMM)."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, taught the oneDNN linear (which it does not count by itself)."""
    return FlopCounterMode(
        display=False, custom_mapping={torch.ops.mkldnn._linear_pointwise: _onednn_linear_flops}
    )


def count_flops(runner: Runner, x: Tensor) -> float:
    matmul_speeds()  # measured once per process, on the first oneDNN-eligible call: not in this count
    with flop_counter() as fc:
        runner(x)
    return float(fc.get_total_flops())


@contextlib.contextmanager
def mode_ctx(mode: str) -> Iterator[None]:
    with contextlib.ExitStack() as st:
        if mode.startswith("bf16"):
            st.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        if mode == "fp32 onednn":
            st.enter_context(OneDNNLinear())
        yield


def prepare(runners: dict[str, Runner], mode: str) -> dict[str, Callable[[Tensor], Any]]:
    """The callables to time: the modules themselves, or their torch.compile'd versions."""
    if "compile" not in mode:
        return dict(runners)
    torch._dynamo.reset()
    torch._inductor.config.freezing = mode.endswith("freeze")
    return {who: torch.compile(r) for who, r in runners.items()}


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def peak_memory_mb(fn: Callable[[], Any]) -> float:
    """Growth of the resident set over one call of ``fn`` at its highest (MB), sampled every 2 ms.

    Memory that earlier calls freed is first handed back to the system (glibc ``malloc_trim``), else the
    allocator would serve this call from it unseen."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    base, high, done = rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            high[0] = max(high[0], rss_bytes())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    fn()
    done.set()
    t.join()
    return max(high[0], rss_bytes()) / 1e6 - base / 1e6


def bench_pair(
    cases: list[Case], modes: list[str], rounds: int, reps: int, memory: bool = False
) -> list[dict[str, Any]]:
    """Time both members of a pair in every mode, alternating rounds between them; with ``memory`` also
    the peak memory of one more (untimed) call."""
    with torch.inference_mode(False):  # real parameters, not inference tensors
        runners = {c.who: c.build().eval() for c in cases}
    inputs = {c.who: torch.randn(c.shape) for c in cases}
    flops = {who: count_flops(r, inputs[who]) for who, r in runners.items()}
    rows = []
    for mode in modes:
        with mode_ctx(mode):
            fns = prepare(runners, mode)
            for who, fn in fns.items():
                fn(inputs[who])  # compilation (if any) happens here, outside the timing
            times: dict[str, list[float]] = {who: [] for who in fns}
            busy = {who: 0.0 for who in fns}
            for _ in range(rounds):
                for who, fn in fns.items():
                    ts, b = quiet_time_call(partial(fn, inputs[who]), reps, warmup=1)
                    times[who] += ts
                    busy[who] = max(busy[who], b)
            mem = {who: peak_memory_mb(partial(fn, inputs[who])) for who, fn in fns.items()} if memory else {}
        for c in cases:
            s = summary(times[c.who])
            rows.append(
                {
                    "pair": c.pair,
                    "who": c.who,
                    "mode": mode,
                    "batch": c.shape[0],
                    "gflop_per_batch": flops[c.who] / 1e9,
                    "samples_s": c.shape[0] / s["median_s"],
                    "gflops": flops[c.who] / s["median_s"] / 1e9,
                    "gflops_best": flops[c.who] / s["best_s"] / 1e9,
                    "samples_s_best": c.shape[0] / s["best_s"],
                    "n": s["n"],
                    "foreign_busy_cores": busy[c.who],
                    "peak_mem_mb": mem.get(c.who),
                    "cpu": CPU,
                }
            )
        cols = ["pair", "who", "mode", "samples_s", "gflops", "gflops_best", "n", "foreign_busy_cores"]
        print(table(rows[-len(cases) :], cols + (["peak_mem_mb"] if memory else [])), flush=True)
    torch._inductor.config.freezing = False
    return rows


def bench_fusion(
    preset: str, cells: int, dates: tuple[int, int, int], modes: list[str], reps: int
) -> list[dict]:
    """The temporal fusion block of ``preset`` on (1, sum(dates), C, cells, cells) aligned features."""
    from skysense.models.temporal_fusion import TemporalFusion

    fcfg = get_preset(preset).fusion
    with torch.inference_mode(False):
        model = TemporalFusion(fcfg).eval()
    b, l = 1, sum(dates)
    feats = torch.randn(b, l, fcfg.in_dim, cells, cells)
    days = torch.randint(16000, 20000, (b, l))
    dated, pad = torch.ones(b, l, dtype=torch.bool), torch.zeros(b, l, dtype=torch.bool)
    with flop_counter() as fc:
        model(feats, days, dated, pad)
    flops = float(fc.get_total_flops())
    rows = []
    for mode in modes:
        with mode_ctx(mode):
            ts, busy = quiet_time_call(lambda: model(feats, days, dated, pad), reps, warmup=0)
            s = summary(ts)
        rows.append(
            {
                "pair": f"fusion {preset} {cells}x{cells} cells, {'+'.join(map(str, dates))} dates",
                "who": "ours",
                "mode": mode,
                "batch": b,
                "gflop_per_batch": flops / 1e9,
                "samples_s": b / s["median_s"],
                "gflops": flops / s["median_s"] / 1e9,
                "gflops_best": flops / s["best_s"] / 1e9,
                "samples_s_best": b / s["best_s"],
                "n": s["n"],
                "foreign_busy_cores": busy,
                "cpu": CPU,
            }
        )
        print(
            table(
                rows[-1:], ["pair", "mode", "samples_s", "gflops", "gflops_best", "n", "foreign_busy_cores"]
            ),
            flush=True,
        )
    return rows


def add_ratios(rows: list[dict[str, Any]], peak: dict[str, float] | None) -> None:
    """% of the dtype's matmul peak, and ours/timm in the same pair and mode (median and best times)."""
    timm_rows = {(r["pair"], r["mode"]): r for r in rows if r.get("who") == "timm"}
    for r in rows:
        if "error" in r:
            continue
        if peak:
            r["pct_peak"] = 100.0 * r["gflops"] / peak[r["mode"].split()[0]]
            r["pct_peak_best"] = 100.0 * r["gflops_best"] / peak[r["mode"].split()[0]]
        t = timm_rows.get((r["pair"], r["mode"]))
        if r["who"] == "ours" and t is not None:
            r["ours_over_timm"] = r["samples_s"] / t["samples_s"]
            r["ours_over_timm_best"] = r["samples_s_best"] / t["samples_s_best"]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny preset, small batch, eager modes: a smoke run")
    ap.add_argument(
        "--large", action="store_true", help=f"ViT-L and the huge SwinV2 at batch 1 and 2 in {LARGE_MODES}"
    )
    ap.add_argument("--modes", default=None, help=f"comma list out of {ALL_MODES}")
    ap.add_argument("--only", default="swin,vit,fusion", help="comma list out of swin, vit, fusion")
    ap.add_argument("--rounds", type=int, default=2, help="alternations ours/timm per mode")
    ap.add_argument("--reps", type=int, default=2, help="timed calls per model per round")
    ap.add_argument(
        "--fusion-reps", type=int, default=1, help="timed fusion calls per mode (about a minute each)"
    )
    ap.add_argument("--fusion-cells", type=int, default=64, help="side of the fused grid (paper: 64)")
    ap.add_argument(
        "--peak-file", default=None, help="a bench/peak.py result of this CPU (default: measure in this run)"
    )
    ap.add_argument("--out", default=None, help="file in bench/results (default encoders[_large].json)")
    return ap.parse_args()


def plan(args: argparse.Namespace) -> list[tuple[str, Callable[[], list[dict[str, Any]]]]]:
    """The parts of the run, in order: (name, job returning rows)."""
    default = LARGE_MODES if args.large else DEFAULT_MODES
    modes = [m.strip() for m in (args.modes or ",".join(default)).split(",")]
    assert set(modes) <= set(ALL_MODES), f"unknown mode in {modes}"
    only = set(args.only.split(","))
    preset, batch, rounds, reps = "base", 8, args.rounds, args.reps
    if args.quick:
        preset, batch, rounds, reps = "tiny", 2, 1, 2
        modes = [m for m in modes if "compile" not in m]
    jobs: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = []
    if args.large:  # ours only, at the batches of single-tile inference
        big = ("tiny", "tiny") if args.quick else ("huge", "large")
        img = 64 if args.quick else 256
        for b in (1, 2):
            if "swin" in only:
                cases = swin_cases(big[0], img, None, b)
                jobs.append((f"swin {big[0]} b{b}", partial(bench_pair, cases, modes, rounds, reps, True)))
            if "vit" in only:
                cases = vit_cases(big[1], b, with_timm=False)
                jobs.append((f"vit {big[1]} b{b}", partial(bench_pair, cases, modes, rounds, reps, True)))
        return jobs
    if "swin" in only:
        img = 64 if args.quick else 256
        jobs.append(
            ("swin", partial(bench_pair, swin_cases(preset, img, TIMM_SWIN, batch), modes, rounds, reps))
        )
    if "vit" in only:
        jobs.append(("vit", partial(bench_pair, vit_cases(preset, batch), modes, rounds, reps)))
    if "fusion" in only:
        cells, dates = (8, (1, 2, 1)) if args.quick else (args.fusion_cells, (1, 20, 10))
        eager = [m for m in modes if m in ("fp32", "bf16")]
        jobs.append(("fusion", partial(bench_fusion, preset, cells, dates, eager, args.fusion_reps)))
    return jobs


def main() -> None:
    args = parse_args()
    setup()
    jobs = plan(args)
    if args.peak_file:
        peak, source = load_peak_file(args.peak_file), f"{args.peak_file} (same CPU)"
    else:
        print("measuring this machine's matmul peak ...", flush=True)
        peak, source = measure_peak(quick=args.quick), "measured in this run"
    print("peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()), flush=True)
    meta = {
        "flops": "FlopCounterMode, 2 per multiply-add",
        "auto_precision": str(resolve_precision("auto")).removeprefix("torch."),
        "matmul_speeds": matmul_speeds(),
    }
    out = args.out or ("encoders_large.json" if args.large else "encoders.json")
    rows: list[dict[str, Any]] = []
    for name, job in jobs:
        try:
            with torch.inference_mode():
                rows += job()
        except Exception as e:  # the models are young: one broken part must not lose the others' numbers
            print(f"{name} failed: {type(e).__name__}: {e}", flush=True)
            rows.append({"pair": name, "error": f"{type(e).__name__}: {e}", "cpu": CPU})
        add_ratios(rows, peak)
        if not args.quick:  # after every part, so that a long run interrupted keeps what it measured
            info = {**machine(), **cpu_identity()}
            save(out, {"machine": info, **meta, "peak": peak, "peak_source": source, "rows": rows})
    if not args.peak_file:  # the box may have been busier at the start: keep the higher peak of the two
        after = measure_peak(quick=args.quick)
        peak = {k: max(v, after.get(k, 0.0)) for k, v in peak.items()}
        source = "measured in this run, before and after the encoders (the higher)"
        add_ratios(rows, peak)
    cols = ["pair", "who", "mode", "samples_s", "gflops", "pct_peak", "ours_over_timm", "gflops_best"]
    print("\n" + table([r for r in rows if "error" not in r], cols + (["peak_mem_mb"] if args.large else [])))
    info = {**machine(), **cpu_identity()}
    print(f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}, {info['date']}; peak {source}")
    print(f"--precision auto here: {meta['auto_precision']}")
    if not args.quick:
        print(
            "wrote", save(out, {"machine": info, **meta, "peak": peak, "peak_source": source, "rows": rows})
        )


if __name__ == "__main__":
    main()
