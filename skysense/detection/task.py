"""Fine-tuning a detector on the SkySense hr pyramid (paper Sec. 4.3) as a task of the engine.

``skysense finetune`` with ``task: detection`` (Faster R-CNN, horizontal boxes) or ``task:
oriented_detection`` (Oriented R-CNN) builds :func:`~skysense.detection.models.build_detector` over the
encoder (random init, a pre-training export or converted official weights), with the modes and the
layer-wise lr decay of the other tasks (:mod:`skysense.tasks.layer_decay`; the encoder's parameters live
under ``backbone.encoder.``). The detector reads the hr branch alone: the encoder's fusion, geo-context
and series branches are left untrained.

Images: each set's image resized so that its longer side is ``data.size`` pixels, then zero-padded
(the normalised mean colour) right and bottom to ``size x size``, so that a batch stacks and quarter
turns keep its shape. Boxes, predictions and scores are in these pixels (IoU and AP do not change under
the one isotropic scale). Training augmentation: random flips and quarter turns with the run's
generator (so that a resumed run sees the same ones). Validation: ``map50`` (mean over classes of the
DOTA / VOC AP at IoU 0.5, rotated IoU for oriented boxes), the monitored metric of ``best.ckpt``.
Checkpoints carry the task, the class names, the encoder and head configs and the input contract
(``image_size``, the weights' band contract) under ``meta``.
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

from skysense.config import SkySenseConfig, check_ranges, from_dict
from skysense.detection.models import ENCODER_PREFIX, TASKS, DetectionHeadConfig, build_detector
from skysense.engine.config import EngineConfig
from skysense.engine.distributed import Ranks
from skysense.engine.loop import PlainHooks
from skysense.models.skysense import SkySense

MODES = ("frozen", "partial", "full")
HEADLINE = "map50"


@dataclass
class DetectionDataConfig:
    """Which detection set a run reads (:data:`skysense.detection.data.DETECTION_SETS`)."""

    dataset: str = "ucas_aod"  # ucas_aod | dota8 | airport | simd | neon_trees | dota (your own folder)
    root: str = ""  # default: $SKYSENSE_DATA/detection/<the set's folder>
    classes: list[str] = field(default_factory=list)  # the class names of dataset dota
    size: int = 512  # longer side after resizing; images are padded to size x size
    train: str = "train"  # the splits read for training and validation
    val: str = "val"
    limit: int = 0  # at most this many images of each split, the first ones (0 = all): smoke tests


@dataclass
class DetectionConfig(EngineConfig):
    """One detection fine-tuning run; ``configs/finetune/ucas_aod_tiny.yaml`` sets these fields."""

    task: str = "oriented_detection"  # detection | oriented_detection
    preset: str = "tiny"  # the encoder without weights (random init)
    model: dict[str, Any] = field(default_factory=dict)  # preset overrides
    weights: str = ""  # encoder weights: a .safetensors of skysense export / convert ("" = random init)
    mode: str = "full"  # frozen | partial | full
    frozen_blocks: int = 0
    layer_decay: float = 0.9
    eval_batch_size: int = 4
    out_dir: str = "runs/detection"
    lr: float = 2e-4
    warmup_steps: int = 20
    weight_decay: float = 0.05
    weight_decay_end: float = 0.05
    bf16: bool = False
    head: DetectionHeadConfig = field(default_factory=DetectionHeadConfig)
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges("DetectionConfig ", self, at_least={"eval_batch_size": 1, "frozen_blocks": 0})
        check_ranges("data.", self.data, at_least={"size": 32, "limit": 0})
        for name, value, allowed in (("task", self.task, TASKS), ("mode", self.mode, MODES)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: use one of {', '.join(allowed)}")


# ----------------------------------------------------------------------------- data


class SquareImages(Sequence[dict[str, Any]]):
    """A detection set's samples as the engine batches them: ``hr`` (3, S, S) padded (see the module doc),
    ``target`` ``{"boxes", "labels", "difficult"}`` and ``image_id``."""

    def __init__(self, samples: Sequence[dict[str, Any]], size: int, limit: int = 0) -> None:
        self.samples, self.size = samples, size
        self.n = min(limit, len(samples)) if limit else len(samples)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if not -self.n <= i < self.n:
            raise IndexError(f"image {i} of {self.n}")
        s = self.samples[i % self.n]
        x = s["hr"]
        image = x.new_zeros(x.shape[0], self.size, self.size)
        image[:, : x.shape[1], : x.shape[2]] = x
        target = {"boxes": s["boxes"].float(), "labels": s["labels"].long(), "difficult": s["difficult"]}
        return {"hr": image, "target": target, "image_id": s["image_id"]}


def detection_split(cfg: DetectionConfig, split: str) -> tuple[SquareImages, list[str]]:
    """One split of the run's set, squared, and the class names."""
    from skysense.detection.data import build_detection_set

    d = cfg.data
    own = {"classes": d.classes} if d.classes else {}
    data = build_detection_set(
        d.dataset,
        split,
        root=d.root or None,
        oriented=cfg.task == "oriented_detection",
        max_size=d.size,
        **own,
    )
    if not len(data):
        raise ValueError(f"{d.dataset} {split}: no images (data.root={d.root or 'default'})")
    return SquareImages(data, d.size, d.limit), list(data.classes)


