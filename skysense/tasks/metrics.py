"""Downstream metrics (paper Sec. 4): OA, mAP, mIoU / mF1, change F1 / IoU, through torchmetrics.

One :class:`Evaluator` per task kind accumulates a split batch by batch and returns named scores:

- ``classification``: ``oa`` (overall accuracy), ``macc`` and ``acc/<class>`` (per-class accuracy);
- ``multilabel``: ``map`` (macro average precision) and ``f1`` (macro F1 at 0.5);
- ``segmentation``: ``miou``, ``mf1``, ``oa``, ``iou/<class>``; classes with no pixel in the labels
  nor the predictions are left out of the means (a 4-tile test split rarely holds every class);
- ``change``: ``precision``, ``recall``, ``f1`` and ``iou`` of the change class.

Pixels labelled ``ignore_index`` (nodata, unlabelled) count nowhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

KINDS = ("classification", "multilabel", "segmentation", "change")
HEADLINE = {"classification": "oa", "multilabel": "map", "segmentation": "miou", "change": "f1"}


class Evaluator:
    """Scores of one split (see the module doc); ``confusion`` is the (K, K) matrix, rows = truth."""

    def __init__(self, kind: str, classes: Sequence[str], ignore_index: int = -1) -> None:
        import torchmetrics.classification as tmc

        if kind not in KINDS:
            raise ValueError(f"task {kind!r}: use one of {KINDS}")
        self.kind, self.classes, k = kind, list(classes), len(classes)
        if kind == "multilabel":
            self.metrics = {
                "map": tmc.MultilabelAveragePrecision(k, average="macro"),
                "f1": tmc.MultilabelF1Score(k, average="macro"),
            }
        elif kind == "change":
            self.metrics = {
                "precision": tmc.BinaryPrecision(ignore_index=ignore_index),
                "recall": tmc.BinaryRecall(ignore_index=ignore_index),
                "f1": tmc.BinaryF1Score(ignore_index=ignore_index),
                "iou": tmc.BinaryJaccardIndex(ignore_index=ignore_index),
            }
        else:
            self.metrics = {"confusion": tmc.MulticlassConfusionMatrix(k, ignore_index=ignore_index)}

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        """logits (B, K) / (B, K, H, W) / (B, 1, H, W) for change; target the labels of the batch."""
        if self.kind == "change":
            preds = torch.sigmoid(logits[:, 0].float())
        elif self.kind == "multilabel":
            preds, target = torch.sigmoid(logits.float()), target.round().long()
        else:
            preds = logits.argmax(1)
        for m in self.metrics.values():
            m.update(preds, target)

    def compute(self) -> dict[str, float]:
        if self.kind in ("multilabel", "change"):
            return {k: float(m.compute()) for k, m in self.metrics.items()}
        cm = self.confusion.astype(np.float64)
        tp, truth, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
        if self.kind == "classification":
            acc = np.divide(tp, truth, out=np.full_like(tp, np.nan), where=truth > 0)
            out = {"oa": float(tp.sum() / max(cm.sum(), 1)), "macc": float(np.nanmean(acc))}
            return out | {f"acc/{c}": float(a) for c, a in zip(self.classes, acc)}
        union = truth + predicted - tp
        seen = union > 0
        iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=seen)
        f1 = np.divide(2 * tp, truth + predicted, out=np.full_like(tp, np.nan), where=seen)
        out = {
            "miou": float(np.nanmean(iou)),
            "mf1": float(np.nanmean(f1)),
            "oa": float(tp.sum() / max(cm.sum(), 1)),
        }
        return out | {f"iou/{c}": float(v) for c, v in zip(self.classes, iou)}

    @property
    def confusion(self) -> np.ndarray:
        return self.metrics["confusion"].compute().numpy()
