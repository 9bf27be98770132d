"""Quick-look PNG montage of a few samples of a dataset (``skysense data inspect PATH --png out.png``).

One row per sample, one panel per image modality (``hr`` RGB; ``s2`` true colour B4-B3-B2 or its
first band; ``s1`` VV in dB; the first date of a series) and the target; 2-98 % stretch on the
valid pixels, invalid pixels shown black.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PANELS = ("hr", "hr_pre", "hr_post", "s2", "s1")


def _rgb(sample: dict[str, Any], key: str) -> tuple[np.ndarray, str]:
    """(H, W, 3) or (H, W) image in [0, 1] of one modality and its panel title."""
    x = sample[key].numpy()
    inv = sample[f"{key}_invalid"].numpy() if f"{key}_invalid" in sample else np.zeros(x.shape[-2:], bool)
    title = key
    if x.ndim == 4:  # (T, C, H, W): first date
        x, inv, title = x[0], inv[0], f"{key} (date 1 of {x.shape[0]})"
    bands = list(sample.get("meta", {}).get(key, {}).get("bands") or [])
    if key == "s2" and {"B4", "B3", "B2"} <= set(bands):
        x = x[[bands.index(b) for b in ("B4", "B3", "B2")]]
    elif key == "s1" or x.shape[0] < 3:
        x = x[:1]
    else:
        x = x[:3]
    valid = x[:, ~inv]
    lo, hi = np.percentile(valid, [2, 98]) if valid.size else (0.0, 1.0)
    img = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
    img[:, inv] = 0
    return (img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0]), title


def montage(path: str | Path, out: str | Path, layout: str | None = None, n: int = 4) -> Path:
    """Write a PNG of ``n`` evenly spaced samples of the dataset at ``path``; returns the PNG path."""
    from skysense.data.inspect import open_dataset, spread

    ds = open_dataset(path, layout)
    picks = spread(len(ds), n)
    samples = [ds[i] for i in picks]
    keys = [k for k in PANELS if k in samples[0] and samples[0][k].ndim >= 3 and samples[0][k].shape[-1] > 1]
    cols = keys + (["target"] if "target" in samples[0] else [])
    if not cols:
        raise ValueError(f"{path}: no image modality to draw (pixel time series have no picture)")
    fig, axes = plt.subplots(
        len(samples), len(cols), figsize=(3 * len(cols), 3 * len(samples)), squeeze=False
    )
    for row, s in zip(axes, samples):
        for ax, key in zip(row, cols):
            if key == "target":
                t = s["target"].numpy().astype(float)
                t[t < 0] = np.nan
                ax.imshow(t, cmap="tab10", interpolation="nearest")
                ax.set_title("target (-1 blank)", fontsize=8)
            else:
                img, title = _rgb(s, key)
                ax.imshow(img, cmap="gray", interpolation="nearest")
                ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(str(s["meta"].get("id"))[:30], fontsize=7)
    fig.suptitle(f"{path} ({len(ds)} samples)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
