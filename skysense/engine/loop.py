"""The training loop: one optimiser step after another, for any task (pre-training, fine-tuning).

One step = the task's forward under optional bf16 autocast, backward, gradient clipping, a stop at
the first non-finite gradient norm (before the update), AdamW (linear warm-up then cosine lr, cosine
weight decay), then the task's own update (e.g. the EMA teacher). Every step goes to ``metrics.csv``;
``last.ckpt`` is written atomically every ``ckpt_every`` steps; a resumed run continues exactly.
A task that validates (``validate`` returns metrics) is scored every ``eval_every`` steps and at the
end; the best score of its ``monitor`` metric so far is kept as ``best.ckpt`` (same format as
``last.ckpt``) and recorded in ``best.json``.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from skysense.data.collate import collate
from skysense.engine.config import STRATEGIES, EngineConfig
from skysense.engine.distributed import (
    COMPILE_MODES,
    Ranks,
    average_,
    compile_modules,
    setup_distributed,
    wrap_ddp,
)
from skysense.engine.metrics import MetricsLog
from skysense.engine.schedules import lr_at, wd_at
from skysense.engine.state import CKPT, RunState, restore, write_checkpoint
from skysense.files import write_json


@dataclass
class StepOutput:
    losses: dict[str, Tensor]  # "loss" is backpropagated; every entry is logged (mean over ranks)
    logs: dict[str, float]  # monitors of this rank's batch, logged as they are


class Task(Protocol):
    """What the loop asks of a task. ``setup`` builds its modules on ``ranks.device`` (sharded under
    FSDP); ``modules`` names what a checkpoint holds; ``trained`` is the module the optimiser updates
    (one of ``modules``); ``step_module(batch, **kwargs)`` returns ``(losses, logs)`` and is what DDP
    replicates, so it must hold every trained parameter the step uses."""

    name: str
    trained: nn.Module
    step_module: nn.Module

    def setup(self, ranks: Ranks, fresh: bool) -> None: ...
    def modules(self) -> Mapping[str, nn.Module]: ...
    def param_groups(self) -> list[dict[str, Any]]: ...
    def compiled(self) -> Sequence[nn.Module]: ...
    def dataset(self) -> Sequence[dict[str, Any]]: ...
    def step_args(self, step: int, gen: torch.Generator) -> tuple[dict[str, Any], dict[str, float]]: ...
    def after_forward(self, ranks: Ranks) -> None: ...
    def grad_monitors(self) -> dict[str, float]: ...
    def after_update(self, step: int) -> None: ...
    def validate(self) -> dict[str, float] | None: ...  # None: the task has no validation
    def meta(self) -> dict[str, Any]: ...  # what checkpoints record of the task ({} = nothing)


BEST = "best.ckpt"
# what a run writes that a later run would read back (resume, best score so far); overwrite removes them all
RUN_FILES = (CKPT, "metrics.csv", BEST, "best.json", "validation.csv")


class PlainHooks:
    """The per-step hooks of :class:`Task` for a task without bookkeeping of its own (fine-tuning,
    detection): the step gets the run's generator, nothing happens between forward and update."""

    def step_args(self, step: int, gen: torch.Generator) -> tuple[dict[str, Any], dict[str, float]]:
        return {"gen": gen}, {}

    def after_forward(self, ranks: Ranks) -> None:
        pass

    def grad_monitors(self) -> dict[str, float]:
        return {}

    def after_update(self, step: int) -> None:
        pass


