"""The pre-training loop of SkySense (paper Sec. 3.2 training): AdamW, schedules, EMA teacher, checkpoints.

One optimiser step = :func:`~skysense.pretrain.step.pretrain_step` under optional bf16 autocast,
backward, gradient clipping, AdamW (linear warm-up then cosine lr, cosine weight decay, none on
norms, biases, tokens and prototypes), then the EMA teacher update with the cosine momentum.
Every step goes to ``metrics.csv`` (losses, lr, wd, momentum, gradient norm, collapse monitors);
``loss_curve.png`` is drawn at the end; TensorBoard is written only where it imports.

Resume is exact: the data order is a function of ``(seed, epoch)`` alone, the position in it is the
step, and the checkpoint holds every random state (torch, numpy, python ``random``, the view
generator, per rank). Checkpoints hold plain tensors and containers only (``torch.load`` with
``weights_only=True``) and are replaced atomically (temporary file + ``os.replace``).
A new run can start from another run's student weights (``init_from``, :func:`load_init`): unlike
resume, the step, optimiser, centres and random states start afresh.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the loop runs data parallel (gloo on CPU, NCCL
on CUDA), each rank taking its share of every global batch, only rank 0 writing files. ``strategy``:
``ddp`` wraps the whole student step in one ``DistributedDataParallel`` forward (a full replica of
student, teacher and AdamW state per rank); ``fsdp`` shards them with FSDP2 ``fully_shard`` (see
:func:`shard_`), the path for ``huge`` on GPUs, with checkpoints gathered to full state dicts so the
model weights of both strategies are interchangeable. ``step.py`` has no all-reduce hook, so the
teacher centres and the GCPL prototypes, updated in place from each rank's batch, are averaged over
ranks after every step (for the centres this equals the global-batch update; for the prototypes a
region seen by one rank only moves by 1/world of its local step); the collapse monitors are those
of rank 0's batch.

Also per step: the teacher temperature (DINO's linear warm-up, :func:`teacher_temp_at`), the
pixel/object loss weights (an optional linear ramp from 0, :func:`loss_at`) and the gradient norm
of every part of the model (:func:`grad_norms_by_part`, not under FSDP).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import math
import os
import random
import time
import typing
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from skysense.checkpoint import LoadReport, load_state_checked
from skysense.config import MODALITIES, SkySenseConfig, check_ranges, get_preset
from skysense.data.collate import collate
from skysense.data.root import data_root as default_data_root
from skysense.models.skysense import SkySense, build_model
from skysense.pretrain.losses import LossConfig
from skysense.pretrain.step import Centers, PretrainConfig, Student, build_pretrain, pretrain_step
from skysense.pretrain.teacher import cosine_momentum, ema_update_

CKPT = "last.ckpt"
MODEL_KEYS = ("hr", "s2", "s1", "hr_dates", "s2_dates", "s1_dates", "lat", "lon")
SOURCES = ("synthetic", "folder", "sen1floods11", "bigearthnet", "slovenia", "aid")
NO_DECAY = ("token", "pos_embed", "logit_scale", "prototypes")


@dataclass
class DataConfig:
    """``sources``: ``synthetic``, or real ones read from ``root`` (default: ``$SKYSENSE_DATA``, else the
    ``shared/data`` folder beside the repository):

    - ``folder``: your own geo-aligned rasters ``root/{hr,s2,s1}/*.tif``, read lazily by
      :class:`~skysense.data.pretrain.PretrainDataset` in tiles of ``tile`` s2 pixels (the only
      source with ``hr`` aligned to S1/S2);
    - ``sen1floods11`` (the S1+S2 chip cut into tiles), ``bigearthnet`` (S1+S2 patches);
    - ``slovenia``: the 68-date NDVI series of the eo-learn patch as a 1-band ``s2`` (set
      ``model.s2.in_chans: 1``);
    - ``aid``: ``hr`` scenes of ``split`` resized to ``hr_tile`` (split of :mod:`skysense.data.scenes`).
    """

    sources: tuple[str, ...] = ("synthetic",)
    root: str = ""
    modalities: tuple[str, ...] = ("s2", "s1")
    tile: int = 64  # side of s2/s1 tiles in pixels
    hr_tile: int = 128  # side of synthetic and aid hr tiles
    split: str = "train"  # aid: hash split (train/val/test) used for pre-training
    num_samples: int = 8  # synthetic
    num_dates: dict[str, int] = field(default_factory=lambda: {"s2": 3, "s1": 2})  # synthetic, at most

    def __post_init__(self) -> None:
        check_ranges("data.", self, at_least={"tile": 1, "hr_tile": 1, "num_samples": 1})
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"data.modalities: unknown {unknown}: use hr, s2, s1")


# the least value of each numeric TrainConfig field that has one (checked when a config is built)
MINIMUM: dict[str, float] = {"steps": 1, "batch_size": 1, "log_every": 1}
MINIMUM |= dict.fromkeys(("warmup_steps", "ckpt_every", "stop_after", "teacher_temp_warmup_steps"), 0)
MINIMUM |= dict.fromkeys(
    ("dense_warmup_steps", "lr", "min_lr", "clip_grad", "weight_decay", "weight_decay_end"), 0
)


@dataclass
class TrainConfig:
    """Everything of one run; the YAML files in ``configs/pretrain/`` set these fields (nested ones too)."""

    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # preset overrides, e.g. {s2: {in_chans: 1}}
    steps: int = 20
    batch_size: int = 4  # global, over all ranks
    lr: float = 5e-4  # peak, after warm-up
    min_lr: float = 1e-6
    warmup_steps: int = 2
    weight_decay: float = 0.04  # cosine from this ...
    weight_decay_end: float = 0.4  # ... to this
    clip_grad: float = 3.0  # max global gradient norm, 0 = off
    strategy: str = "ddp"  # under torchrun: ddp (replicas) or fsdp (FSDP2 fully_shard: sharded states)
    bf16: bool = True  # autocast of the forward (CPU and CUDA)
    grad_checkpointing: bool = False
    # torch.compile mode of the encoders and the fusion ("" = eager; "default", "reduce-overhead", ...):
    # on a GPU the tiny recipe waits on kernel dispatch (BENCHMARKS.md, session 15), which compiling cuts
    compile: str = ""
    ema_momentum: float = 0.996  # cosine to 1 over the run
    teacher_temp_start: float = 0.04  # linear warm-up to pretrain.loss.teacher_temp (DINO) ...
    teacher_temp_warmup_steps: int = 0  # ... over these steps (0 = constant)
    # [ours] the pixel and object weights ramp linearly from 0 to pretrain.loss.weights over these
    # steps (0 = constant), so the image level shapes the pooled features first (BENCHMARKS.md, s. 18)
    dense_warmup_steps: int = 0
    seed: int = 0
    init_seed: int | None = None  # seed of the initial weights alone (None = seed): separates init from data
    init_from: str = ""  # a checkpoint whose student weights start a NEW run (load_init); "" = none
    out_dir: str = "runs/pretrain"
    log_every: int = 1  # progress-bar postfix and TensorBoard; metrics.csv gets every step
    ckpt_every: int = 10  # steps between checkpoints (and one at the end); 0 = none (benchmarks)
    stop_after: int = 0  # stop (checkpointed) after this many steps, as if killed; 0 = run to the end
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self) -> None:
        check_ranges("TrainConfig ", self, at_least=MINIMUM, within={"ema_momentum": (0, 1)})

    @property
    def weights_seed(self) -> int:
        """The seed of the initial weights: ``init_seed``, else ``seed``."""
        return self.seed if self.init_seed is None else self.init_seed


# ----------------------------------------------------------------------------- config from dicts


def _as_float(value: Any) -> Any:
    """YAML reads 1e-4 as a string: a number or numeric string as float, anything else as it is (the
    dataclass's own check names the field)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def _checked(where: str, value: Any, hint: Any) -> Any:
    """``value`` of an ``int``, ``int | None``, ``bool`` or ``str`` field, or a ValueError naming it."""
    if hint == int | None and value is None:
        return None
    if hint in (int, int | None):
        number = _as_float(value)  # YAML reads 1e3 as a string
        if isinstance(number, float) and number.is_integer():
            return int(number)
        raise ValueError(f"{where}={value!r}: expected a whole number")
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{where}={value!r}: expected true or false")
    if hint is str and not isinstance(value, str):
        raise ValueError(f"{where}={value!r}: expected a string")
    return value


def from_dict(cls: Any, d: dict[str, Any]) -> Any:
    """A dataclass from a nested dict; lists become tuples where the default is a tuple, numbers
    floats where the field is a float or a ``dict[str, float]``; int, bool and str fields are checked."""
    default = cls()
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for key, value in d.items():
        if not hasattr(default, key):
            known = sorted(f.name for f in dataclasses.fields(cls))
            raise ValueError(f"unknown {cls.__name__} key {key!r}; known: {known}")
        cur, hint = getattr(default, key), hints.get(key)
        if dataclasses.is_dataclass(cur) and isinstance(value, dict):
            value = from_dict(type(cur), value)
        elif isinstance(cur, tuple) and isinstance(value, list):
            value = tuple(value)
        elif hint is float:
            value = _as_float(value)
            if isinstance(value, str):
                raise ValueError(f"{cls.__name__} {key}={value!r}: expected a number")
        elif isinstance(value, dict) and hint == dict[str, float]:
            value = {k: _as_float(v) for k, v in value.items()}
        else:
            value = _checked(f"{cls.__name__} {key}", value, hint)
        kw[key] = value
    return dataclasses.replace(default, **kw)


def apply_overrides(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``key.sub=value`` strings (values parsed as YAML) into a nested dict, in place."""
    import yaml

    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value, e.g. steps=20 or data.tile=32")
        *parents, last = key.split(".")
        node = d
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[last] = yaml.safe_load(text)
    return d


# ----------------------------------------------------------------------------- schedules


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps`` (step 0 gets lr / warmup), then cosine to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def teacher_temp_at(step: int, cfg: TrainConfig) -> float:
    """DINO's teacher temperature warm-up: linear from ``teacher_temp_start`` to ``loss.teacher_temp``."""
    final = cfg.pretrain.loss.teacher_temp
    if step >= cfg.teacher_temp_warmup_steps:
        return final
    return cfg.teacher_temp_start + (final - cfg.teacher_temp_start) * step / cfg.teacher_temp_warmup_steps


def dense_ramp_at(step: int, cfg: TrainConfig) -> float:
    """The factor on the pixel and object weights: linear from 0 to 1 over ``dense_warmup_steps``."""
    return min(step / cfg.dense_warmup_steps, 1.0) if cfg.dense_warmup_steps > 0 else 1.0


def loss_at(step: int, cfg: TrainConfig) -> LossConfig:
    """The loss config of ``step``: teacher temperature and pixel/object weights on their schedules."""
    loss, ramp = cfg.pretrain.loss, dense_ramp_at(step, cfg)
    weights = (
        {**loss.weights, **{g: ramp * loss.weight(g) for g in ("pix", "obj")}} if ramp < 1 else loss.weights
    )
    return dataclasses.replace(loss, teacher_temp=teacher_temp_at(step, cfg), weights=weights)


def model_config(cfg: TrainConfig) -> SkySenseConfig:
    """The preset with ``cfg.model`` merged in (one level deep) and the modalities not trained dropped."""
    d = get_preset(cfg.preset).to_dict()
    for key, value in cfg.model.items():
        if key not in d:
            raise ValueError(f"model.{key}: not a SkySenseConfig field; known: {sorted(d)}")
        if isinstance(value, dict) and isinstance(d[key], dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    for m in ("hr", "s2", "s1"):
        if m not in cfg.data.modalities:
            d[m] = None
    return SkySenseConfig.from_dict(d)


def wd_at(step: int, cfg: TrainConfig) -> float:
    """Cosine from ``weight_decay`` at step 0 to ``weight_decay_end`` at the last step."""
    progress = min(step / max(cfg.steps, 1), 1.0)
    return cfg.weight_decay_end + 0.5 * (cfg.weight_decay - cfg.weight_decay_end) * (
        1 + math.cos(math.pi * progress)
    )


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


# ----------------------------------------------------------------------------- data


def data_root(cfg: DataConfig) -> Path:
    return Path(cfg.root) if cfg.root else default_data_root()


class SyntheticDataset(torch.utils.data.Dataset):
    """Random normalised samples (a function of the index only), with varying numbers of dates."""

    def __init__(self, cfg: DataConfig, seed: int = 0) -> None:
        self.cfg, self.seed = cfg, seed

    def __len__(self) -> int:
        return self.cfg.num_samples

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        s, out = self.cfg.tile, {}
        if "hr" in self.cfg.modalities:
            out["hr"] = torch.randn(3, self.cfg.hr_tile, self.cfg.hr_tile, generator=g)
        for m, bands in (("s2", 10), ("s1", 2)):
            if m in self.cfg.modalities:
                t = max(1, self.cfg.num_dates.get(m, 1) - i % 2)
                out[m] = torch.randn(t, bands, s, s, generator=g)
                out[f"{m}_dates"] = 18_000 + torch.sort(torch.randint(0, 700, (t,), generator=g)).values
        out["lat"] = torch.tensor(float(torch.rand((), generator=g)) * 120 - 60, dtype=torch.float64)
        out["lon"] = torch.tensor(float(torch.rand((), generator=g)) * 340 - 170, dtype=torch.float64)
        return out


class NormalisedTiles(torch.utils.data.Dataset):
    """A dataset's samples normalised with the spec's statistics, model keys only (read lazily)."""

    def __init__(self, dataset: Any) -> None:
        from skysense.data import Normalize

        self.dataset, self.norm = dataset, Normalize()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.norm(self.dataset[i])
        return {k: sample[k] for k in MODEL_KEYS if k in sample}


def tiles_of(sample: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Non-overlapping ``size`` tiles of a normalised s2/s1 sample (model keys only)."""
    h, w = next(sample[m] for m in ("s2", "s1") if m in sample).shape[-2:]
    out = []
    for top in range(0, h - size + 1, size):
        for left in range(0, w - size + 1, size):
            tile = {k: sample[k] for k in MODEL_KEYS if k in sample}
            for m in ("s2", "s1"):
                if m in tile:
                    tile[m] = tile[m][..., top : top + size, left : left + size].clone()
            out.append(tile)
    return out


def build_dataset(cfg: DataConfig, seed: int = 0) -> Sequence[dict[str, Any]]:
    """The pre-training samples of ``cfg.sources`` (real ones normalised and tiled in memory)."""
    from skysense.data import BigEarthNetMM, EOPatchDataset, Normalize, Sen1Floods11
    from skysense.data.pretrain import PretrainDataset
    from skysense.data.scenes import SceneSamples, load_scenes

    unknown = [s for s in cfg.sources if s not in SOURCES]
    if unknown or not cfg.sources:
        raise ValueError(f"data.sources {list(cfg.sources)}: choose from {list(SOURCES)}")
    if "synthetic" in cfg.sources:
        if len(cfg.sources) > 1:
            raise ValueError("data.sources: 'synthetic' cannot be mixed with real sources")
        return SyntheticDataset(cfg, seed)  # type: ignore[return-value]
    root = data_root(cfg)
    if "folder" in cfg.sources:
        if len(cfg.sources) > 1 or not cfg.root:
            raise ValueError(
                "data.sources [folder] reads data.root/{hr,s2,s1}/*.tif: set data.root, no other source"
            )
        return NormalisedTiles(PretrainDataset(root, modalities=cfg.modalities, size=cfg.tile))  # type: ignore[return-value]
    if "aid" in cfg.sources:
        if len(cfg.sources) > 1 or tuple(cfg.modalities) != ("hr",):
            raise ValueError("data.sources [aid] is hr only: set data.modalities [hr] and no other source")
        return SceneSamples(load_scenes(root / "aid", cfg.split, cfg.hr_tile))  # type: ignore[return-value]
    if "hr" in cfg.modalities:
        raise ValueError("no real source with hr imagery aligned to S1/S2: use modalities [s2, s1]")
    mods = tuple(m for m in ("s2", "s1") if m in cfg.modalities)
    norm, samples = Normalize(), []
    for src in cfg.sources:
        if src == "slovenia":
            if mods != ("s2",):
                raise ValueError("data.sources slovenia has an s2 (NDVI) series only: data.modalities [s2]")
            patch = EOPatchDataset(root / "eolearn_slovenia" / "TestEOPatch")[0]
            samples += tiles_of(standardise_series(patch), cfg.tile)
            continue
        ds = (
            Sen1Floods11(root / "sen1floods11", modalities=mods)
            if src == "sen1floods11"
            else BigEarthNetMM(root / "bigearthnet_mm", modalities=mods)
        )
        for i in range(len(ds)):
            samples += tiles_of(norm(ds[i]), cfg.tile)
    if not samples:
        raise ValueError(
            f"data.tile={cfg.tile}: larger than every image of {list(cfg.sources)}: use a smaller one"
        )
    if len({s["s2"].shape[-3] for s in samples if "s2" in s}) > 1:
        raise ValueError(f"data.sources {list(cfg.sources)}: s2 band counts differ; do not mix slovenia")
    return samples


def standardise_series(sample: dict[str, Any]) -> dict[str, Any]:
    """A non-S2-DN series (e.g. NDVI) to zero mean, unit std over its valid pixels; invalid -> 0."""
    out = dict(sample)
    x, inv = sample["s2"], sample["s2_invalid"].unsqueeze(-3)  # (T, C, H, W), (T, 1, H, W)
    ok = ~inv.expand_as(x)
    valid = x.transpose(0, 1)[ok.transpose(0, 1)].reshape(x.shape[1], -1)  # (C, n)
    mean, std = valid.mean(1).view(1, -1, 1, 1), valid.std(1).clamp_min(1e-6).view(1, -1, 1, 1)
    out["s2"] = torch.where(ok, (x - mean) / std, torch.zeros_like(x))
    return out


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


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then ``os.replace``: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of tensors and plain containers (``weights_only``: no code runs); a clear error for a
    missing or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip: RuntimeError; bytes of no checkpoint: KeyError, UnpicklingError
        first = (str(e).splitlines() or [""])[0][:200]
        if "Weights only load failed" in str(e):
            raise ValueError(
                f"{path}: refused unread: it holds Python objects beyond tensors and plain containers, and "
                "loading it could run code. Trainer checkpoints never do: is it another program's file?"
            ) from None
        raise ValueError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {first}). The trainer replaces its "
            "checkpoints atomically, so the file was damaged or swapped after writing: restore a copy, "
            "or delete it to start the run afresh"
        ) from None


def _config_diff(old: Any, new: Any, where: str = "") -> list[str]:
    """Leaves that differ between two ``dataclasses.asdict`` configs, as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _config_diff(old.get(k), new.get(k), f"{where}{k}.")]
    plain = [list(x) if isinstance(x, tuple) else x for x in (old, new)]
    return [] if plain[0] == plain[1] else [f"{where[:-1]}: {old!r} -> {new!r}"]


def load_init(path: str | Path, student: Student, teacher: Student) -> None:
    """Start from the ``student`` weights of a checkpoint (a run's ``last.ckpt``, or any
    ``torch.save`` of ``{"student": state_dict}``); the teacher starts as their copy. Unlike resume,
    step, optimiser, centres and random states start afresh: a new run (new data, schedule, seed)."""
    try:
        ck = load_checkpoint(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"init_from={str(path)!r}: no such file") from None
    except Exception as e:  # a corrupt file or a pickle that weights_only refuses
        raise ValueError(f"init_from={str(path)!r} is not a readable checkpoint: {e}") from None
    if not isinstance(ck, dict) or "student" not in ck:
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


# ----------------------------------------------------------------------------- distributed


class _StudentStep(nn.Module):
    """The whole student side of a step as one forward, so DDP sees every parameter use (heads too)."""

    def __init__(self, student: Student, teacher: Student, centers: Centers, cfg: PretrainConfig) -> None:
        super().__init__()
        self.student = student
        self.ctx = (teacher, centers, cfg)  # a tuple: not registered, so DDP leaves them alone
        self.monitors: dict[str, float] = {}

    def forward(self, batch: dict[str, Any], gen: torch.Generator) -> dict[str, Tensor]:
        teacher, centers, cfg = self.ctx
        out = pretrain_step(self.student, teacher, centers, batch, cfg, gen)
        self.monitors = out.monitors
        return out.losses


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_(model: Student, mode: str) -> None:
    """In place: ``torch.compile`` each encoder and the fusion of a student or teacher with ``mode``.

    ``nn.Module.compile`` keeps the parameter names, so checkpoints are those of an eager run. The
    losses, views and Sinkhorn-Knopp stay eager: they are small, and data-dependent in shape."""
    for module in [*model.backbone.encoders.values(), model.backbone.fusion]:
        # static shapes: each view size (global, local; teacher, student) compiles once. With
        # dynamic=None the second size recompiled the Swin symbolically, > 15 minutes on this CPU
        module.compile(mode=mode, dynamic=False)


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


def shard_(model: Student, device: torch.device, whole_prototypes: bool) -> None:
    """FSDP2 ``fully_shard`` of a student or teacher, in place: one unit per encoder, alignment head,
    the fusion, the geo query and every projection head, then the rest at the root.

    Units are the modules the step calls directly (``heads.cma``, ``geo.query`` are called outside
    their parents' forward). With ``whole_prototypes`` (GCPL on: frozen to gradients, moved in place)
    the geo prototypes stay whole on every rank (``ignored_params``); the post-step all-reduce keeps
    them equal. Student and
    teacher get the same layout, so the EMA pairs local shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    bb, geo = model.backbone, model.backbone.geo
    ignored = {geo.prototypes} if geo is not None and whole_prototypes else set()
    units: list[nn.Module] = [
        *bb.encoders.values(),
        *bb.align.values(),
        bb.fusion,
        *model.heads.heads.values(),
    ]
    if geo is not None:
        units.append(geo.query)
    if any(True for _ in model.heads.cma.parameters()):
        units.append(model.heads.cma)
    for unit in units:
        fully_shard(unit, mesh=mesh, ignored_params=ignored)
    fully_shard(model, mesh=mesh, ignored_params=ignored)
    # The fusion and the student return views (the extra token's rows, pyramid maps): FSDP2 warns that
    # an in-place op on them would skip its hooks. None follows; the FSDP-vs-DDP tests would catch one.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(\w+\) returned a view tensor")


def _full_model_state(model: nn.Module, fsdp: bool) -> dict[str, Any]:
    """Whole (unsharded) ``state_dict``: under FSDP the DCP full state dict (a collective: every rank
    calls it), so checkpoints of both strategies hold the same model keys."""
    if not fsdp:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _full_states(
    student: Student, teacher: Student, opt: torch.optim.Optimizer, fsdp: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Whole model states (:func:`_full_model_state`) and the optimiser state keyed by parameter name
    (DCP's full optimiser state dict, whatever the strategy), so any strategy resumes any checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    models = {"student": _full_model_state(student, fsdp), "teacher": _full_model_state(teacher, fsdp)}
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return models, get_optimizer_state_dict(student, opt, options=full)


def _load_states(
    ck: dict[str, Any],
    student: Student,
    teacher: Student,
    centers: Centers,
    opt: torch.optim.Optimizer,
    fsdp: bool,
) -> None:
    """Restore a checkpoint written by any strategy and number of ranks (optimiser state keyed by name;
    the position-keyed state of checkpoints before session 23 resumes without FSDP only)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    centers.load_state_dict(ck["centers"])
    if fsdp:
        full = StateDictOptions(full_state_dict=True)
        set_model_state_dict(student, ck["student"], options=full)
        set_model_state_dict(teacher, ck["teacher"], options=full)
    else:
        student.load_state_dict(ck["student"])
        teacher.load_state_dict(ck["teacher"])
    if ck.get("optimizer_format", "index") == "index":
        if fsdp:
            raise ValueError(
                "this checkpoint's optimiser state is keyed by position (an older DDP or single-process "
                "run): resume it with strategy=ddp, or start an FSDP run from its weights (init_from=PATH)"
            )
        opt.load_state_dict(ck["optimizer"])
        return
    # not strict: AdamW has no state for parameters that never had a gradient (the fusion of an hr-only
    # run, the norms of hr stages no loss reads), so the checkpoint has none; the model loads stay strict
    lenient = StateDictOptions(full_state_dict=True, strict=False)
    set_optimizer_state_dict(student, opt, ck["optimizer"], options=lenient)


@torch.no_grad()
def _average_(tensors: Sequence[Tensor], world: int) -> None:
    for x in tensors:
        dist.all_reduce(x)
        x.div_(world)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------- outputs


def _read_metrics(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def plot_loss(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [int(r["step"]) for r in rows]
    for key in ("loss", "mgcl", "cma"):
        if rows and rows[0].get(key, "") != "":
            ax.plot(steps, [float(r[key]) for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- the loop


def _batches(cfg: TrainConfig, data: Sequence[dict[str, Any]], start: int, rank: int, world: int) -> Iterator:
    for step in range(start, cfg.steps):
        idx = batch_indices(step, len(data), cfg.batch_size, cfg.seed, rank, world)
        yield step, collate([data[i] for i in idx])


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Pre-train (see module doc); returns ``losses`` (this call's per-step total losses, global mean),
    ``step`` (steps done), ``teacher`` (its state dict, for checks across ranks) and ``samples`` (the
    dataset's size)."""
    if cfg.strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy {cfg.strategy!r}: use ddp or fsdp")
    if cfg.compile and cfg.compile not in COMPILE_MODES:
        raise ValueError(f"compile={cfg.compile!r}: use one of {', '.join(COMPILE_MODES)}, or '' for eager")
    rank, world, device = setup_distributed()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} ranks")
    out_dir = Path(cfg.out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    model = initial_encoder(cfg, cfg.grad_checkpointing)  # same initial weights on every rank
    student, teacher, centers = build_pretrain(model, cfg.pretrain)
    if cfg.init_from and not (resume and (out_dir / CKPT).exists()):
        load_init(cfg.init_from, student, teacher)
    for module in (student, teacher, centers):
        module.to(device)
    fsdp = world > 1 and cfg.strategy == "fsdp"
    if fsdp:
        geo = student.backbone.geo
        whole = geo is not None and not geo.prototypes.requires_grad
        for module in (student, teacher):
            shard_(module, device, whole)
        # FSDP2 keeps a root's own parameters gathered after forward, for a backward the teacher never
        # runs: reshard them after each forward, or the EMA pairs whole teacher tensors with student
        # shards (e.g. the geo prototypes when GCPL is off and they are not kept whole)
        typing.cast(FSDPModule, teacher).set_reshard_after_forward(True, recurse=False)
    # fused AdamW: one kernel per parameter group instead of a Python loop of ~7 calls per tensor
    # (~1,200 calls a step for `tiny`, BENCHMARKS.md session 15); FSDP2's DTensor shards keep the default.
    opt = torch.optim.AdamW(param_groups(student), lr=cfg.lr, betas=(0.9, 0.999), fused=not fsdp)
    torch.manual_seed(cfg.seed + rank)  # drop-path differs across ranks, like their data
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank)  # views (on CPU, before the device)

    start = 0
    ckpt_path = out_dir / CKPT
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        try:
            _load_states(ck, student, teacher, centers, opt, fsdp)
        except (RuntimeError, KeyError) as e:  # mis-shaped, missing or unexpected tensors
            diff = _config_diff(ck.get("config", {}), dataclasses.asdict(cfg))
            raise ValueError(
                f"{ckpt_path} does not fit this run's model ({' '.join(str(e).split()[:40])}). Its config "
                f"differs in: {'; '.join(diff) or 'nothing recorded'}. Resume with that run's config, "
                "or set another out_dir to start afresh"
            ) from None
        start = int(ck["step"])
        rngs = ck["rng"]
        if len(rngs) == world:
            set_rng_state(rngs[rank], gen)
        elif rank == 0:
            print(f"resume: checkpoint from {len(rngs)} rank(s), now {world}: random states restart")

    if cfg.compile:
        compile_(student, cfg.compile)
        compile_(teacher, cfg.compile)
    inner = _StudentStep(student, teacher, centers, cfg.pretrain)
    step_module: nn.Module = inner
    if world > 1 and not fsdp:
        step_module = nn.parallel.DistributedDataParallel(
            step_module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # e.g. the hr pyramid's unused norms
        )

    data = build_dataset(cfg.data, cfg.seed)
    metrics_path = out_dir / "metrics.csv"
    rows: list[dict[str, Any]] = []
    if rank == 0:
        rows = list(_read_metrics(metrics_path, start)) if start else []
        metrics_path.unlink(missing_ok=True)
        if rows:  # drop the steps after the checkpoint, they are redone
            _write_metrics(metrics_path, list(rows[0]), rows)
    fields: list[str] = list(rows[0]) if rows else []
    writer_tb = None
    if rank == 0:
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter

            writer_tb = SummaryWriter(str(out_dir / "tb"))

    losses: list[float] = []
    stop = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    bar = tqdm(total=cfg.steps, initial=start, disable=rank != 0 or not cfg.progress, desc="pretrain")
    step = start
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    for step, batch in _batches(cfg, data, start, rank, world):
        if step >= stop:
            break
        t0 = time.perf_counter()
        lr, wd, momentum, loss_cfg = (
            lr_at(step, cfg),
            wd_at(step, cfg),
            cosine_momentum(step, cfg.steps, cfg.ema_momentum),
            loss_at(step, cfg),
        )
        inner.ctx = (teacher, centers, dataclasses.replace(cfg.pretrain, loss=loss_cfg))
        for group in opt.param_groups:
            group["lr"] = lr
            if group["name"] == "decay":
                group["weight_decay"] = wd
        student.train()
        with autocast:
            out = step_module(_to(batch, device), gen)
        if world > 1:  # in-place updates from local batches -> the same on every rank
            geo = student.backbone.geo
            _average_([*centers.buffers(), *([geo.prototypes.data] if geo is not None else [])], world)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        group_norms = {} if fsdp else grad_norms_by_part(student)
        params = [p for p in student.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad if cfg.clip_grad > 0 else math.inf)
        grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        if not math.isfinite(grad_norm):  # the same global norm on every rank: all of them stop here
            terms = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in out.items())
            saved = max(start, step - step % cfg.ckpt_every) if cfg.ckpt_every else start
            last = f"{ckpt_path} (step {saved})" if saved else "none written yet"
            raise FloatingPointError(
                f"step {step + 1}: the gradient norm is {grad_norm} ({terms}): training diverged or an input "
                f"holds NaN/inf. Nothing was updated; the last checkpoint, {last}, is untouched. Resume from "
                "it with a lower lr or clip_grad > 0, or check the data (skysense data inspect)"
            )
        opt.step()
        ema_update_(teacher, student, momentum)

        logged = torch.stack([v.detach().float() for v in out.values()])
        if world > 1:
            _average_([logged], world)
        row: dict[str, Any] = {
            "step": step + 1,
            "lr": lr,
            "wd": wd,
            "momentum": momentum,
            "teacher_temp": loss_cfg.teacher_temp,
            "dense_ramp": dense_ramp_at(step, cfg),
        }
        row.update({k: float(v) for k, v in zip(out, logged)})
        row.update(grad_norm=grad_norm, **group_norms, **inner.monitors, time=time.perf_counter() - t0)
        losses.append(row["loss"])
        if rank == 0:
            if not fields:
                fields = list(row)
            rows.append(row)
            if metrics_path.exists():
                with metrics_path.open("a", newline="") as f:
                    csv.DictWriter(f, fields, restval="", extrasaction="ignore").writerow(row)
            else:
                _write_metrics(metrics_path, fields, rows)
            if (step + 1) % cfg.log_every == 0:
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
                if writer_tb is not None:
                    for k, v in row.items():
                        if k != "step":
                            writer_tb.add_scalar(k, v, step + 1)
            bar.update(1)
        done = step + 1
        if cfg.ckpt_every and (done % cfg.ckpt_every == 0 or done == stop):
            _checkpoint(ckpt_path, cfg, done, student, teacher, centers, opt, gen, rank, world, fsdp)
        step = done
    bar.close()
    if rank == 0:
        if rows:
            plot_loss(rows, out_dir / "loss_curve.png")
        if writer_tb is not None:
            writer_tb.close()
    return {
        "losses": losses,
        "step": step,
        "teacher": _full_model_state(teacher, fsdp),
        "samples": len(data),
    }


def _write_metrics(path: Path, fields: list[str], rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fields, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _checkpoint(
    path: Path,
    cfg: TrainConfig,
    step: int,
    student: Student,
    teacher: Student,
    centers: Centers,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    rank: int,
    world: int,
    fsdp: bool = False,
) -> None:
    models, optim = _full_states(student, teacher, opt, fsdp)  # collective under FSDP
    rng = rng_state(gen)
    rngs = [rng]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, rng)
        rngs = gathered
    if rank == 0:
        state = {
            **models,
            "centers": centers.state_dict(),
            "optimizer": optim,
            "optimizer_format": "fqn",
            "step": step,
            "data": {"seed": cfg.seed, "position": step * cfg.batch_size, "world": world},
            "rng": rngs,
            "config": dataclasses.asdict(cfg),
        }
        save_checkpoint(path, state)
    if world > 1:
        # every rank leaves once the file is in place: a resume in the same processes (a second train()
        # call) would otherwise let rank 1 read the previous checkpoint and run steps rank 0 skips
        dist.barrier()


def initial_encoder(cfg: TrainConfig, grad_checkpointing: bool = False) -> SkySense:
    """The encoder a run of ``cfg`` starts from (seeded by ``cfg.weights_seed``): the random-init baseline."""
    torch.manual_seed(cfg.weights_seed)
    return build_model(model_config(cfg), grad_checkpointing=grad_checkpointing)


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
