"""Sample transforms: per-modality normalisation, consistent crops and flips, time-step subsampling.

All transforms take and return one sample dict (batches work too where noted). Spatial transforms
act on every image-like key at once (``hr``, ``s2``, ``s1``, ``hr_pre``, ``hr_post``, ``target``
and the ``*_invalid`` maps); modalities on different grids are cropped at the same *relative*
window, so geo-aligned inputs stay aligned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from skysense.bands import NORM_STATS, STATS_OF, BandStats, load_stats

Sample = dict[str, Any]
IMAGE_KEYS: tuple[str, ...] = ("hr", "s2", "s1", "hr_pre", "hr_post")


def _spatial_keys(sample: Sample) -> list[str]:
    keys = [k for k in IMAGE_KEYS if k in sample] + [
        f"{k}_invalid" for k in IMAGE_KEYS if f"{k}_invalid" in sample
    ]
    return keys + (["target"] if "target" in sample and isinstance(sample["target"], torch.Tensor) else [])


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample


class Normalize:
    """``(x - mean) / std`` per channel of each modality; invalid (and padded) pixels stay exactly 0.

    ``stats``: ``{modality: BandStats}``, a JSON file from ``skysense stats --out`` or ``None`` for
    the spec's constants (:data:`skysense.bands.NORM_STATS`). Where a sample's ``meta`` names its
    bands, they must equal the statistics' bands: normalising NDVI with S2 DN statistics is an error.
    Works on samples and on collated batches (channel axis -3).
    """

    def __init__(self, stats: dict[str, BandStats] | str | Path | None = None) -> None:
        self.stats = (
            NORM_STATS if stats is None else load_stats(stats) if isinstance(stats, (str, Path)) else stats
        )

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for key in IMAGE_KEYS:
            if key not in sample:
                continue
            st = self.stats.get(key) or self.stats.get(STATS_OF[key])
            if st is None:
                raise ValueError(
                    f"no normalisation statistics for modality {key!r} (have {sorted(self.stats)})"
                )
            x = sample[key]
            self._check_bands(sample, key, st, x.shape[-3])
            mean = torch.tensor(st.mean, dtype=x.dtype).view(-1, 1, 1)
            std = torch.tensor(st.std, dtype=x.dtype).view(-1, 1, 1)
            y = (x - mean) / std
            inv = sample.get(f"{key}_invalid")
            if inv is not None:
                y = y.masked_fill(inv.unsqueeze(-3), 0.0)
            out[key] = y
        return out

    @staticmethod
    def _check_bands(sample: Sample, key: str, st: BandStats, channels: int) -> None:
        metas = sample.get("meta")
        metas = metas if isinstance(metas, list) else [metas] if isinstance(metas, dict) else []
        for m in metas:
            bands = (m.get(key) or {}).get("bands") if isinstance(m, dict) else None
            if bands is not None and list(bands) != list(st.bands):
                raise ValueError(
                    f"{key} of sample {m.get('id')} has bands {list(bands)} but the statistics are for "
                    f"{list(st.bands)}; compute matching ones with `skysense stats PATH --out stats.json`"
                )
        if channels != len(st.bands):
            raise ValueError(
                f"{key} has {channels} channels but the statistics have {len(st.bands)} ({list(st.bands)})"
            )


def _crop_all(sample: Sample, top: int, left: int, size: int, ref: str) -> Sample:
    """Crop every spatial key at the window (top, left, size) of ``ref``'s grid, scaled to each key's grid."""
    ref_h, ref_w = sample[ref].shape[-2:]
    out = dict(sample)
    for key in _spatial_keys(sample):
        h, w = sample[key].shape[-2:]
        sy, sx = h / ref_h, w / ref_w
        t, l_ = round(top * sy), round(left * sx)
        out[key] = sample[key][..., t : t + round(size * sy), l_ : l_ + round(size * sx)]
    return out


def _reference(sample: Sample, ref: str | None) -> str:
    keys = [k for k in IMAGE_KEYS if k in sample]
    if ref is None:
        if not keys:
            raise ValueError("no image modality in the sample to crop")
        return keys[0]
    if ref not in sample:
        raise ValueError(f"crop reference {ref!r} not in the sample (has {keys})")
    return ref


class CenterCrop:
    """Central ``size`` x ``size`` window of the reference modality (default: first of hr, s2, s1...)."""

    def __init__(self, size: int, ref: str | None = None) -> None:
        self.size, self.ref = size, ref

    def __call__(self, sample: Sample) -> Sample:
        ref = _reference(sample, self.ref)
        h, w = sample[ref].shape[-2:]
        if self.size > min(h, w):
            raise ValueError(f"crop {self.size} larger than {ref} ({h}x{w})")
        return _crop_all(sample, (h - self.size) // 2, (w - self.size) // 2, self.size, ref)


class RandomCrop(CenterCrop):
    """Random ``size`` x ``size`` window of the reference modality, the same place in every modality."""

    def __call__(self, sample: Sample) -> Sample:
        ref = _reference(sample, self.ref)
        h, w = sample[ref].shape[-2:]
        if self.size > min(h, w):
            raise ValueError(f"crop {self.size} larger than {ref} ({h}x{w})")
        top = int(torch.randint(0, h - self.size + 1, ()).item())
        left = int(torch.randint(0, w - self.size + 1, ()).item())
        return _crop_all(sample, top, left, self.size, ref)


class RandomFlip:
    """Horizontal and vertical flips with probability ``p`` each, applied to all spatial keys together.

    The georeference in ``meta`` describes the unflipped image.
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        dims = [d for d in (-1, -2) if torch.rand(()) < self.p]
        if dims:
            for key in _spatial_keys(sample):
                out[key] = torch.flip(sample[key], dims)
        return out


class SubsampleTime:
    """Keep at most ``max_steps[mod]`` random steps of each series, in date order (paper: s2 20, s1 10)."""

    def __init__(self, max_steps: dict[str, int] | None = None) -> None:
        self.max_steps = max_steps if max_steps is not None else {"s2": 20, "s1": 10}

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for mod, n in self.max_steps.items():
            if mod not in sample or sample[mod].shape[0] <= n:
                continue
            keep = torch.randperm(sample[mod].shape[0])[:n].sort().values
            for key in (mod, f"{mod}_dates", f"{mod}_invalid"):
                if key in sample:
                    out[key] = sample[key][keep]
        return out
