"""Scene-classification sets (AID layout) held in memory as one uint8 array, for pre-training and probes.

A linear probe or a CPU pre-training run reads every scene many times; decoding thousands of JPEGs
each epoch would cost more than the tiny encoder. :func:`load_scenes` decodes a split once, resizes
every scene to ``size`` x ``size`` (antialiased bilinear) and keeps ``images`` (N, 3, S, S) uint8.

The split is the hash split of :mod:`skysense.data.splits` on the sample id ``<class>/<file>`` with
:data:`PROBE_FRACTIONS` (60 % train, 10 % val, 30 % test, seed 0), so every number quoted on AID
here names the same images on every machine.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from skysense.bands import NORM_STATS
from skysense.data.datasets import SceneClassification

PROBE_FRACTIONS: tuple[float, float, float] = (0.6, 0.1, 0.3)


@dataclass
class Scenes:
    """``images`` (N, 3, S, S) uint8, ``labels`` (N,) int64, ``ids`` and ``classes`` (sorted folders)."""

    images: Tensor
    labels: Tensor
    ids: list[str]
    classes: list[str]


def load_scenes(
    root: str | Path,
    split: str | None,
    size: int,
    fractions: tuple[float, float, float] = PROBE_FRACTIONS,
    progress: bool = True,
) -> Scenes:
    """The scenes of ``split`` (``train``/``val``/``test``, None = all) of an AID-style folder, resized.

    Values above 255 (16-bit images) are refused, naming the file; an empty class folder stays a class.
    """
    ds = SceneClassification(root, split=split, fractions=fractions)
    if len(ds) == 0:
        raise ValueError(f"{root}: no images in split {split!r}")

    def one(i: int) -> tuple[Tensor, int, str]:
        s = ds[i]
        top = float(s["hr"].max())
        if top > 255:  # clamping would turn the scene white without a word
            m = s["meta"]["hr"]
            raise ValueError(
                f"{m['path']}: {m['dtype']} values up to {top:g}; scenes are 8-bit (0-255): convert the "
                "images to 8 bits first (e.g. 16-bit x 255/65535, 12-bit x 255/4095)"
            )
        x = s["hr"][:3].unsqueeze(0)  # (1, 3, H, W) 0-255
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x[0].round().clamp(0, 255).to(torch.uint8), int(s["label"]), s["meta"]["id"]

    with ThreadPoolExecutor(max_workers=4) as pool:  # rasterio decodes without the GIL
        rows = list(
            tqdm(pool.map(one, range(len(ds))), total=len(ds), disable=not progress, desc=f"AID {split}")
        )
    return Scenes(
        torch.stack([r[0] for r in rows]),
        torch.tensor([r[1] for r in rows], dtype=torch.int64),
        [r[2] for r in rows],
        list(ds.classes),
    )


def per_class(scenes: Scenes, n: int) -> Scenes:
    """The first ``n`` scenes of every class (in id order), for quick runs; ``n <= 0`` keeps all."""
    if n <= 0:
        return scenes
    counts: dict[int, int] = {}
    keep = []
    for i, y in enumerate(scenes.labels.tolist()):
        counts[y] = counts.get(y, 0) + 1
        if counts[y] <= n:
            keep.append(i)
    idx = torch.tensor(keep, dtype=torch.int64)
    return Scenes(scenes.images[idx], scenes.labels[idx], [scenes.ids[i] for i in keep], scenes.classes)


def normalise_hr(images: Tensor) -> Tensor:
    """uint8 (..., 3, H, W) -> float32 with the spec's hr mean/std (the encoder's input)."""
    st = NORM_STATS["hr"]
    mean = torch.tensor(st.mean[:3]).view(3, 1, 1)
    std = torch.tensor(st.std[:3]).view(3, 1, 1)
    return (images.float() - mean) / std


class SceneSamples(torch.utils.data.Dataset):
    """Sample dicts ``{"hr": (3, S, S) normalised}`` of a :class:`Scenes` (for the pre-training loop)."""

    def __init__(self, scenes: Scenes) -> None:
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"hr": normalise_hr(self.scenes.images[i])}
