"""Fine-tuning SkySense on a downstream task (paper Sec. 4) as a task of the engine (:mod:`skysense.engine`).

A :class:`TaskModel` is the encoder (random init, a pre-training export or converted official weights,
through :func:`skysense.load_pretrained`) with one head over its named outputs:

- ``classification`` / ``multilabel``: :class:`~skysense.tasks.heads.ClassificationHead` over ``hr`` (stage
  4), an ``s2``/``s1`` series (the last ViT layer, padded dates masked) or the ``fused`` map;
- ``segmentation``: UperNet over the ``hr`` pyramid, or over the ``fused`` map for multi-modal series,
  with an optional FCN auxiliary head on hr stage 3;
- ``change``: the same encoder (shared weights) on the before and after images, then
  :class:`~skysense.tasks.heads.ChangeHead`; one change logit per pixel.

Modes: ``frozen`` (the linear probe with ``head.pool: mean``), ``partial`` (the first ``frozen_blocks``
blocks frozen), ``full``; trained encoder layers get layer-wise lr decay (``layer_decay``, 0.9 in the
paper). Losses: cross-entropy with the ignore index (and optional class weights), BCE for multi-label and
change. Checkpoints (``last.ckpt``, ``best.ckpt`` by the validation metric) carry the task, the class
names, the encoder config, the head config and the input contract under ``meta``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skysense.config import SkySenseConfig, check_ranges, preset_with
from skysense.data.collate import collate
from skysense.engine.config import EngineConfig
from skysense.engine.distributed import Ranks
from skysense.engine.loop import PlainHooks
from skysense.models.skysense import SkySense
from skysense.tasks.data import IGNORE_INDEX, MODEL_KEYS, TaskData, TaskDataConfig, build_task_data
from skysense.tasks.heads import ChangeHead, ClassificationHead, FCNHead, UperNetHead, resize_to
from skysense.tasks.metrics import HEADLINE, KINDS, Evaluator

INPUTS = ("hr", "s2", "s1", "fused")
MODES = ("frozen", "partial", "full")


@dataclass
class TaskHeadConfig:
    pool: str = "mean"  # classification: mean | attention
    standardise: bool = False  # classification: BatchNorm (no affine) on the pooled features, MAE's probe
    channels: int = 128  # segmentation / change decoder width (UperNet uses 512 in the paper's configs)
    aux: bool = False  # segmentation: FCN auxiliary head on hr stage 3
    aux_weight: float = 0.4
    dropout: float = 0.1


@dataclass
class FinetuneConfig(EngineConfig):
    """One fine-tuning run; the YAML files in ``configs/finetune/`` set these fields."""

    task: str = "classification"  # classification | multilabel | segmentation | change
    preset: str = "tiny"  # the encoder without weights (random init)
    model: dict[str, Any] = field(default_factory=dict)  # preset overrides, e.g. {s1: null}
    weights: str = ""  # encoder weights: a .safetensors of skysense export / convert ("" = random init)
    input: str = "hr"  # the encoder output the head reads: hr | s2 | s1 | fused
    mode: str = "full"  # frozen | partial | full
    frozen_blocks: int = 0  # partial: blocks frozen in every encoder (its patch embedding too)
    layer_decay: float = 0.9
    modality_dropout: float = 0.0  # fused input: chance per sample that one series (s2 or s1) is left out
    class_names: tuple[str, ...] = ()  # your own segmentation/change folders: the name of each label value
    class_weights: tuple[float, ...] = ()  # cross-entropy weights per class (empty = equal)
    eval_batch_size: int = 16
    out_dir: str = "runs/finetune"
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.05
    weight_decay_end: float = 0.05
    head: TaskHeadConfig = field(default_factory=TaskHeadConfig)
    data: TaskDataConfig = field(default_factory=TaskDataConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(
            "FinetuneConfig ",
            self,
            at_least={"eval_batch_size": 1, "frozen_blocks": 0},
            within={"modality_dropout": (0.0, 1.0)},
        )
        for name, value, allowed in (
            ("task", self.task, KINDS),
            ("input", self.input, INPUTS),
            ("mode", self.mode, MODES),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: use one of {', '.join(allowed)}")
        if self.task == "change" and self.input != "hr":
            raise ValueError("task change reads the hr pyramids of the two dates: set input: hr")
        if self.modality_dropout and (self.input != "fused" or len(self.data.modalities) < 2):
            raise ValueError(
                f"modality_dropout={self.modality_dropout} leaves a series out of the fused map: it needs "
                f"input: fused and two or more data.modalities (got input {self.input!r}, modalities "
                f"{list(self.data.modalities)}); set modality_dropout: 0"
            )


# ----------------------------------------------------------------------------- the model


class TaskModel(nn.Module):
    """encoder + head (see the module doc); ``forward(batch)`` -> ``{"logits": ..., "aux": ...}``."""

    def __init__(
        self, encoder: SkySense, task: str, input: str, num_classes: int, head: TaskHeadConfig
    ) -> None:
        super().__init__()
        self.encoder, self.task, self.input = encoder, task, input
        self.frozen_encoder = False  # set by the frozen mode: the encoder stays in eval mode
        cfg = encoder.cfg
        if input not in ("fused", *cfg.modalities):
            raise ValueError(f"input={input!r}: the encoder has {list(cfg.modalities)} (and fused)")
        hr = list(cfg.hr.out_channels) if cfg.hr is not None else []
        widths = {"hr": hr[-1:] or [0], "fused": [encoder.out_dim]}
        widths |= {m: [getattr(cfg, m).embed_dim] for m in ("s2", "s1") if getattr(cfg, m) is not None}
        self.aux: nn.Module | None = None
        if task in ("classification", "multilabel"):
            self.head: nn.Module = ClassificationHead(
                widths[input][0], num_classes, head.pool, head.dropout, head.standardise
            )
        elif task == "segmentation":
            levels = hr if input == "hr" else widths[input]
            self.head = UperNetHead(levels, num_classes, head.channels, dropout=head.dropout)
            if head.aux and input == "hr":
                self.aux = FCNHead(hr[2], num_classes, head.channels, dropout=head.dropout)
        else:
            self.head = ChangeHead(hr, head.channels)

    def train(self, mode: bool = True) -> TaskModel:
        """A frozen encoder stays in eval mode (no drop-path), so training sees the features a probe reads."""
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()
        return self

    def features(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return self.encoder({k: v for k, v in batch.items() if k in MODEL_KEYS and not k.startswith("hr_p")})

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        if self.task == "change":
            pre, post = (self.encoder({"hr": batch[k]})["hr"] for k in ("hr_pre", "hr_post"))  # one encoder
            return {"logits": resize_to(self.head(pre, post), batch["hr_pre"].shape[-2:])}
        out = self.features(batch)
        if self.task in ("classification", "multilabel"):
            x = out[self.input][-1] if self.input in ("hr", "s2", "s1") else out["fused"]
            return {"logits": self.head(x, batch.get(f"{self.input}_mask"))}
        levels = (
            out["hr"]
            if self.input == "hr"
            else [out["fused"] if self.input == "fused" else out[self.input][-1][:, -1]]
        )
        size = batch["target"].shape[-2:] if "target" in batch else _input_size(batch)
        result = {"logits": resize_to(self.head(levels), size)}
        if self.aux is not None:
            result["aux"] = resize_to(self.aux(out["hr"][2]), size)
        return result


def _input_size(batch: Mapping[str, Any]) -> tuple[int, int]:
    x = next(batch[m] for m in ("hr", "s2", "s1") if m in batch)
    return int(x.shape[-2]), int(x.shape[-1])


class EncoderStart(Protocol):
    """What a downstream config says of its encoder: fine-tuning's and detection's alike."""

    preset: str
    model: dict[str, Any]
    weights: str
    seed: int


def encoder_config(cfg: EncoderStart) -> SkySenseConfig:
    """The preset with ``cfg.model`` merged in (one level deep)."""
    return preset_with(cfg.preset, cfg.model)


def build_encoder(cfg: EncoderStart) -> tuple[SkySense, dict[str, Any]]:
    """The encoder a run starts from and its input contract (``{}`` for random init)."""
    if not cfg.weights:
        torch.manual_seed(cfg.seed)
        return SkySense(encoder_config(cfg)), {}
    from skysense.pretrained import load_pretrained

    if cfg.model:
        raise ValueError("model overrides apply to random init only: the weights fix the encoder config")
    model, meta, _ = load_pretrained(cfg.weights, check_inputs=False, allow_missing=("geo",))
    contract = {m: dataclasses.asdict(spec) for m, spec in meta.modalities.items()}
    return typing.cast(SkySense, model.train()), {
        "weights": cfg.weights,
        "contract": contract,
        "check": meta.contract.check_sample,
    }


# ----------------------------------------------------------------------------- losses


def task_loss(out: Mapping[str, Tensor], batch: Mapping[str, Any], cfg: FinetuneConfig) -> dict[str, Tensor]:
    """``loss`` (what is backpropagated) and its parts (see the module doc)."""
    logits = out["logits"].float()
    if cfg.task == "multilabel":
        main = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
    elif cfg.task == "change":
        target = batch["target"]
        keep = target != IGNORE_INDEX
        # class_weights [no change, change] -> BCE's pos_weight: change pixels are rare (LEVIR-CD ~14 %)
        pos = cfg.class_weights[1] / cfg.class_weights[0] if cfg.class_weights else None
        pos_weight = torch.tensor(pos, device=logits.device) if pos is not None else None
        main = F.binary_cross_entropy_with_logits(
            logits[:, 0][keep], target[keep].float(), pos_weight=pos_weight
        )
    else:
        target = batch["label"] if cfg.task == "classification" else batch["target"]
        weight = torch.tensor(cfg.class_weights, device=logits.device) if cfg.class_weights else None
        main = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)
    losses = {"loss": main, "task": main.detach()}
    if "aux" in out:
        aux = F.cross_entropy(out["aux"].float(), batch["target"], ignore_index=IGNORE_INDEX)
        losses["aux"], losses["loss"] = aux.detach(), main + cfg.head.aux_weight * aux
    return losses


def augment(batch: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
    """Random horizontal and vertical flips of the whole batch (images, series, targets together)."""
    out = dict(batch)
    for dim in (-1, -2):
        if torch.rand((), generator=gen) < 0.5:
            for k, v in batch.items():
                if isinstance(v, Tensor) and (k in ("hr", "s2", "s1", "hr_pre", "hr_post", "target")):
                    out[k] = v.flip(dim)
    return out


def drop_modality(batch: dict[str, Any], p: float, gen: torch.Generator) -> dict[str, Any]:
    """Modality dropout: each sample, with chance ``p``, loses one of its series (``s2`` or ``s1``, picked
    uniformly) by marking all its dates as padding (``*_mask`` True), so the fusion attends to the others
    alone; a sample always keeps one input. Trains a fused model that does not lean on one modality."""
    series = [m for m in ("s2", "s1") if m in batch]
    if not series or (len(series) == 1 and "hr" not in batch):
        return batch
    b, t = batch[series[0]].shape[:2]
    hit = torch.rand(b, generator=gen) < p  # (B,)
    which = torch.randint(len(series), (b,), generator=gen)  # (B,)
    out = dict(batch)
    for i, m in enumerate(series):
        pad = batch.get(f"{m}_mask")
        pad = torch.zeros(batch[m].shape[:2], dtype=torch.bool) if pad is None else pad
        drop = (hit & (which == i)).to(pad.device)
        out[f"{m}_mask"] = pad | drop[:, None]
    return out


class StepModule(nn.Module):
    """One training forward: augment, model, loss (what DDP replicates)."""

    def __init__(self, model: TaskModel, cfg: FinetuneConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(
        self, batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        batch = augment(batch, gen)
        if self.cfg.modality_dropout:
            batch = drop_modality(batch, self.cfg.modality_dropout, gen)
        return task_loss(self.model(batch), batch, self.cfg), {}


# ----------------------------------------------------------------------------- the task


class FinetuneTask(PlainHooks):
    """Fine-tuning for :func:`skysense.engine.fit` (see the module doc)."""

    name = "finetune"

    def __init__(self, cfg: FinetuneConfig, data: TaskData | None = None) -> None:
        self.cfg = cfg
        self.data = data if data is not None else build_task_data(cfg.data)
        name_classes(self.data, cfg)
        if cfg.class_weights and len(cfg.class_weights) != len(self.data.classes):
            raise ValueError(
                f"class_weights has {len(cfg.class_weights)} values for {len(self.data.classes)} classes"
            )
        if self.data.kind != cfg.task:
            raise ValueError(
                f"data.dataset {cfg.data.dataset!r} is a {self.data.kind} set; the config says "
                f"task: {cfg.task}"
            )

    def setup(self, ranks: Ranks, fresh: bool) -> None:
        from skysense.tasks.layer_decay import freeze

        if ranks.fsdp:
            raise ValueError("fine-tuning runs under strategy=ddp (FSDP is not wired for task models yet)")
        cfg = self.cfg
        encoder, contract = build_encoder(cfg)
        check_data(self.data, encoder, cfg)
        if "check" in contract:  # the weights' input contract (bands, normalised values) against the data
            batch = collate(self.data.splits["train"][:2])
            contract.pop("check")(
                {k: v for k, v in batch.items() if k in ("hr", "s2", "s1", "s2_dates", "s1_dates")}
            )
        self.contract = contract
        torch.manual_seed(cfg.seed)
        self.model = TaskModel(encoder, cfg.task, cfg.input, len(self.data.classes), cfg.head).to(
            ranks.device
        )
        freeze(self.model, cfg.mode, blocks=cfg.frozen_blocks)
        self.model.frozen_encoder = cfg.mode == "frozen"
        self.device = ranks.device
        self.trained: nn.Module = self.model
        self.step_module: nn.Module = StepModule(self.model, cfg)

    def modules(self) -> Mapping[str, nn.Module]:
        return {"model": self.model}

    def param_groups(self) -> list[dict[str, Any]]:
        from skysense.tasks.layer_decay import param_groups

        return param_groups(self.model, decay=self.cfg.layer_decay, weight_decay=self.cfg.weight_decay)

    def compiled(self) -> Sequence[nn.Module]:
        return [*self.model.encoder.encoders.values(), self.model.encoder.fusion]

    def dataset(self) -> Sequence[dict[str, Any]]:
        return self.data.splits["train"]

    def validate(self) -> dict[str, float]:
        return evaluate_split(self.model, self.data, "val", self.cfg, self.device)[0]

    def meta(self) -> dict[str, Any]:
        return {
            "task": self.cfg.task,
            "classes": list(self.data.classes),
            "encoder": self.model.encoder.cfg.to_dict(),
            "head": dataclasses.asdict(self.cfg.head),
            "input": self.cfg.input,
            "counts": self.data.counts(),
            **self.contract,
        }


def name_classes(data: TaskData, cfg: FinetuneConfig) -> None:
    """In place: the class names of ``data`` from the config where the folder names none (a clear error
    where neither does, or where their counts differ)."""
    if cfg.class_names:
        if data.classes and len(data.classes) != len(cfg.class_names):
            raise ValueError(
                f"class_names has {len(cfg.class_names)} names, data.dataset {cfg.data.dataset!r} has "
                f"{len(data.classes)} classes {data.classes}: drop class_names or match it"
            )
        data.classes = list(cfg.class_names)
    if not data.classes:
        raise ValueError(
            f"no class names for {cfg.data.root or cfg.data.dataset}: the folder does not name its "
            "classes; set class_names: [name of label 0, name of label 1, ...] in the config"
        )


def check_data(data: TaskData, encoder: SkySense, cfg: FinetuneConfig) -> None:
    """The data fits the encoder and the task: modalities, band counts, label values (a clear error)."""
    sample = data.splits["train"][0]
    keys = ("hr",) if cfg.task != "change" else ("hr_pre", "hr_post")
    for key in [k for k in (*keys, "s2", "s1") if k in sample]:
        mod = "hr" if key.startswith("hr") else key
        sub = getattr(encoder.cfg, mod)
        if sub is None:
            raise ValueError(
                f"the data has {key} but the encoder has no {mod} branch: pick a config with one"
            )
        bands = sample[key].shape[-3]
        if bands != sub.in_chans:
            raise ValueError(
                f"{key}: {bands} bands in the data, the encoder takes {sub.in_chans}: select the bands, "
                f"or set model.{mod}.in_chans"
            )
    k = len(data.classes)
    for split, samples in data.splits.items():
        for s in samples:
            y = s["target"] if "target" in s else s["label"]
            if cfg.task in ("classification", "segmentation"):
                bad = y[(y != IGNORE_INDEX) & ((y < 0) | (y >= k))]
                if bad.numel():
                    raise ValueError(
                        f"{split}: label values {sorted(set(bad.tolist()))[:5]} outside the {k} classes "
                        f"{data.classes} (and {IGNORE_INDEX} = ignore): fix the labels or the class list"
                    )


@torch.no_grad()
def evaluate_split(
    model: TaskModel, data: TaskData, split: str, cfg: FinetuneConfig, device: torch.device
) -> tuple[dict[str, float], Evaluator]:
    """Scores of ``split``, the model in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    ev = Evaluator(cfg.task, data.classes, IGNORE_INDEX)
    samples = data.splits[split]
    for i in range(0, len(samples), cfg.eval_batch_size):
        batch = collate(samples[i : i + cfg.eval_batch_size])
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        logits = model(batch)["logits"]
        ev.update(
            logits.cpu(), batch["label" if cfg.task in ("classification", "multilabel") else "target"].cpu()
        )
    model.train(was_training)
    scores = ev.compute()
    return {HEADLINE[cfg.task]: scores[HEADLINE[cfg.task]], **scores}, ev


def finetune(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune (see the module doc); returns the engine's result and the best validation score."""
    import json
    from pathlib import Path

    from skysense.engine.loop import fit

    if not cfg.monitor:
        cfg = dataclasses.replace(cfg, monitor=HEADLINE[cfg.task])
    task = FinetuneTask(cfg)
    result = fit(task, cfg, resume=resume, overwrite=overwrite)
    path = Path(cfg.out_dir) / "best.json"  # absent while no validation has run (stop_after)
    best = json.loads(path.read_text()) if path.exists() else None
    return {**result, "best": best, "counts": task.data.counts()}
