"""The pre-training step's bookkeeping (AdamW, EMA teacher, per-part gradient norms), old vs new form.

Each part of a step that is not the model itself runs over every parameter tensor (172 for the `tiny`
student of ``configs/pretrain/aid_hr_cpu.yaml``). A per-tensor Python loop costs a few kernel calls per
tensor, which on a GPU means waiting on dispatch (BENCHMARKS.md, "Pre-training on one GPU"). The trainer
now uses fused AdamW and ``torch._foreach_*`` calls; this times both forms side by side on this machine,
interleaved, and checks that they agree: the EMA bit for bit, AdamW after 20 steps to float rounding.

    .venv/bin/python -m bench.step_bookkeeping [--config configs/pretrain/aid_hr_cpu.yaml] [--reps 30]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench.common import machine, save, setup, summary, table, time_call  # noqa: E402
from skysense.pretrain.cli import load_config  # noqa: E402
from skysense.pretrain.step import build_pretrain  # noqa: E402
from skysense.pretrain.teacher import ema_update_  # noqa: E402
from skysense.pretrain.trainer import (  # noqa: E402
    TrainConfig,
    grad_norms_by_part,
    initial_encoder,
    param_groups,
)


@torch.no_grad()
def ema_loop_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """The former ``ema_update_``: two calls per tensor."""
    s_params = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        p.mul_(momentum).add_(s_params[name].detach(), alpha=1 - momentum)


def norms_loop(student: nn.Module) -> float:
    """The former per-tensor gradient norm (one part: the whole student)."""
    norms = [p.grad.float().norm() for p in student.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/pretrain/aid_hr_cpu.yaml")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    setup()
    cfg = cast(TrainConfig, load_config(args.config, []))
    student, teacher, _ = build_pretrain(initial_encoder(cfg), cfg.pretrain)
    params = [p for p in student.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)

    # agreement first, on copies: 20 AdamW steps each way, and one EMA update each way
    finals = []
    forms: list[dict[str, Any]] = [{"foreach": False}, {"fused": True}]
    for kw in forms:
        s = copy.deepcopy(student)
        for p, q in zip(s.parameters(), student.parameters()):
            p.grad = None if q.grad is None else q.grad.clone()
        opt = torch.optim.AdamW(param_groups(s), lr=1e-3, **kw)
        for _ in range(20):
            opt.step()
        finals.append(torch.cat([p.detach().flatten() for p in s.parameters()]))
    adamw_diff = float((finals[0] - finals[1]).abs().max())
    t_a, t_b = copy.deepcopy(teacher), copy.deepcopy(teacher)
    ema_loop_(t_a, student, 0.99)
    ema_update_(t_b, student, 0.99)
    ema_equal = all(torch.equal(a, b) for a, b in zip(t_a.parameters(), t_b.parameters()))

    opt_loop = torch.optim.AdamW(param_groups(student), lr=1e-4, foreach=False)
    opt_fused = torch.optim.AdamW(param_groups(student), lr=1e-4, fused=True)
    pairs = {
        "AdamW step": (opt_loop.step, opt_fused.step),
        "EMA update": (
            lambda: ema_loop_(teacher, student, 0.99),
            lambda: ema_update_(teacher, student, 0.99),
        ),
        "gradient norms": (lambda: norms_loop(student), lambda: grad_norms_by_part(student)),
    }
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pairs}
    for _ in range(3):  # interleaved rounds: a busy moment hits both forms
        for name, (old, new) in pairs.items():
            times[name][0].extend(time_call(old, args.reps // 3))
            times[name][1].extend(time_call(new, args.reps // 3))
    rows: list[dict[str, Any]] = []
    for name, (t_old, t_new) in times.items():
        o, n = summary(t_old)["median_s"] * 1e3, summary(t_new)["median_s"] * 1e3
        rows.append({"part": name, "per-tensor loop ms": o, "fused / foreach ms": n, "ratio": o / n})
    total = {k: sum(r[k] for r in rows) for k in ("per-tensor loop ms", "fused / foreach ms")}
    rows.append(
        {"part": "all three", **total, "ratio": total["per-tensor loop ms"] / total["fused / foreach ms"]}
    )
    print(f"{args.config}: {len(params)} parameter tensors, {sum(p.numel() for p in params):,} values")
    print(table(rows, ["part", "per-tensor loop ms", "fused / foreach ms", "ratio"]))
    print(f"EMA identical: {ema_equal}; AdamW after 20 steps, max |loop - fused| = {adamw_diff:.2e}")
    path = save(
        "step_bookkeeping.json",
        {
            "machine": machine(),
            "config": args.config,
            "rows": rows,
            "ema_identical": ema_equal,
            "adamw_max_abs_diff_20_steps": adamw_diff,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
