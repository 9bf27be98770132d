"""Pre-training of SkySense (paper Sec. 3.2 training) as a task of the engine (:mod:`skysense.engine`).

The task: a student (encoder + projection heads), its EMA teacher and the teacher centres; one step
is :func:`~skysense.pretrain.step.pretrain_step` (two views, MGCL + CMA, GCPL in place); after each
optimiser step the teacher moves by the cosine EMA momentum. AdamW has no weight decay on norms,
biases, tokens and prototypes. Also per step: the teacher temperature (DINO's linear warm-up), the
pixel/object loss weights (an optional linear ramp from 0) and the gradient norm of every part of
the model (not under FSDP). A new run can start from another run's student weights (``init_from``,
:func:`load_init`): unlike resume, the step, optimiser, centres and random states start afresh.

Distributed (the engine's ``ddp``/``fsdp``): DDP replicates the whole student step, heads included;
FSDP2 shards student and teacher with the same units (:meth:`PretrainTask.shard`). ``step.py`` has no
all-reduce hook, so the teacher centres and the GCPL prototypes, updated in place from each rank's
batch, are averaged over ranks after every step (for the centres this equals the global-batch update;
for the prototypes a region seen by one rank only moves by 1/world of its local step); the collapse
monitors are those of rank 0's batch.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule

from skysense.checkpoint import LoadReport, load_state_checked
from skysense.config import SkySenseConfig, check_ranges, from_dict, preset_with
from skysense.data.sources import DataConfig, build_dataset
from skysense.engine.config import EngineConfig
from skysense.engine.distributed import Ranks, average_, fully_shard_units
from skysense.engine.loop import fit
from skysense.engine.schedules import linear_ramp
from skysense.engine.state import CKPT, full_model_state, load_checkpoint
from skysense.models.skysense import SkySense, build_model
from skysense.pretrain.losses import LossConfig
from skysense.pretrain.step import Centers, PretrainConfig, Student, build_pretrain, pretrain_step
from skysense.pretrain.teacher import cosine_momentum, ema_update_

__all__ = ["CKPT", "DataConfig", "TrainConfig", "from_dict", "load_checkpoint", "load_encoder", "train"]

NO_DECAY = ("token", "pos_embed", "logit_scale", "prototypes")


@dataclass
class TrainConfig(EngineConfig):
    """Everything of one pre-training run; the YAML files in ``configs/pretrain/`` set these fields."""

    preset: str = "tiny"
    model: dict[str, Any] = field(
        default_factory=dict
    )  # preset overrides, e.g. {s2: {in_chans: 1}, hr: null}
    out_dir: str = "runs/pretrain"
    ema_momentum: float = 0.996  # cosine to 1 over the run
    teacher_temp_start: float = 0.04  # linear warm-up to pretrain.loss.teacher_temp (DINO) ...
    teacher_temp_warmup_steps: int = 0  # ... over these steps (0 = constant)
    # [ours] the pixel and object weights ramp linearly from 0 to pretrain.loss.weights over these
    # steps (0 = constant), so the image level shapes the pooled features first (BENCHMARKS.md, AID probe)
    dense_warmup_steps: int = 0
    init_seed: int | None = None  # seed of the initial weights alone (None = seed): separates init from data
    init_from: str = ""  # a checkpoint whose student weights start a NEW run (load_init); "" = none
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least = {"teacher_temp_warmup_steps": 0, "dense_warmup_steps": 0}
        check_ranges("TrainConfig ", self, at_least=at_least, within={"ema_momentum": (0, 1)})

    @property
    def weights_seed(self) -> int:
        """The seed of the initial weights: ``init_seed``, else ``seed``."""
        return self.seed if self.init_seed is None else self.init_seed


# ----------------------------------------------------------------------------- schedules


def teacher_temp_at(step: int, cfg: TrainConfig) -> float:
    """DINO's teacher temperature warm-up: linear from ``teacher_temp_start`` to ``loss.teacher_temp``."""
    final = cfg.pretrain.loss.teacher_temp
    return linear_ramp(step, cfg.teacher_temp_warmup_steps, cfg.teacher_temp_start, final)


def dense_ramp_at(step: int, cfg: TrainConfig) -> float:
    """The factor on the pixel and object weights: linear from 0 to 1 over ``dense_warmup_steps``."""
    return linear_ramp(step, cfg.dense_warmup_steps, 0.0, 1.0)


def loss_at(step: int, cfg: TrainConfig) -> LossConfig:
    """The loss config of ``step``: teacher temperature and pixel/object weights on their schedules."""
    loss, ramp = cfg.pretrain.loss, dense_ramp_at(step, cfg)
    weights = (
        {**loss.weights, **{g: ramp * loss.weight(g) for g in ("pix", "obj")}} if ramp < 1 else loss.weights
    )
    return dataclasses.replace(loss, teacher_temp=teacher_temp_at(step, cfg), weights=weights)