def augment(batch: Mapping[str, Any], gen: torch.Generator) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Per image: a flip left-right, one top-bottom (each p = 1/2) and 0-3 quarter turns, drawn from
    ``gen``; the boxes and their angles follow."""
    from skysense.detection.data import hflip, rot90, vflip

    images, targets = [], []
    for x, t in zip(batch["hr"], batch["target"]):
        boxes = t["boxes"].to(x.device)
        draw = torch.rand(2, generator=gen)
        turns = int(torch.randint(4, (), generator=gen))
        if draw[0] < 0.5:
            x, boxes = hflip(x, boxes)
        if draw[1] < 0.5:
            x, boxes = vflip(x, boxes)
        x, boxes = rot90(x, boxes, turns)
        images.append(x)
        targets.append({"boxes": boxes, "labels": t["labels"].to(x.device)})
    return torch.stack(images), targets


class DetectionStep(nn.Module):
    """One training forward: augment, the detector's losses, their sum (what DDP replicates)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        images, targets = augment(batch, gen)
        parts = self.model(images, targets)
        total = sum(parts.values())
        return {"loss": total, **{k.removeprefix("loss_"): v.detach() for k, v in parts.items()}}, {}


# ----------------------------------------------------------------------------- the model


def build_model(cfg: DetectionConfig, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """The detector (encoder + heads, trainable per ``mode``) and the weights' input contract."""
    from skysense.tasks.finetune import build_encoder

    encoder, contract = build_encoder(cfg)
    torch.manual_seed(cfg.seed)
    model = build_detector(cfg.task, encoder, num_classes, cfg.head)
    set_mode(model, cfg.mode, cfg.frozen_blocks)
    return model, contract


def set_mode(model: nn.Module, mode: str, blocks: int = 0) -> None:
    """``frozen`` / ``partial`` / ``full`` on the encoder (:func:`skysense.tasks.layer_decay.freeze`); the
    parts of the encoder a detector does not read stay frozen in every mode."""
    from skysense.tasks.layer_decay import freeze

    freeze(model, mode, encoder_prefix=ENCODER_PREFIX, blocks=blocks)
    backbone = typing.cast(Any, model).backbone
    for name, p in backbone.encoder.named_parameters():
        if not name.startswith("encoders.hr."):
            p.requires_grad_(False)
    backbone.frozen_encoder = mode == "frozen"


# ----------------------------------------------------------------------------- the task


class DetectionTask(PlainHooks):
    """Detection fine-tuning for :func:`skysense.engine.fit` (see the module doc)."""

    name = "detection"

    def __init__(self, cfg: DetectionConfig) -> None:
        self.cfg = cfg
        self.train_set, self.classes = detection_split(cfg, cfg.data.train)
        self.val_set, _ = detection_split(cfg, cfg.data.val)

    def setup(self, ranks: Ranks, fresh: bool) -> None:
        if ranks.fsdp:
            raise ValueError("detection fine-tuning runs under strategy=ddp")
        model, contract = build_model(self.cfg, len(self.classes))
        if "check" in contract:  # the weights' input contract (bands, normalised values) against the data
            contract.pop("check")({"hr": torch.stack([self.train_set[i]["hr"] for i in range(2)])})
        self.contract = contract
        self.model = model.to(ranks.device)
        self.device = ranks.device
        self.trained: nn.Module = self.model
        self.step_module: nn.Module = DetectionStep(self.model)

    def modules(self) -> Mapping[str, nn.Module]:
        return {"model": self.model}

    def param_groups(self) -> list[dict[str, Any]]:
        from skysense.tasks.layer_decay import param_groups

        cfg = self.cfg
        return param_groups(
            self.model, encoder_prefix=ENCODER_PREFIX, decay=cfg.layer_decay, weight_decay=cfg.weight_decay
        )

    def compiled(self) -> Sequence[nn.Module]:
        return [typing.cast(Any, self.model).backbone.encoder.encoders["hr"]]

    def dataset(self) -> Sequence[dict[str, Any]]:
        return self.train_set

    def validate(self) -> dict[str, float]:
        from skysense.detection.scoring import score_split

        return score_split(self.model, self.val_set, self.classes, self.cfg, self.device)[0]

    def meta(self) -> dict[str, Any]:
        enc = typing.cast(Any, self.model).backbone.encoder
        return {
            "task": self.cfg.task,
            "classes": list(self.classes),
            "encoder": enc.cfg.to_dict(),
            "head": dataclasses.asdict(self.cfg.head),
            "input": "hr",
            "image_size": self.cfg.data.size,
            "counts": {"train": len(self.train_set), "val": len(self.val_set)},
            **self.contract,
        }


def finetune_detection(cfg: DetectionConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune a detector (see the module doc); the engine's result, the best validation score and
    the sample counts."""
    import json

    from skysense.engine.loop import fit

    if not cfg.monitor:
        cfg = dataclasses.replace(cfg, monitor=HEADLINE)
    task = DetectionTask(cfg)
    result = fit(task, cfg, resume=resume, overwrite=overwrite)
    path = Path(cfg.out_dir) / "best.json"
    best = json.loads(path.read_text()) if path.exists() else None
    return {**result, "best": best, "counts": {"train": len(task.train_set), "val": len(task.val_set)}}


def load_detector(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The detector of a detection checkpoint (``best.ckpt`` / ``last.ckpt``) in eval mode, and its meta."""
    model, _, meta = load_detection_run(path)
    return model, meta


def load_detection_run(path: str | Path) -> tuple[nn.Module, DetectionConfig, dict[str, Any]]:
    """The detector, the run's config and the meta of a detection checkpoint (a clear error otherwise)."""
    from skysense.engine.state import load_checkpoint

    ck = load_checkpoint(path)
    meta = ck.get("meta") or {}
    if meta.get("task") not in TASKS or "model" not in ck:
        raise ValueError(
            f"{path}: not a detection checkpoint (task {meta.get('task')!r}): pass the best.ckpt or "
            "last.ckpt of `skysense finetune` with task: detection or oriented_detection"
        )
    encoder = SkySense(SkySenseConfig.from_dict(meta["encoder"]))
    model = build_detector(
        meta["task"], encoder, len(meta["classes"]), from_dict(DetectionHeadConfig, meta["head"])
    )
    model.load_state_dict(ck["model"])
    return model.eval(), from_dict(DetectionConfig, ck["config"]), meta


def detection_task_of(config: str | Path, overrides: Sequence[str] = ()) -> bool:
    """Whether a fine-tuning config (with its overrides) asks for a detection task."""
    from skysense.engine.config import apply_overrides, read_yaml

    return apply_overrides(read_yaml(config), overrides).get("task") in TASKS


def run_detection_finetune(args: Any) -> int:
    """``skysense finetune`` of a detection config (``args`` as parsed by :mod:`skysense.tasks.cli`)."""
    from skysense.engine.config import load_config
    from skysense.engine.distributed import exit_distributed
    from skysense.runtime import apply_threads
    from skysense.tasks.cli import report_run

    cfg = load_config(DetectionConfig, args.config, args.overrides)
    apply_threads(args.threads)
    init = cfg.weights or f"random init ({cfg.preset})"
    print(
        f"finetune: {cfg.task} on {cfg.data.dataset} at {cfg.data.size} px, from {init}, mode {cfg.mode}, "
        f"{cfg.steps} steps of {cfg.batch_size}, outputs in {cfg.out_dir}",
        flush=True,
    )
    result = finetune_detection(cfg, resume=args.resume, overwrite=args.overwrite)
    exit_distributed()
    report_run(result, cfg.out_dir, "images")
    return 0
