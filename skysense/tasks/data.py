"""Downstream data (paper Sec. 4): labelled samples of each task, split without spatial overlap.

Every builder returns normalised sample dicts (model keys + ``label`` or ``target``) of the splits it is
asked for, held in memory (the shared sets are small). Splits:

- scene and pixel-series sets: the project's hash split of the sample id (:mod:`skysense.data.splits`);
- segmentation tiles, change pairs and single chips: **quadrants** of every image (top-left and
  top-right train, bottom-left validation, bottom-right test) cut into non-overlapping ``size`` tiles,
  so no test pixel is ever inside a training crop (a random crop split would leak neighbours).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from skysense.data.datasets import IGNORE_INDEX
from skysense.data.root import data_root
from skysense.data.sources import MODEL_KEYS as SOURCE_KEYS

SPLITS = ("train", "val", "test")
QUADRANTS = {
    "train": (0, 1),
    "val": (2,),
    "test": (3,),
}  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
MODEL_KEYS = (*SOURCE_KEYS, "hr_pre", "hr_post")  # the encoder's inputs, and the two dates of a change pair


@dataclass
class TaskDataConfig:
    """Which labelled data a fine-tuning run reads (see :data:`DATASETS`)."""

    dataset: str = "aid"
    root: str = ""  # default: the dataset's folder under $SKYSENSE_DATA (../shared/data)
    modalities: tuple[str, ...] = ("hr",)
    size: int = 64  # hr: scene side after resizing, or tile side; s2/s1: tile side in pixels
    per_class: int = 0  # scenes: at most this many training scenes per class (0 = all)
    fractions: tuple[float, ...] = (0.6, 0.1, 0.3)  # hash splits (train, val, test)
    num_dates: dict[str, int] = field(default_factory=dict)  # series: keep this many dates (0/absent = all)


@dataclass
class TaskData:
    """Samples per split, the class names and what the task predicts."""

    splits: dict[str, list[dict[str, Any]]]
    classes: list[str]
    kind: str  # classification | multilabel | segmentation | change

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


def _root(cfg: TaskDataConfig, default: str) -> Path:
    return Path(cfg.root) if cfg.root else data_root() / default


def _hr(x: Tensor) -> Tensor:
    """hr 0-255 (C, H, W) -> the spec's normalisation on its first 3 bands."""
    from skysense.data.scenes import normalise_hr

    return normalise_hr(x[:3].clamp(0, 255))


