"""Pictures of detection results: precision-recall curves per class and boxes drawn on their image.

Drawn on matplotlib ``Figure`` objects saved as PNG by the Agg renderer: no display, and pyplot's global
backend is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Polygon
from torch import Tensor

from skysense.bands import NORM_STATS
from skysense.detection.formats import box_corners


def plot_pr_curves(result: Mapping[str, Any], class_names: Sequence[str], path: str | Path) -> Path:
    """One PNG of every class's precision-recall curve (from :func:`~skysense.detection.evaluation.dota_map`),
    AP in the legend; classes without ground truth are left out."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for c, name in enumerate(class_names):
        ap = result["ap"][c]
        if math.isnan(ap):
            continue
        rec, prec = result["recall"][c], result["precision"][c]
        ax.step(
            torch.cat([rec.new_zeros(1), rec]),
            torch.cat([prec[:1], prec]),
            where="post",
            label=f"{name} {ap:.3f}",
        )
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"precision-recall per class, mAP {result['map']:.3f}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="class AP", fontsize=8)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _displayable(image: Tensor) -> Tensor:
    """(3, H, W) normalised ``hr`` or 0-255 values -> (H, W, 3) in 0..1 for imshow."""
    x = image[:3].detach().float().cpu()
    if float(x.min()) < 0:  # normalised: undo the hr mean/std
        st = NORM_STATS["hr"]
        x = x * torch.tensor(st.std[:3]).view(3, 1, 1) + torch.tensor(st.mean[:3]).view(3, 1, 1)
    return (x / 255).clamp(0, 1).permute(1, 2, 0)


def draw_detections(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor | None,
    class_names: Sequence[str],
    path: str | Path,
    min_score: float = 0.0,
) -> Path:
    """The image with its boxes drawn, one colour per class, ``class score`` beside each box; a PNG.

    ``image`` (3, H, W) normalised ``hr`` (values below 0) or 0-255; ``boxes`` (N, 4) xyxy or (N, 5)
    oriented (drawn as their turned rectangles); boxes scoring under ``min_score`` are left out.
    """
    boxes = boxes.detach().float().cpu()
    corners = box_corners(boxes)
    h, w = image.shape[-2:]
    fig = Figure(figsize=(8, 8 * h / w))
    ax = fig.subplots()
    ax.imshow(_displayable(image).numpy())
    colours = matplotlib.colormaps["tab20"]
    for k in range(len(boxes)):
        s = None if scores is None else float(scores[k])
        if s is not None and s < min_score:
            continue
        c = int(labels[k])
        ax.add_patch(Polygon(corners[k].numpy(), closed=True, fill=False, lw=1.2, ec=colours(c % 20)))
        text = class_names[c] + ("" if s is None else f" {s:.2f}")
        x, y = corners[k, :, 0].min(), corners[k, :, 1].min()
        ax.text(
            float(x),
            float(y) - 2,
            text,
            fontsize=6,
            color="white",
            bbox={"fc": colours(c % 20), "pad": 1, "lw": 0},
        )
    ax.set(xlim=(0, w), ylim=(h, 0))
    ax.axis("off")
    return _save(fig, path)
