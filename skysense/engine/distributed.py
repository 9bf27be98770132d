"""Processes and devices of a run: torchrun process groups, DDP / FSDP2 wrapping, ``torch.compile``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the loop runs data parallel (gloo on CPU, NCCL on CUDA), each
rank taking its share of every global batch and only rank 0 writing files. ``ddp`` wraps the task's
step module in one ``DistributedDataParallel`` (a full replica of every state per rank); ``fsdp`` shards
the units a task names with FSDP2 ``fully_shard``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run."""

    rank: int
    world: int
    device: torch.device
    fsdp: bool  # the strategy is fsdp and there is more than one rank

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(strategy: str = "ddp") -> Ranks:
    """Joins the process group when launched by torchrun; picks the device (``cuda:LOCAL_RANK`` or CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return Ranks(rank, world, device, fsdp=world > 1 and strategy == "fsdp")


def exit_distributed() -> None:
    """Leave a torchrun run: a gloo rank can abort in interpreter shutdown, so destroy the process group
    and exit at once (after flushing) instead of returning into it."""
    if dist.is_initialized():
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def wrap_ddp(module: nn.Module, ranks: Ranks) -> nn.Module:
    """``module`` as the run calls it: replicated by DDP with several ranks and no FSDP, else as it is."""
    if ranks.world == 1 or ranks.fsdp:
        return module
    # DDP's one-off notice that find_unused_parameters found unused ones is expected here (e.g. the hr
    # pyramid's unused norms): nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*find_unused_parameters=True was specified in DDP.*")
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None,
        find_unused_parameters=True,  # e.g. the hr pyramid's unused norms, a modality absent from a batch
    )


def fully_shard_units(model: nn.Module, units: Sequence[nn.Module], ignored: set[nn.Parameter]) -> None:
    """FSDP2 ``fully_shard`` of each unit, then of the rest at ``model``'s root, in place.

    Units must be the modules a step calls directly (a module called outside its parent's forward
    needs to be a unit of its own); ``ignored`` parameters stay whole on every rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh, ignored_params=ignored)
    fully_shard(model, mesh=mesh, ignored_params=ignored)
    # Encoders return views (the extra token's rows, pyramid maps): FSDP2 warns that an in-place op on
    # them would skip its hooks. None follows; the FSDP-vs-DDP tests would catch one.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(\w+\) returned a view tensor")


def compile_modules(modules: Iterable[nn.Module], mode: str) -> None:
    """In place: ``torch.compile`` each module with ``mode``. ``nn.Module.compile`` keeps the parameter
    names, so checkpoints are those of an eager run."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile={mode!r}: use one of {', '.join(COMPILE_MODES)}, or '' for eager")
    for module in modules:
        # static shapes: each input size compiles once. With dynamic=None the second view size
        # recompiled the Swin symbolically, > 15 minutes on a 2-core CPU
        module.compile(mode=mode, dynamic=False)


@torch.no_grad()
def average_(tensors: Sequence[Tensor], world: int) -> None:
    """In place: the mean of each tensor over the ranks."""
    for x in tensors:
        dist.all_reduce(x)
        x.div_(world)
