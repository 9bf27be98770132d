"""Scores of a detector on a split (paper Sec. 4.3 metrics): the validation of a detection run and
``skysense evaluate`` of a detection checkpoint, with per-class AP, the precision-recall curves and a few
images with their predicted boxes as PNGs.

The headline is ``map50``: the DOTA / VOC 11-point AP at IoU 0.5 (rotated IoU for oriented boxes, difficult
objects ignored, :func:`~skysense.detection.evaluation.dota_map`), the mean over the classes that have a
ground-truth object in the split; ``ap50/<class>`` per class (a class without one is left out).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from skysense.data.collate import collate

if TYPE_CHECKING:
    from skysense.detection.task import DetectionConfig


@torch.no_grad()
def predict(
    model: nn.Module, samples: Sequence[dict[str, Any]], batch_size: int, device: torch.device
) -> list[dict[str, Tensor]]:
    """The detector's eval-mode output for each sample, on the CPU (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    out: list[dict[str, Tensor]] = []
    for i in range(0, len(samples), batch_size):
        batch = collate([samples[j] for j in range(i, min(i + batch_size, len(samples)))])
        out += [{k: v.cpu() for k, v in o.items()} for o in model(batch["hr"].to(device))]
    model.train(was_training)
    return out


def score_split(
    model: nn.Module,
    samples: Sequence[dict[str, Any]],
    classes: Sequence[str],
    cfg: DetectionConfig,
    device: torch.device,
) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Tensor]]]:
    """``{"map50", "ap50/<class>", ...}``, the full :func:`dota_map` result and the predictions."""
    from skysense.detection.evaluation import dota_map

    preds = predict(model, samples, cfg.eval_batch_size, device)
    truths = [samples[i]["target"] for i in range(len(samples))]
    result = dota_map(preds, truths, len(classes), iou_threshold=0.5)
    scores = {"map50": 0.0 if math.isnan(result["map"]) else float(result["map"])}
    scores |= {f"ap50/{c}": float(a) for c, a in zip(classes, result["ap"]) if not math.isnan(a)}
    scores["detections"] = float(sum(len(p["boxes"]) for p in preds))
    return scores, result, preds


def evaluate_detection(
    checkpoint: str | Path, data_root: str = "", split: str = "test", out_dir: str | Path | None = None
) -> dict[str, Any]:
    """``skysense evaluate`` of a detection checkpoint: the scores of ``split`` (``data_root`` replaces the
    run's data folder) into ``scores_<split>.json``, ``pr_<split>.png`` (precision-recall per class) and
    ``predictions_<split>_<image>.png`` (the first images with their predicted and true boxes) in
    ``out_dir`` (default: the checkpoint's folder)."""
    from skysense.detection.plots import plot_pr_curves
    from skysense.detection.task import detection_split, load_detection_run
    from skysense.files import write_json

    model, cfg, meta = load_detection_run(checkpoint)
    if data_root:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=data_root))
    samples, classes = detection_split(cfg, split)
    if list(classes) != list(meta["classes"]):
        raise ValueError(
            f"{checkpoint} detects {meta['classes']}, the data has {classes}: evaluate on data with the "
            "checkpoint's classes"
        )
    scores, result, preds = score_split(model, samples, classes, cfg, torch.device("cpu"))
    out = Path(out_dir) if out_dir is not None else Path(checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": str(checkpoint), "split": split, "samples": len(samples), "scores": scores}
    write_json(out / f"scores_{split}.json", record)
    plot_pr_curves(result, classes, out / f"pr_{split}.png")
    draw_some(samples, preds, classes, out, split)
    return record


def draw_some(
    samples: Sequence[dict[str, Any]],
    preds: Sequence[dict[str, Tensor]],
    classes: Sequence[str],
    out: Path,
    split: str,
    count: int = 3,
    min_score: float = 0.3,
) -> list[Path]:
    """The first ``count`` images with their predictions scoring at least ``min_score`` (and, beside them,
    their true boxes) as PNGs."""
    from skysense.detection.plots import draw_detections

    paths = []
    for i in range(min(count, len(samples))):
        s, p = samples[i], preds[i]
        stem = f"{split}_{s['image_id']}"
        paths.append(
            draw_detections(
                s["hr"],
                p["boxes"],
                p["labels"],
                p["scores"],
                classes,
                out / f"predictions_{stem}.png",
                min_score=min_score,
            )
        )
        t = s["target"]
        paths.append(
            draw_detections(s["hr"], t["boxes"], t["labels"], None, classes, out / f"truth_{stem}.png")
        )
    return paths
