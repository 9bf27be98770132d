"""Pre-training data: each source name maps to the dataset of its samples, normalised, model keys only.

``data.sources`` of a pre-training config picks them (:data:`SOURCES`); real ones are read from
``data.root`` (default: ``$SKYSENSE_DATA``, else the ``shared/data`` folder beside the repository):

- ``synthetic``: random normalised samples with varying numbers of dates (tests, smoke runs);
- ``folder``: your own geo-aligned rasters ``root/{hr,s2,s1}/*.tif``, read lazily by
  :class:`~skysense.data.pretrain.PretrainDataset` in tiles of ``tile`` s2 pixels (the only source with
  ``hr`` aligned to S1/S2);
- ``sen1floods11`` (the S1+S2 chip cut into tiles), ``bigearthnet`` (S1+S2 patches);
- ``slovenia``: the 68-date NDVI series of the eo-learn patch as a 1-band ``s2`` (set
  ``model.s2.in_chans: 1``);
- ``aid``: ``hr`` scenes of ``split`` resized to ``hr_tile`` (split of :mod:`skysense.data.scenes`).

``synthetic``, ``folder`` and ``aid`` stand alone; the Sentinel sources can be mixed (their tiles are
concatenated in the order given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from skysense.config import MODALITIES, check_ranges
from skysense.data.root import data_root as default_data_root

MODEL_KEYS = ("hr", "s2", "s1", "hr_dates", "s2_dates", "s1_dates", "lat", "lon")


@dataclass
class DataConfig:
    """The samples of a pre-training run (see the module doc for ``sources``)."""

    sources: tuple[str, ...] = ("synthetic",)
    root: str = ""
    modalities: tuple[str, ...] = ("hr", "s2", "s1")  # must be those of the model config
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


def standardise_series(sample: dict[str, Any]) -> dict[str, Any]:
    """A non-S2-DN series (e.g. NDVI) to zero mean, unit std over its valid pixels; invalid -> 0."""
    out = dict(sample)
    x, inv = sample["s2"], sample["s2_invalid"].unsqueeze(-3)  # (T, C, H, W), (T, 1, H, W)
    ok = ~inv.expand_as(x)
    valid = x.transpose(0, 1)[ok.transpose(0, 1)].reshape(x.shape[1], -1)  # (C, n)
    mean, std = valid.mean(1).view(1, -1, 1, 1), valid.std(1).clamp_min(1e-6).view(1, -1, 1, 1)
    out["s2"] = torch.where(ok, (x - mean) / std, torch.zeros_like(x))
    return out


# ----------------------------------------------------------------------------- one builder per source

Samples = Sequence[dict[str, Any]]


def _synthetic(cfg: DataConfig, seed: int) -> Samples:
    return SyntheticDataset(cfg, seed)  # type: ignore[return-value]


def _folder(cfg: DataConfig, seed: int) -> Samples:
    from skysense.data.pretrain import PretrainDataset

    if not cfg.root:
        raise ValueError("data.sources [folder] reads data.root/{hr,s2,s1}/*.tif: set data.root")
    return NormalisedTiles(PretrainDataset(data_root(cfg), modalities=cfg.modalities, size=cfg.tile))  # type: ignore[return-value]


def _aid(cfg: DataConfig, seed: int) -> Samples:
    from skysense.data.scenes import SceneSamples, load_scenes

    if tuple(cfg.modalities) != ("hr",):
        raise ValueError("data.sources [aid] is hr only: set data.modalities [hr] and no other source")
    return SceneSamples(load_scenes(data_root(cfg) / "aid", cfg.split, cfg.hr_tile))  # type: ignore[return-value]


def _series_modalities(cfg: DataConfig) -> tuple[str, ...]:
    if "hr" in cfg.modalities:
        raise ValueError("no real source with hr imagery aligned to S1/S2: use modalities [s2, s1]")
    return tuple(m for m in ("s2", "s1") if m in cfg.modalities)


def _sentinel(name: str) -> Callable[[DataConfig, int], Samples]:
    def build(cfg: DataConfig, seed: int) -> Samples:
        from skysense.data import BigEarthNetMM, Normalize, Sen1Floods11

        mods, root = _series_modalities(cfg), data_root(cfg)
        ds = (
            Sen1Floods11(root / "sen1floods11", modalities=mods)
            if name == "sen1floods11"
            else BigEarthNetMM(root / "bigearthnet_mm", modalities=mods)
        )
        norm = Normalize()
        return [t for i in range(len(ds)) for t in tiles_of(norm(ds[i]), cfg.tile)]

    return build


def _slovenia(cfg: DataConfig, seed: int) -> Samples:
    from skysense.data import EOPatchDataset

    if _series_modalities(cfg) != ("s2",):
        raise ValueError("data.sources slovenia has an s2 (NDVI) series only: data.modalities [s2]")
    patch = EOPatchDataset(data_root(cfg) / "eolearn_slovenia" / "TestEOPatch")[0]
    return tiles_of(standardise_series(patch), cfg.tile)


SOURCES: dict[str, Callable[[DataConfig, int], Samples]] = {
    "synthetic": _synthetic,
    "folder": _folder,
    "aid": _aid,
    "sen1floods11": _sentinel("sen1floods11"),
    "bigearthnet": _sentinel("bigearthnet"),
    "slovenia": _slovenia,
}
STANDALONE = ("synthetic", "folder", "aid")  # sources that cannot be mixed with others


def build_dataset(cfg: DataConfig, seed: int = 0) -> Samples:
    """The pre-training samples of ``cfg.sources`` (Sentinel tiles normalised in memory, the rest lazily)."""
    unknown = [s for s in cfg.sources if s not in SOURCES]
    if unknown or not cfg.sources:
        raise ValueError(f"data.sources {list(cfg.sources)}: choose from {list(SOURCES)}")
    alone = [s for s in cfg.sources if s in STANDALONE]
    if alone and len(cfg.sources) > 1:
        raise ValueError(f"data.sources {list(cfg.sources)}: {alone[0]!r} cannot be mixed with other sources")
    if alone:
        return SOURCES[alone[0]](cfg, seed)
    samples: list[dict[str, Any]] = []
    for src in cfg.sources:
        samples += SOURCES[src](cfg, seed)
    if not samples:
        raise ValueError(
            f"data.tile={cfg.tile}: larger than every image of {list(cfg.sources)}: use a smaller one"
        )
    if len({s["s2"].shape[-3] for s in samples if "s2" in s}) > 1:
        raise ValueError(f"data.sources {list(cfg.sources)}: s2 band counts differ; do not mix slovenia")
    return samples
