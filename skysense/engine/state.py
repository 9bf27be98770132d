"""Run state: atomic checkpoints that resume exactly, under any strategy and number of processes.

A checkpoint is one ``torch.save`` of plain tensors and containers (read back with
``weights_only=True``): the task's modules by name (whole state dicts, also under FSDP), the optimiser
state keyed by parameter name (DCP's full optimiser state dict, whatever the strategy), the step, every
random state of every rank (torch, numpy, python ``random``, the task's generator) and the run's config.
Resume is exact because the data order is a function of ``(seed, epoch)`` alone and the position in
it is the step (:func:`skysense.engine.loop.batch_indices`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule

from skysense.engine.config import config_diff
from skysense.files import DamagedCheckpointError, UnsafeCheckpointError, safe_torch_load, torch_save

CKPT = "last.ckpt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then ``os.replace``: never a half-written file."""
    torch_save(state, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of tensors and plain containers (``weights_only``: no code runs; not memory-mapped,
    since the optimiser state is updated in place on resume); a clear error for a missing or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ck = safe_torch_load(path, mmap=False)
    except UnsafeCheckpointError:
        raise ValueError(
            f"{path}: refused unread: it holds Python objects beyond tensors and plain containers, and "
            "loading it could run code. Trainer checkpoints never do: is it another program's file?"
        ) from None
    except DamagedCheckpointError as e:
        cause = str(e).partition("(")[2].partition(")")[0]
        raise ValueError(
            f"{path}: not a readable checkpoint ({cause}). The trainer replaces its checkpoints "
            "atomically, so the file was damaged or swapped after writing: restore a copy, or delete it "
            "to start the run afresh"
        ) from None
    if not isinstance(ck, dict):
        raise ValueError(f"{path}: not a trainer checkpoint (a {type(ck).__name__}, not a dict)")
    return ck


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """Every random state of this process as plain tensors and containers."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "views": gen.get_state(),
        "python": [version, list(mt), gauss],
        "numpy": [
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["views"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def full_model_state(model: nn.Module) -> dict[str, Any]:
    """Whole (unsharded) ``state_dict``: for an FSDP2 module the DCP full state dict (a collective: every
    rank calls it), so checkpoints of every strategy hold the same keys."""
    if not isinstance(model, FSDPModule):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _load_model_state(model: nn.Module, state: Mapping[str, Any]) -> None:
    if not isinstance(model, FSDPModule):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True))


@dataclass
class RunState:
    """What a checkpoint holds of a run (its config, the task's modules by name, the optimiser of the
    trained module, the augmentation generator) and where this process stands in it."""

    cfg: Any
    modules: Mapping[str, nn.Module]
    trained: nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    rank: int = 0
    world: int = 1


def write_checkpoint(path: Path, run: RunState, step: int, meta: dict[str, Any] | None = None) -> None:
    """Gather the run's state on rank 0 and write it atomically; every rank returns once it is in place.
    ``meta``: what the task records of itself (task, classes, head config, input contract), if anything."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    models = {name: full_model_state(m) for name, m in run.modules.items()}  # collective under FSDP
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    optim = get_optimizer_state_dict(
        run.trained, run.opt, options=full
    )  # keyed by name, whatever the strategy
    rngs = [rng_state(run.gen)]
    if run.world > 1:
        gathered: list[Any] = [None] * run.world
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if run.rank == 0:
        state = {
            **models,
            "optimizer": optim,
            "optimizer_format": "fqn",
            "step": step,
            "data": {"seed": run.cfg.seed, "position": step * run.cfg.batch_size, "world": run.world},
            "rng": rngs,
            "config": dataclasses.asdict(run.cfg),
        }
        if meta:
            state["meta"] = meta
        save_checkpoint(path, state)
    if run.world > 1:
        # every rank leaves once the file is in place: a resume in the same processes (a second fit()
        # call) would otherwise let rank 1 read the previous checkpoint and run steps rank 0 skips
        dist.barrier()


def restore(path: Path, run: RunState) -> int:
    """Load a checkpoint written by any strategy and number of ranks into the run; returns its step.
    A checkpoint of another config is refused with the fields that differ."""
    ck = load_checkpoint(path)
    try:
        for name, module in run.modules.items():
            _load_model_state(module, ck[name])
        _load_optimizer(ck, run.trained, run.opt)
    except (RuntimeError, KeyError) as e:  # mis-shaped, missing or unexpected tensors
        diff = config_diff(ck.get("config", {}), dataclasses.asdict(run.cfg))
        raise ValueError(
            f"{path} does not fit this run's model ({' '.join(str(e).split()[:40])}). Its config "
            f"differs in: {'; '.join(diff) or 'nothing recorded'}. Resume with that run's config, "
            "or set another out_dir to start afresh"
        ) from None
    rngs = ck["rng"]
    if len(rngs) == run.world:
        set_rng_state(rngs[run.rank], run.gen)
    elif run.rank == 0:
        print(f"resume: checkpoint from {len(rngs)} rank(s), now {run.world}: random states restart")
    return int(ck["step"])


def _load_optimizer(ck: dict[str, Any], trained: nn.Module, opt: torch.optim.Optimizer) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if ck.get("optimizer_format", "index") == "index":  # older checkpoints: opt.state_dict(), by position
        if isinstance(trained, FSDPModule):
            raise ValueError(
                "this checkpoint's optimiser state is keyed by position (an older DDP or single-process "
                "run): resume it with strategy=ddp, or start an FSDP run from its weights (init_from=PATH)"
            )
        opt.load_state_dict(ck["optimizer"])
        return
    # not strict: AdamW has no state for parameters that never had a gradient (the fusion of an hr-only
    # run, the norms of hr stages no loss reads), so the checkpoint has none; the model loads stay strict
    lenient = StateDictOptions(full_state_dict=True, strict=False)
    set_optimizer_state_dict(trained, opt, ck["optimizer"], options=lenient)
