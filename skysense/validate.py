"""The per-modality input checks shared by the encoder and a checkpoint's input contract.

:meth:`SkySense.check_inputs <skysense.models.skysense.SkySense.check_inputs>` and
:meth:`InputContract.check_sample <skysense.checkpoint.InputContract.check_sample>` both run
:func:`check_modalities` (which modalities, tensor type and dtype, layout, band count, one batch
size, the padding mask and dates of a time series) and add only their own checks: the encoder its
key names, non-finite values, ``hr_dates`` and the location; the contract whether values look
normalised. Errors name the key, what was found and what to do.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from skysense.config import MODALITIES, SERIES
from skysense.dates import check_days

LAYOUT = {"hr": "(B, C, H, W)", "s2": "(B, T, C, H, W)", "s1": "(B, T, C, H, W)"}
NDIM = {"hr": 4, "s2": 5, "s1": 5}


@dataclass(frozen=True)
class Takes:
    """What the model or checkpoint takes for one modality: ``bands`` channels, and where known
    their names in order and their units before normalisation (for the messages)."""

    bands: int
    names: tuple[str, ...] = ()
    units: str = ""


def check_modalities(
    sample: Mapping[str, Any],
    takes: Mapping[str, Takes],
    *,
    owner: str,
    dated: Collection[str] = (),
    fix: str = "normalise it first",
) -> tuple[list[str], int | None]:
    """Check every modality of ``sample`` against ``takes``; -> (modalities present, batch size).

    ``owner``: what takes the input, in messages ("the model (tiny)", "the checkpoint");
    ``dated``: the series whose ``<mod>_dates`` are required; ``fix``: how to normalise a
    modality (``{m}`` is replaced by its name). Raises ValueError/TypeError."""
    present = [m for m in MODALITIES if m in sample]
    batch: int | None = None
    for m in present:
        x = _check_tensor(m, sample[m], takes, owner, fix.format(m=m))
        if batch is None:
            batch = x.shape[0]
        elif x.shape[0] != batch:
            raise ValueError(f"batch sizes differ: {m} has {x.shape[0]}, another modality {batch}")
        if m in SERIES:
            check_series(sample, m, x.shape[0], x.shape[1], required=m in dated, owner=owner)
    return present, batch


def _check_tensor(m: str, x: Any, takes: Mapping[str, Takes], owner: str, fix: str) -> Tensor:
    """Built modality, floating-point tensor, layout, band count."""
    if m not in takes:
        raise ValueError(f"{m} was given but {owner} has no {m} encoder; it takes {list(takes)}")
    want = takes[m]
    if not isinstance(x, Tensor):
        raise TypeError(f"{m} must be a floating-point torch.Tensor, got {type(x).__name__}; {fix}")
    if not x.is_floating_point():
        raw = f"raw {want.units} values? " if want.units else ""
        raise TypeError(
            f"{m} is {x.dtype}: {raw}{owner} takes floating-point inputs, normalised per band; {fix}"
        )
    if x.dim() != NDIM[m]:
        raise ValueError(f"{m} must have shape {LAYOUT[m]}, got {tuple(x.shape)} ({x.dim()}-D)")
    if x.shape[-3] != want.bands:
        names = f": {', '.join(want.names)} (in this order{', ' + want.units if want.units else ''})"
        raise ValueError(
            f"{m} has {x.shape[-3]} bands but {owner} expects {want.bands}"
            f"{names if want.names else ''}; select/reorder the bands of your data"
        )
    return x


def check_series(
    sample: Mapping[str, Any], m: str, b: int, t: int, *, required: bool, owner: str = "the model"
) -> None:
    """``<m>_mask`` (B, T) bool if given; ``<m>_dates`` (B, T) integer days, present if ``required``."""
    mask = sample.get(f"{m}_mask")
    if mask is not None and (
        not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (b, t)
    ):
        raise ValueError(f"{m}_mask must be a bool tensor of shape ({b}, {t}), True = padded step")
    key = f"{m}_dates"
    if key not in sample:
        if required:
            raise ValueError(
                f"{key} (B, T) days since 1970-01-01 is required: {owner} encodes the acquisition dates "
                f"of {m} (DTPE)"
            )
        return
    days = sample[key]
    if not isinstance(days, Tensor) or days.shape != (b, t):
        shape = tuple(days.shape) if isinstance(days, Tensor) else type(days).__name__
        raise ValueError(f"{key} must have shape (B, T) = ({b}, {t}) to match {m}, got {shape}")
    check_days(days[~mask] if mask is not None else days, key)


__all__ = ["LAYOUT", "NDIM", "Takes", "check_modalities", "check_series"]
