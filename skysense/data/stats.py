"""Per-band normalisation statistics of a dataset's valid pixels (``skysense stats PATH``).

Mean and std per channel of each modality over every valid pixel (``{mod}_invalid`` False) of
every sample, in the units datasets return; ``hr_pre``/``hr_post`` count as ``hr``. Sums are
float64 around a per-band shift (the first sample's mean) so the variance stays exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from skysense.bands import STATS_OF, BandStats
from skysense.data.datasets import GeoDataset


def compute_stats(
    dataset: GeoDataset, max_samples: int | None = None, progress: bool = True
) -> tuple[dict[str, BandStats], dict[str, int]]:
    """-> ({modality: BandStats}, {modality: valid pixel count}). Evenly spaced samples if ``max_samples``."""
    n = len(dataset)
    idx = (
        range(n)
        if max_samples is None or max_samples >= n
        else np.linspace(0, n - 1, max_samples).round().astype(int)
    )
    acc: dict[str, dict[str, Any]] = {}
    for i in tqdm(idx, desc="stats", disable=not progress, unit="sample"):
        s = dataset[int(i)]
        for key, mod in STATS_OF.items():
            if key not in s:
                continue
            x = s[key].numpy()  # (..., C, H, W)
            c = x.shape[-3]
            valid = ~s[f"{key}_invalid"].numpy()  # (..., H, W)
            v = np.moveaxis(x, -3, 0)[:, valid].astype(np.float64)  # (C, N)
            bands = list(s.get("meta", {}).get(key, {}).get("bands") or [f"band{j + 1}" for j in range(c)])
            a = acc.setdefault(
                mod, {"bands": bands, "n": 0, "shift": None, "s": np.zeros(c), "ss": np.zeros(c)}
            )
            if a["bands"] != bands:
                raise ValueError(
                    f"sample {s['meta'].get('id')}: {key} bands {bands} differ from earlier {a['bands']}; "
                    "statistics need samples with the same bands (files of one sensor)"
                )
            if v.shape[1] == 0:
                continue
            if a["shift"] is None:
                a["shift"] = v.mean(axis=1)
            d = v - a["shift"][:, None]
            a["n"] += d.shape[1]
            a["s"] += d.sum(axis=1)
            a["ss"] += (d * d).sum(axis=1)
    stats, counts = {}, {}
    for mod, a in acc.items():
        if a["n"] == 0:
            raise ValueError(
                f"{dataset.root}: no valid {mod} pixel in the samples read; cannot compute statistics"
            )
        m = a["s"] / a["n"]
        var = np.maximum(a["ss"] / a["n"] - m * m, 0.0)
        std = np.sqrt(var)
        std[std == 0] = 1.0  # a constant band: keep Normalize finite
        stats[mod] = BandStats(
            tuple(a["bands"]), tuple(float(x) for x in m + a["shift"]), tuple(float(x) for x in std)
        )
        counts[mod] = int(a["n"])
    return stats, counts
