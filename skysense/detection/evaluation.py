"""Detection accuracy (paper Sec. 4.3): the DOTA / VOC average precision of oriented or horizontal boxes, and
the COCO mAP of horizontal boxes.

Inputs, one entry per image in the same order: detections ``{"boxes", "scores", "labels"}`` (a detector's
eval output) and ground truths ``{"boxes", "labels"}`` with an optional ``"difficult"`` (N,) bool. Boxes are
(N, 4) ``x1, y1, x2, y2`` or (N, 5) ``cx, cy, w, h, angle``, the same kind on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from skysense.detection.boxes import obb_to_hbb
from skysense.detection.rotated_ops import rotated_iou

Boxes = Mapping[str, Any]  # one image's {"boxes", "labels", ...}


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) IoU of (N, 4|5) and (M, 4|5) boxes: torchvision's for horizontal, rotated IoU for oriented."""
    return box_iou(a, b) if a.shape[-1] == 4 else rotated_iou(a, b)


def voc_ap(recall: Tensor, precision: Tensor, use_07_metric: bool = True) -> float:
    """Area under one class's precision-recall points (ordered by falling score).

    ``use_07_metric``: VOC2007's 11-point mean of the best precision at recall >= 0, 0.1, .., 1 (the DOTA
    devkit's task-1 evaluation calls it so; its thresholds come from ``np.arange(0, 1.1, 0.1)``, which puts
    0.3, 0.6 and 0.7 a rounding error higher than here: recall exactly 0.3 counts here, not there).
    Otherwise VOC2010's all-point area under the precision envelope.
    """
    rec, prec = recall.double(), precision.double()
    if use_07_metric:
        best = [
            prec[rec >= k / 10].max() if bool((rec >= k / 10).any()) else prec.new_zeros(())
            for k in range(11)
        ]
        return float(torch.stack(best).sum()) / 11
    mrec = torch.cat([rec.new_zeros(1), rec, rec.new_ones(1)])
    mpre = torch.cat([prec.new_zeros(1), prec, prec.new_zeros(1)])
    mpre = mpre.flip(0).cummax(0).values.flip(0)  # the envelope: best precision at any higher recall
    step = torch.nonzero(mrec[1:] != mrec[:-1]).squeeze(1)
    return float(((mrec[step + 1] - mrec[step]) * mpre[step + 1]).sum())


def _check_inputs(dets: Sequence[Boxes], gts: Sequence[Boxes], num_classes: int) -> None:
    if len(dets) != len(gts):
        raise ValueError(
            f"{len(dets)} images of detections but {len(gts)} of ground truth: give one entry each"
        )
    kinds = {int(x["boxes"].shape[-1]) for x in [*dets, *gts] if len(x["boxes"])}
    if len(kinds) > 1 or not kinds <= {4, 5}:
        raise ValueError(
            f"boxes must all be (N, 4) xyxy or all (N, 5) oriented, got last sizes {sorted(kinds)}"
        )
    for x in [*dets, *gts]:
        y = x["labels"]
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")