def fit(task: Task, cfg: EngineConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``task`` for ``cfg.steps`` (see module doc). Returns ``losses`` (this call's per-step total
    losses, mean over ranks), ``step`` (steps done) and ``samples`` (the dataset's size)."""
    ranks = _start(cfg)
    out_dir, ckpt = Path(cfg.out_dir), Path(cfg.out_dir) / CKPT
    _claim_out_dir(out_dir, resume, overwrite, ranks.main)
    random.seed(cfg.seed + ranks.rank)
    np.random.seed(cfg.seed + ranks.rank)
    task.setup(ranks, fresh=not (resume and ckpt.exists()))
    # fused AdamW: one kernel per parameter group instead of a Python loop of ~7 calls per tensor;
    # FSDP2's DTensor shards keep the default
    opt = torch.optim.AdamW(task.param_groups(), lr=cfg.lr, betas=(0.9, 0.999), fused=not ranks.fsdp)
    torch.manual_seed(cfg.seed + ranks.rank)  # drop-path differs across ranks, like their data
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + ranks.rank)  # augmentations, on the CPU
    run = RunState(cfg, task.modules(), task.trained, opt, gen, ranks.rank, ranks.world)
    start = restore(ckpt, run) if resume and ckpt.exists() else 0
    if cfg.compile:
        compile_modules(task.compiled(), cfg.compile)
    forward = wrap_ddp(task.step_module, ranks)
    data = task.dataset()
    log = MetricsLog(out_dir, start, cfg.steps, ranks.main, cfg.progress, task.name)
    stop = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    autocast = torch.autocast(ranks.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    losses: list[float] = []
    step = start
    for step, batch in batches(cfg, data, start, stop, ranks):
        t0 = time.perf_counter()
        lr, wd = set_hyperparameters(opt, step, cfg)
        kwargs, scheduled = task.step_args(step, gen)
        task.trained.train()
        with autocast:
            out = StepOutput(*forward(to_device(batch, ranks.device), **kwargs))
        task.after_forward(ranks)
        opt.zero_grad(set_to_none=True)
        out.losses["loss"].backward()
        part_norms = {} if ranks.fsdp else task.grad_monitors()
        grad_norm = clip_gradients(task.trained, cfg.clip_grad)
        _check_finite(grad_norm, out.losses, step, start, cfg, ckpt)
        opt.step()
        task.after_update(step)
        row: dict[str, Any] = {
            "step": step + 1,
            "lr": lr,
            "wd": wd,
            **scheduled,
            **mean_losses(out.losses, ranks),
        }
        row.update(grad_norm=grad_norm, **part_norms, **out.logs, time=time.perf_counter() - t0)
        losses.append(row["loss"])
        log.log(row, postfix=(step + 1) % cfg.log_every == 0)
        step += 1
        if cfg.ckpt_every and (step % cfg.ckpt_every == 0 or step == stop):
            write_checkpoint(ckpt, run, step, task.meta())
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            _validate(task, run, step, log)
    log.close(
        out_dir / "loss_curve.png", title=f"{task.name}, {cfg.steps} steps of {cfg.batch_size}: {cfg.out_dir}"
    )
    return {"losses": losses, "step": step, "samples": len(data)}


def _validate(task: Task, run: RunState, step: int, log: MetricsLog) -> None:
    """Score the task; keep ``best.ckpt`` when its ``monitor`` metric beats the best so far."""
    cfg = run.cfg
    scores = task.validate()
    if scores is None:
        return
    out_dir = Path(cfg.out_dir)
    log.log_validation(step, scores)
    best_path = out_dir / "best.json"
    best = json.loads(best_path.read_text()) if best_path.exists() else None
    metric = cfg.monitor or next(iter(scores))
    if metric not in scores:
        raise ValueError(f"monitor={metric!r}: the task reports {sorted(scores)}; monitor one of those")
    value = scores[metric]
    if best is None or value > best["value"]:
        write_checkpoint(out_dir / BEST, run, step, task.meta())
        if run.rank == 0:
            record = {"metric": metric, "value": value, "step": step, "scores": scores}
            write_json(best_path, record)


def _start(cfg: EngineConfig) -> Ranks:
    """Checks that need no process group, then the process group; nothing is written before."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"strategy {cfg.strategy!r}: use ddp or fsdp")
    if cfg.compile and cfg.compile not in COMPILE_MODES:
        raise ValueError(f"compile={cfg.compile!r}: use one of {', '.join(COMPILE_MODES)}, or '' for eager")
    ranks = setup_distributed(cfg.strategy)
    if cfg.batch_size % ranks.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {ranks.world} ranks")
    return ranks


def _claim_out_dir(out_dir: Path, resume: bool, overwrite: bool, main: bool) -> None:
    """A run writes into a folder of its own: one holding another run's outputs is refused unless the
    call resumes it or says to overwrite it."""
    earlier = [n for n in RUN_FILES if (out_dir / n).exists()]
    if earlier and not (resume or overwrite):
        raise FileExistsError(
            f"{out_dir} holds an earlier run ({', '.join(earlier)}): pass --resume to continue it, "
            "--overwrite to replace it, or set another out_dir"
        )
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            for name in earlier:
                (out_dir / name).unlink()


def set_hyperparameters(opt: torch.optim.Optimizer, step: int, cfg: EngineConfig) -> tuple[float, float]:
    """lr and weight decay of ``step`` into every group (``lr_scale`` per group, none on ``no_decay``)."""
    lr, wd = lr_at(step, cfg), wd_at(step, cfg)
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if group.get("name") != "no_decay":
            group["weight_decay"] = wd
    return lr, wd


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (0 = off); returns it before clipping (every rank
    gets the same global value, also under FSDP)."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def _check_finite(
    norm: float, losses: dict[str, Tensor], step: int, start: int, cfg: EngineConfig, ckpt: Path
) -> None:
    if math.isfinite(norm):  # the same global norm on every rank: all of them stop here
        return
    terms = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in losses.items())
    saved = max(start, step - step % cfg.ckpt_every) if cfg.ckpt_every else start
    last = f"{ckpt} (step {saved})" if saved else "none written yet"
    raise FloatingPointError(
        f"step {step + 1}: the gradient norm is {norm} ({terms}): training diverged or an input "
        f"holds NaN/inf. Nothing was updated; the last checkpoint, {last}, is untouched. Resume from "
        "it with a lower lr or clip_grad > 0, or check the data (skysense data inspect)"
    )


def mean_losses(losses: dict[str, Tensor], ranks: Ranks) -> dict[str, float]:
    """Each loss as a float, averaged over the ranks."""
    logged = torch.stack([v.detach().float() for v in losses.values()])
    if ranks.world > 1:
        average_([logged], ranks.world)
    return {k: float(v) for k, v in zip(losses, logged)}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------- data order


@functools.lru_cache(maxsize=4)
def _perm(seed: int, epoch: int, n: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def batch_indices(
    step: int, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1
) -> list[int]:
    """Indices of this rank's share of global batch ``step``: the samples ``step * B ... (step+1) * B - 1``
    of the stream of per-epoch permutations (a function of ``(seed, epoch)``), every ``world``-th one."""
    out = []
    for k in range(step * global_batch + rank, (step + 1) * global_batch, world):
        epoch, pos = divmod(k, n)
        out.append(_perm(seed, epoch, n)[pos])
    return out


def batches(
    cfg: EngineConfig, data: Sequence[dict[str, Any]], start: int, stop: int, ranks: Ranks
) -> Iterator[tuple[int, dict[str, Any]]]:
    for step in range(start, stop):
        idx = batch_indices(step, len(data), cfg.batch_size, cfg.seed, ranks.rank, ranks.world)
        yield step, collate([data[i] for i in idx])
