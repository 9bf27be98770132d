"""Batching of sample dicts: time series padded to the batch's longest T with a (B, T) padding mask.

``collate`` stacks every tensor key; for the time-series modalities (``s2``, ``s1`` and any key with
a ``{mod}_dates`` companion of more than one step) it pads ``{mod}`` (T, C, H, W),
``{mod}_dates`` (T,) and ``{mod}_invalid`` (T, H, W) to the longest T with zeros (invalid: True) and
adds ``{mod}_mask`` (B, T), True on padded steps. ``meta`` stays a list of dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from skysense.config import SERIES


def _ids(samples: Sequence[dict[str, Any]]) -> list[str]:
    return [str(s.get("meta", {}).get("id", i)) for i, s in enumerate(samples)]


def _pad_time(xs: list[torch.Tensor], length: int, value: float | bool) -> torch.Tensor:
    out = xs[0].new_full((len(xs), length, *xs[0].shape[1:]), value)
    for i, x in enumerate(xs):
        out[i, : x.shape[0]] = x
    return out


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """list of sample dicts -> batch dict (see module doc); clear errors for keys or shapes that differ."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    keys = set(samples[0])
    for s, sid in zip(samples[1:], _ids(samples)[1:]):
        if set(s) != keys:
            diff = sorted(keys.symmetric_difference(s))
            raise ValueError(f"sample {sid} has different keys than sample {_ids(samples)[0]}: {diff}")
    batch: dict[str, Any] = {}
    series = [m for m in SERIES if m in keys]
    for mod in series:
        lengths = [s[mod].shape[0] for s in samples]
        t_max = max(lengths)
        rest = {tuple(s[mod].shape[1:]) for s in samples}
        if len(rest) > 1:
            raise ValueError(
                f"{mod}: samples differ in (C, H, W) {sorted(rest)} (ids {_ids(samples)}); crop first"
            )
        batch[mod] = _pad_time([s[mod] for s in samples], t_max, 0.0)
        if f"{mod}_dates" in keys:
            batch[f"{mod}_dates"] = _pad_time([s[f"{mod}_dates"] for s in samples], t_max, 0)
        if f"{mod}_invalid" in keys:
            batch[f"{mod}_invalid"] = _pad_time([s[f"{mod}_invalid"] for s in samples], t_max, True)
        mask = torch.ones(len(samples), t_max, dtype=torch.bool)
        for i, n in enumerate(lengths):
            mask[i, :n] = False
        batch[f"{mod}_mask"] = mask
    for key in sorted(keys):
        if key in batch or key == "meta" or key.endswith("_mask") and key[:-5] in series:
            continue
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"{key}: samples differ in shape {sorted(shapes)} (ids {_ids(samples)}); crop first"
                )
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    batch["meta"] = [s.get("meta", {}) for s in samples]
    return batch