def _class_matches(
    dets: Sequence[Boxes], gts: Sequence[Boxes], c: int, iou_threshold: float
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Scores (falling), TP and FP flags of class ``c``'s detections over all images, and its positives.

    Greedy VOC matching in score order: a detection takes the ground truth it overlaps most; IoU above
    the threshold with an unmatched one is a TP, with a matched one (a duplicate) an FP, with a difficult
    one neither; below the threshold, or in an image without ground truth of the class, an FP.
    """
    scores, tp, fp, npos = [], [], [], 0
    for d, g in zip(dets, gts):
        gm, dm = g["labels"] == c, d["labels"] == c
        gb, db, ds = g["boxes"][gm].float(), d["boxes"][dm].float(), d["scores"][dm].float()
        hard = g.get("difficult", torch.zeros(len(g["labels"]), dtype=torch.bool))[gm].bool()
        npos += int((~hard).sum())
        order = torch.sort(ds, descending=True, stable=True).indices
        db, ds = db[order], ds[order]
        t, f = torch.zeros(len(ds), dtype=torch.bool), torch.zeros(len(ds), dtype=torch.bool)
        if len(gb) and len(db):
            best, j = _iou(db, gb).max(dim=1)
            taken = torch.zeros(len(gb), dtype=torch.bool)
            for k in range(len(db)):  # in score order within the image; images never compete for a box
                if float(best[k]) <= iou_threshold:  # the devkit's test: IoU strictly above the threshold
                    f[k] = True
                elif not hard[j[k]]:
                    t[k], f[k] = ~taken[j[k]], taken[j[k]]
                    taken[j[k]] = True
        else:
            f[:] = True
        scores.append(ds)
        tp.append(t)
        fp.append(f)
    s = torch.cat(scores) if scores else torch.zeros(0)
    order = torch.sort(s, descending=True, stable=True).indices
    return s[order], torch.cat(tp)[order] if tp else s.bool(), torch.cat(fp)[order] if fp else s.bool(), npos


def dota_map(
    dets: Sequence[Boxes],
    gts: Sequence[Boxes],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict[str, Any]:
    """DOTA task-1 mAP: VOC average precision per class at IoU > ``iou_threshold``, mean over the classes.

    Follows the DOTA devkit's ``dota_evaluation_task1.py``: the VOC2007 11-point AP (``use_07_metric``,
    the devkit's setting; False gives the all-point area), greedy matching in falling score order (see
    :func:`_class_matches`), difficult ground truths neither TP nor FP and not counted in recall. Oriented
    boxes overlap by the exact rotated-rectangle IoU (the devkit intersects the labelled quadrilaterals;
    the boxes here are their minimum-area rectangles), horizontal boxes by torchvision's ``box_iou``.

    Returns ``map`` (mean over the classes with a non-difficult ground truth; NaN if none), and per class:
    ``ap`` (NaN without ground truth), ``num_gt``, ``num_det``, ``recall`` and ``precision`` (the curve,
    one point per detection in falling score order).
    """
    _check_inputs(dets, gts, num_classes)
    out: dict[str, Any] = {"ap": [], "num_gt": [], "num_det": [], "recall": [], "precision": []}
    for c in range(num_classes):
        _, tp, fp, npos = _class_matches(dets, gts, c, iou_threshold)
        ctp, cfp = tp.double().cumsum(0), fp.double().cumsum(0)
        rec = ctp / max(npos, 1)
        prec = ctp / (ctp + cfp).clamp_min(torch.finfo(torch.float64).eps)
        out["ap"].append(voc_ap(rec, prec, use_07_metric) if npos else math.nan)
        out["num_gt"].append(npos)
        out["num_det"].append(len(tp))
        out["recall"].append(rec)
        out["precision"].append(prec)
    scored = [a for a in out["ap"] if not math.isnan(a)]
    out["map"] = sum(scored) / len(scored) if scored else math.nan
    return out


def coco_map(dets: Sequence[Boxes], gts: Sequence[Boxes], num_classes: int) -> dict[str, Any]:
    """COCO mAP (IoU 0.5:0.95) of horizontal boxes by torchmetrics' ``MeanAveragePrecision`` (pycocotools).

    Oriented boxes are scored by their horizontal envelopes (COCO has no rotated IoU); difficult ground
    truths are COCO's ``iscrowd``. Returns ``map``, ``map_50``, ``map_75`` and ``per_class`` (num_classes,)
    AP at 0.5:0.95 (NaN for a class without ground truth).
    """
    from torchmetrics.detection import MeanAveragePrecision

    _check_inputs(dets, gts, num_classes)

    def hbb(b: Tensor) -> Tensor:
        b = b.float()
        return obb_to_hbb(b) if b.shape[-1] == 5 else b.reshape(-1, 4)

    metric = MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools"
    )
    preds = [
        {"boxes": hbb(d["boxes"]), "scores": d["scores"].float(), "labels": d["labels"].long()} for d in dets
    ]
    target = [
        {
            "boxes": hbb(g["boxes"]),
            "labels": g["labels"].long(),
            "iscrowd": g.get("difficult", torch.zeros(len(g["labels"]), dtype=torch.bool)).long(),
        }
        for g in gts
    ]
    metric.update(preds, target)
    r = metric.compute()
    per_class = torch.full((num_classes,), math.nan, dtype=torch.float64)
    for c, ap in zip(r["classes"].reshape(-1).tolist(), r["map_per_class"].reshape(-1).tolist()):
        per_class[int(c)] = ap if ap >= 0 else math.nan  # -1: no ground truth of the class
    return {k: float(r[k]) for k in ("map", "map_50", "map_75")} | {"per_class": per_class.tolist()}