def quadrant_tiles(sample: dict[str, Any], size: int, split: str) -> list[dict[str, Any]]:
    """Non-overlapping ``size`` tiles of the quadrants of ``split`` (see the module doc).
    Spatial keys are those whose last two dims are the image's (H, W): images, series, targets. Tiles
    without a labelled pixel are dropped."""
    h, w = sample["target"].shape[-2:]
    out = []
    for q in QUADRANTS[split]:
        top0, left0 = (q // 2) * (h // 2), (q % 2) * (w // 2)
        for top in range(top0, top0 + h // 2 - size + 1, size):
            for left in range(left0, left0 + w // 2 - size + 1, size):
                tile = {}
                for k, v in sample.items():
                    spatial = isinstance(v, Tensor) and v.ndim >= 2 and tuple(v.shape[-2:]) == (h, w)
                    tile[k] = v[..., top : top + size, left : left + size].clone() if spatial else v
                if (tile["target"] != IGNORE_INDEX).any():
                    out.append(tile)
    return out


def _keep(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sample.items() if k in MODEL_KEYS or k in ("label", "target")}


# ----------------------------------------------------------------------------- one builder per dataset


def _scenes(cfg: TaskDataConfig, which: Sequence[str]) -> TaskData:
    from skysense.data.scenes import load_scenes, per_class

    root = _root(cfg, "aid")
    splits, classes = {}, []
    for split in which:
        scenes = load_scenes(root, split, cfg.size, tuple(cfg.fractions), progress=False)  # type: ignore[arg-type]
        if split == "train":
            scenes = per_class(scenes, cfg.per_class)
        classes = scenes.classes
        splits[split] = [{"hr": _hr(x), "label": y} for x, y in zip(scenes.images, scenes.labels)]
    return TaskData(splits, classes, "classification")


def _segmentation(
    default: str, reduce_zero_label: bool, classes: Sequence[str]
) -> Callable[[TaskDataConfig, Sequence[str]], TaskData]:
    def build(cfg: TaskDataConfig, which: Sequence[str]) -> TaskData:
        from skysense.data import Segmentation

        ds = Segmentation(_root(cfg, default), reduce_zero_label=reduce_zero_label)
        splits: dict[str, list[dict[str, Any]]] = {s: [] for s in which}
        for i in range(len(ds)):
            s = ds[i]
            sample = {"hr": _hr(s["hr"]), "target": s["target"]}
            for split in which:
                splits[split] += quadrant_tiles(sample, cfg.size, split)
        return TaskData(splits, list(classes), "segmentation")

    return build


LOVEDA = ("background", "building", "road", "water", "barren", "forest", "agriculture")
POTSDAM = ("impervious surface", "building", "low vegetation", "tree", "car", "clutter")


def _change(cfg: TaskDataConfig, which: Sequence[str]) -> TaskData:
    from skysense.data import ChangeDetection

    ds = ChangeDetection(_root(cfg, "levir_cd"))
    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in which}
    for i in range(len(ds)):
        s = ds[i]
        pair = {"hr_pre": _hr(s["hr_pre"]), "hr_post": _hr(s["hr_post"]), "target": s["target"]}
        for split in which:
            splits[split] += quadrant_tiles(pair, cfg.size, split)
    return TaskData(splits, ["no change", "change"], "change")


def _sen1floods11(cfg: TaskDataConfig, which: Sequence[str]) -> TaskData:
    from skysense.data import Normalize, Sen1Floods11

    mods = tuple(m for m in ("s2", "s1") if m in cfg.modalities)
    ds = Sen1Floods11(_root(cfg, "sen1floods11"), modalities=mods)
    norm = Normalize()
    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in which}
    for i in range(len(ds)):
        sample = _keep(norm(ds[i]))
        for split in which:
            splits[split] += quadrant_tiles(sample, cfg.size, split)
    return TaskData(splits, list(Sen1Floods11.classes), "segmentation")


def _slovenia(cfg: TaskDataConfig, which: Sequence[str]) -> TaskData:
    from skysense.data import EOPatchDataset
    from skysense.data.sources import standardise_series

    ds = EOPatchDataset(_root(cfg, "eolearn_slovenia/TestEOPatch"))
    sample = _keep(standardise_series(ds[0]))
    sample = _subsample_dates(sample, cfg)
    classes = [c for c in (ds.classes or [str(i) for i in range(9)])]
    splits = {split: quadrant_tiles(sample, cfg.size, split) for split in which}
    return TaskData(splits, classes, "segmentation")


def _sits(cfg: TaskDataConfig, which: Sequence[str]) -> TaskData:
    from skysense.data import PixelTimeSeries

    path = _root(cfg, "sits/samples_modis_ndvi.npz")
    splits: dict[str, list[dict[str, Any]]] = {}
    classes: list[str] = []
    for split in which:
        ds = PixelTimeSeries(path, split=split, fractions=tuple(cfg.fractions))
        classes = list(ds.classes)
        splits[split] = [_subsample_dates(_standardised_pixel(_keep(ds[i])), cfg) for i in range(len(ds))]
    return TaskData(splits, classes, "classification")


def _standardised_pixel(sample: dict[str, Any]) -> dict[str, Any]:
    x = sample["s2"]  # (T, C, 1, 1): one pixel's series, standardised over its own dates
    sample["s2"] = (x - x.mean(0, keepdim=True)) / x.std(0, keepdim=True).clamp_min(1e-6)
    return sample


def _bigearthnet(cfg: TaskDataConfig, which: Sequence[str]) -> TaskData:
    from skysense.data import BigEarthNetMM, Normalize

    mods = tuple(m for m in ("s2", "s1") if m in cfg.modalities)
    ds = BigEarthNetMM(_root(cfg, "bigearthnet_mm"), modalities=mods)
    norm = Normalize()
    samples = []
    for i in range(len(ds)):
        s = _keep(norm(ds[i]))
        for m in mods:  # patches differ in size by sensor; one common crop
            s[m] = F.interpolate(s[m], size=(cfg.size, cfg.size), mode="bilinear", align_corners=False)
        samples.append(s)
    classes = list(getattr(ds, "classes", [str(i) for i in range(samples[0]["label"].numel())]))
    # 3 patches: every split is all of them (a smoke run of the code path, not a result)
    return TaskData({s: samples for s in which}, classes, "multilabel")


def _subsample_dates(sample: dict[str, Any], cfg: TaskDataConfig) -> dict[str, Any]:
    for m, n in cfg.num_dates.items():
        if m in sample and 0 < n < sample[m].shape[0]:
            idx = torch.linspace(0, sample[m].shape[0] - 1, n).round().long()
            sample[m] = sample[m][idx]
            sample[f"{m}_dates"] = sample[f"{m}_dates"][idx]
    return sample


DATASETS: dict[str, Callable[[TaskDataConfig, Sequence[str]], TaskData]] = {
    "aid": _scenes,
    "scenes": _scenes,  # your own AID-style folder: root/<class>/*.jpg
    "loveda": _segmentation("seg_samples/loveda", True, LOVEDA),
    "potsdam": _segmentation("seg_samples/potsdam", False, POTSDAM),
    "levir_cd": _change,
    "change": _change,  # your own LEVIR-CD-style folder: root/{A,B,label}/<name>.png
    "segmentation": _segmentation("", False, ()),  # your own img_dir/ann_dir folder (classes from the config)
    "sen1floods11": _sen1floods11,
    "slovenia": _slovenia,
    "sits": _sits,
    "bigearthnet": _bigearthnet,
}


def build_task_data(cfg: TaskDataConfig, splits: Sequence[str] = SPLITS) -> TaskData:
    """The samples of ``splits`` only (``evaluate`` scores one: AID decodes a third of its scenes)."""
    if cfg.dataset not in DATASETS:
        raise ValueError(f"data.dataset {cfg.dataset!r}: choose from {sorted(DATASETS)}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits {list(splits)}: choose from {list(SPLITS)}")
    data = DATASETS[cfg.dataset](cfg, tuple(splits))
    empty = [s for s, v in data.splits.items() if not v]
    if empty:
        raise ValueError(
            f"data.dataset {cfg.dataset!r}: no samples in split(s) {empty} at data.size={cfg.size}: "
            "use a smaller size or more data"
        )
    return data