# ----------------------------------------------------------------------------- the model


def model_config(cfg: TrainConfig) -> SkySenseConfig:
    """The preset with ``cfg.model`` merged in (one level deep); its encoders must be the modalities of
    ``cfg.data`` (an encoder without data would get no gradient; data without an encoder is unread)."""
    mcfg = preset_with(cfg.preset, cfg.model)
    if set(mcfg.modalities) != set(cfg.data.modalities):
        drop = [m for m in mcfg.modalities if m not in cfg.data.modalities]
        add = [m for m in cfg.data.modalities if m not in mcfg.modalities]
        fixes = [f"model.{m}: null" for m in drop] + [f"remove {m} from data.modalities" for m in add]
        raise ValueError(
            f"the model has encoders {list(mcfg.modalities)} but data.modalities is "
            f"{list(cfg.data.modalities)}: set {', '.join(fixes)} (or change data.modalities to match)"
        )
    return mcfg


def initial_encoder(cfg: TrainConfig, grad_checkpointing: bool = False) -> SkySense:
    """The encoder a run of ``cfg`` starts from (seeded by ``cfg.weights_seed``): the random-init baseline."""
    torch.manual_seed(cfg.weights_seed)
    return build_model(model_config(cfg), grad_checkpointing=grad_checkpointing)


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """AdamW groups: ``decay`` (matrices) and ``no_decay`` (norms, biases, tokens, prototypes)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(k in name for k in NO_DECAY):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "name": "decay"}, {"params": no_decay, "name": "no_decay", "weight_decay": 0.0}]


@torch.no_grad()
def grad_norms_by_part(student: Student) -> dict[str, float]:
    """``grad/<part>``: gradient norm (before clipping) of each encoder, the alignment heads, the fusion,
    the geo-context module and the projection heads; 0 where nothing reached the part."""
    bb = student.backbone
    parts: dict[str, nn.Module | None] = {f"enc_{m}": e for m, e in bb.encoders.items()}
    parts.update(align=bb.align, fusion=bb.fusion, geo=bb.geo, heads=student.heads)
    out = {}
    for name, part in parts.items():
        if part is None:
            continue
        grads = [p.grad.float() for p in part.parameters() if p.grad is not None]
        out[f"grad/{name}"] = float(torch.stack(torch._foreach_norm(grads)).norm()) if grads else 0.0
    return out


def load_init(path: str | Path, student: Student, teacher: Student) -> None:
    """Start from the ``student`` weights of a checkpoint (a run's ``last.ckpt``, or any
    ``torch.save`` of ``{"student": state_dict}``); the teacher starts as their copy. Unlike resume,
    step, optimiser, centres and random states start afresh: a new run (new data, schedule, seed)."""
    try:
        ck = load_checkpoint(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"init_from={str(path)!r}: no such file") from None
    except ValueError as e:  # a corrupt file or a pickle that weights_only refuses
        raise ValueError(f"init_from={str(path)!r} is not a readable checkpoint: {e}") from None
    if "student" not in ck:
        raise ValueError(
            f"init_from={str(path)!r}: expected a trainer checkpoint with a 'student' state dict"
        )
    try:  # the library's checked load: unknown, missing and mis-shaped tensors are errors
        load_state_checked(student, ck["student"], LoadReport())
    except ValueError as e:
        raise ValueError(
            f"init_from={str(path)!r} was written for another model or heads config ({e}): "
            "use the same preset, model overrides and pretrain.heads as that run"
        ) from None
    teacher.load_state_dict(student.state_dict())


# ----------------------------------------------------------------------------- the task


class StudentStep(nn.Module):
    """The whole student side of a step as one forward, so DDP sees every parameter use (heads too).
    Teacher, centres and the step's config are arguments, not submodules: DDP leaves them alone."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student

    def forward(
        self,
        batch: dict[str, Any],
        teacher: Student,
        centers: Centers,
        cfg: PretrainConfig,
        gen: torch.Generator,
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        out = pretrain_step(self.student, teacher, centers, batch, cfg, gen)
        return out.losses, out.monitors


class PretrainTask:
    """SkySense pre-training for :func:`skysense.engine.fit` (see the module doc)."""

    name = "pretrain"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def setup(self, ranks: Ranks, fresh: bool) -> None:
        cfg = self.cfg
        model = initial_encoder(cfg, cfg.grad_checkpointing)  # the same initial weights on every rank
        self.student, self.teacher, self.centers = build_pretrain(model, cfg.pretrain)
        if cfg.init_from and fresh:
            load_init(cfg.init_from, self.student, self.teacher)
        for module in (self.student, self.teacher, self.centers):
            module.to(ranks.device)
        if ranks.fsdp:
            self.shard()
        self.trained: nn.Module = self.student
        self.step_module: nn.Module = StudentStep(self.student)

    def shard(self) -> None:
        """FSDP2 of student and teacher with the same units, so the EMA pairs local shards: each encoder,
        alignment head, the fusion, the geo query and every projection head (the modules the step calls
        directly), then the rest at the root. With GCPL on (prototypes frozen to gradients, moved in
        place) the geo prototypes stay whole on every rank; the post-step all-reduce keeps them equal."""
        geo = self.student.backbone.geo
        whole = geo is not None and not geo.prototypes.requires_grad
        for model in (self.student, self.teacher):
            bb, mgeo = model.backbone, model.backbone.geo
            units = [*bb.encoders.values(), *bb.align.values(), bb.fusion, *model.heads.heads.values()]
            if mgeo is not None:
                units.append(mgeo.query)
            if any(True for _ in model.heads.cma.parameters()):
                units.append(model.heads.cma)
            fully_shard_units(model, units, {mgeo.prototypes} if mgeo is not None and whole else set())
        # FSDP2 keeps a root's own parameters gathered after forward, for a backward the teacher never
        # runs: reshard them after each forward, or the EMA pairs whole teacher tensors with student
        # shards (e.g. the geo prototypes when GCPL is off and they are not kept whole)
        typing.cast(FSDPModule, self.teacher).set_reshard_after_forward(True, recurse=False)

    def modules(self) -> Mapping[str, nn.Module]:
        return {"student": self.student, "teacher": self.teacher, "centers": self.centers}

    def param_groups(self) -> list[dict[str, Any]]:
        return param_groups(self.student)

    def compiled(self) -> Sequence[nn.Module]:
        """The encoders and the fusion of student and teacher: the losses, views and Sinkhorn-Knopp
        stay eager (small, and data-dependent in shape)."""
        return [
            m
            for net in (self.student, self.teacher)
            for m in (*net.backbone.encoders.values(), net.backbone.fusion)
        ]

    def dataset(self) -> Sequence[dict[str, Any]]:
        return build_dataset(self.cfg.data, self.cfg.seed)

    def step_args(self, step: int, gen: torch.Generator) -> tuple[dict[str, Any], dict[str, float]]:
        cfg, loss = self.cfg, loss_at(step, self.cfg)
        kwargs = {"teacher": self.teacher, "centers": self.centers, "gen": gen}
        kwargs["cfg"] = dataclasses.replace(cfg.pretrain, loss=loss)
        momentum = cosine_momentum(step, cfg.steps, cfg.ema_momentum)
        return kwargs, {
            "momentum": momentum,
            "teacher_temp": loss.teacher_temp,
            "dense_ramp": dense_ramp_at(step, cfg),
        }

    def after_forward(self, ranks: Ranks) -> None:
        if ranks.world > 1:  # in-place updates from local batches -> the same on every rank
            geo = self.student.backbone.geo
            average_(
                [*self.centers.buffers(), *([geo.prototypes.data] if geo is not None else [])], ranks.world
            )

    def grad_monitors(self) -> dict[str, float]:
        return grad_norms_by_part(self.student)

    def after_update(self, step: int) -> None:
        ema_update_(self.teacher, self.student, cosine_momentum(step, self.cfg.steps, self.cfg.ema_momentum))

    def validate(self) -> None:  # pre-training is judged by probes afterwards (bench/linear_probe.py)
        return None

    def meta(self) -> dict[str, Any]:
        return {}


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Pre-train (see module doc); returns ``losses`` (this call's per-step total losses, global mean),
    ``step`` (steps done), ``teacher`` (its whole state dict, for checks across ranks) and ``samples``
    (the dataset's size). ``resume``: continue from ``out_dir/last.ckpt``; ``overwrite``: replace an
    earlier run's outputs in ``out_dir`` (refused otherwise)."""
    task = PretrainTask(cfg)
    result = fit(task, cfg, resume=resume, overwrite=overwrite)
    return {**result, "teacher": full_model_state(task.teacher)}


def load_encoder(ckpt: str | Path | dict[str, Any], which: str = "teacher") -> SkySense:
    """The pre-trained encoder (``teacher``, as DINO evaluates, or ``student``) of a run's checkpoint:
    its path, or the dict ``load_checkpoint`` already read (to read a large file once)."""
    if which not in ("teacher", "student"):
        raise ValueError(f"which={which!r}: use 'teacher' or 'student'")
    ck = ckpt if isinstance(ckpt, dict) else load_checkpoint(ckpt)
    cfg = from_dict(TrainConfig, ck["config"])
    model = build_model(model_config(cfg))
    prefix = "backbone."
    state = {k[len(prefix) :]: v for k, v in ck[which].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    return model.eval()
