"""DOTA / VOC AP against hand-computed precision-recall tables, and the COCO mAP of simple cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skysense.detection.boxes import hbb_to_obb
from skysense.detection.evaluation import coco_map, dota_map, voc_ap
from skysense.detection.plots import draw_detections, plot_pr_curves

B = torch.tensor


def gt(boxes: list[list[float]], labels: list[int], difficult: list[bool] | None = None) -> dict:
    out = {"boxes": B(boxes).view(-1, 4), "labels": B(labels, dtype=torch.int64)}
    if difficult is not None:
        out["difficult"] = B(difficult, dtype=torch.bool)
    return out


def det(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {"boxes": B(boxes).view(-1, 4), "scores": B(scores), "labels": B(labels, dtype=torch.int64)}


G1, G2, G3 = [0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [0.0, 0.0, 10.0, 10.0]
FAR = [50.0, 50.0, 60.0, 60.0]
# Image A holds G1 and G2, image B holds G3 (all class 0). Detections, by falling score:
#   score  image  box        match          TP FP   cum TP  cum FP  recall  precision
#   0.9    A      = G1       G1             1  0    1       0       1/3     1
#   0.8    B      far away   none           0  1    1       1       1/3     1/2
#   0.7    A      = G1       G1 again (dup) 0  1    1       2       1/3     1/3
#   0.6    B      = G3       G3             1  0    2       2       2/3     1/2
#   0.5    A      = G2       G2             1  0    3       2       1       3/5
# 11-point AP: recall >= 0, .1, .2, .3 -> best precision 1; >= .4, .5, .6 -> 3/5; >= .7, .8, .9, 1 -> 3/5
#   = (4 * 1 + 7 * 0.6) / 11 = 8.2 / 11
# all-point AP: envelope 1 on (0, 1/3], 3/5 on (1/3, 1] -> 1/3 + 2/3 * 3/5 = 11/15
GTS = [gt([G1, G2], [0, 0]), gt([G3], [0])]
DETS = [det([G1, G1, G2], [0.9, 0.7, 0.5], [0, 0, 0]), det([FAR, G3], [0.8, 0.6], [0, 0])]


def test_hand_computed_pr_table_and_ap() -> None:
    r = dota_map(DETS, GTS, num_classes=1)
    torch.testing.assert_close(r["recall"][0], B([1 / 3, 1 / 3, 1 / 3, 2 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(r["precision"][0], B([1.0, 1 / 2, 1 / 3, 1 / 2, 3 / 5], dtype=torch.float64))
    assert r["ap"][0] == pytest.approx(8.2 / 11) and r["map"] == pytest.approx(8.2 / 11)
    assert (r["num_gt"], r["num_det"]) == ([3], [5])
    assert dota_map(DETS, GTS, 1, use_07_metric=False)["map"] == pytest.approx(11 / 15)


def test_oriented_boxes_give_the_same_table() -> None:
    gts = [dict(g, boxes=hbb_to_obb(g["boxes"])) for g in GTS]
    dets = [dict(d, boxes=hbb_to_obb(d["boxes"])) for d in DETS]
    assert dota_map(dets, gts, 1)["map"] == pytest.approx(8.2 / 11)
    # a turned box matches its own copy, not the horizontal envelope around it
    turned = B([[50.0, 50.0, 40.0, 4.0, math.pi / 4]])
    envelope = B([[50.0, 50.0, 2 * 15.556349, 2 * 15.556349, 0.0]])
    truth = [{"boxes": turned, "labels": B([0])}]
    assert dota_map([{"boxes": turned, "scores": B([1.0]), "labels": B([0])}], truth, 1)["map"] == 1.0
    assert dota_map([{"boxes": envelope, "scores": B([1.0]), "labels": B([0])}], truth, 1)["map"] == 0.0


def test_duplicate_is_a_false_positive() -> None:
    r = dota_map([det([G1, G1], [0.9, 0.8], [0, 0])], [gt([G1], [0])], 1)
    torch.testing.assert_close(r["precision"][0], B([1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(r["recall"][0], B([1.0, 1.0], dtype=torch.float64))
    assert r["map"] == 1.0  # VOC's AP takes the best precision at each recall: the duplicate comes after


def test_difficult_truth_is_neither_tp_nor_fp() -> None:
    # G2 difficult: the 0.5 detection on it is dropped from the counts, and recall is over 2 boxes
    gts = [gt([G1, G2], [0, 0], [False, True]), gt([G3], [0])]
    r = dota_map(DETS, gts, 1)
    assert r["num_gt"] == [2]
    # points: TP, FP, FP(dup), TP, neither -> recall 1/2, 1/2, 1/2, 1, 1; precision 1, 1/2, 1/3, 1/2, 1/2
    torch.testing.assert_close(r["recall"][0], B([0.5, 0.5, 0.5, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(r["precision"][0], B([1.0, 0.5, 1 / 3, 0.5, 0.5], dtype=torch.float64))
    assert r["map"] == pytest.approx((6 * 1 + 5 * 0.5) / 11)
    # a detection of only a difficult box: no positive at all, the class has no AP
    only = dota_map([det([G2], [0.9], [0])], [gt([G2], [0], [True])], 1)
    assert math.isnan(only["ap"][0]) and math.isnan(only["map"])


def test_empty_images_and_classes_without_truth() -> None:
    gts = [gt([], []), gt([G1], [1]), gt([], [])]
    dets = [det([], [], []), det([G1], [0.8], [1]), det([FAR], [0.9], [2])]
    r = dota_map(dets, gts, num_classes=3)
    assert math.isnan(r["ap"][0]) and r["ap"][1] == 1.0 and math.isnan(r["ap"][2])
    assert r["map"] == 1.0  # the mean over classes with ground truth only
    misses = dota_map([det([FAR], [0.9], [1])], [gt([G1], [1])], 2)  # an FP in an image with truth
    assert misses["ap"][1] == 0.0
    none = dota_map([det([], [], [])], [gt([], [])], 2)
    assert math.isnan(none["map"]) and none["num_det"] == [0, 0]


def test_iou_must_exceed_the_threshold() -> None:
    half = [0.0, 0.0, 10.0, 5.0]  # IoU with G1 exactly 0.5: the devkit asks for more
    assert dota_map([det([half], [1.0], [0])], [gt([G1], [0])], 1)["map"] == 0.0
    assert dota_map([det([half], [1.0], [0])], [gt([G1], [0])], 1, iou_threshold=0.49)["map"] == 1.0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="2 images of detections but 1 of ground truth"):
        dota_map(DETS, GTS[:1], 1)
    with pytest.raises(ValueError, match="labels must lie in 0..0"):
        dota_map([det([G1], [1.0], [3])], [gt([G1], [0])], 1)
    with pytest.raises(ValueError, match="all be \\(N, 4\\) xyxy or all \\(N, 5\\)"):
        dota_map([{"boxes": hbb_to_obb(B([G1])), "scores": B([1.0]), "labels": B([0])}], [gt([G1], [0])], 1)


def test_voc_ap_all_point_by_hand() -> None:
    # recall 0.5 at precision 1, then recall 1 at precision 0.5: area 0.5 * 1 + 0.5 * 0.5
    assert voc_ap(B([0.5, 1.0]), B([1.0, 0.5]), use_07_metric=False) == pytest.approx(0.75)
    # 11-point: recall >= 0 .. 0.5 -> 1 (6 points), >= 0.6 .. 1 -> 0.5 (5 points)
    assert voc_ap(B([0.5, 1.0]), B([1.0, 0.5])) == pytest.approx((6 + 2.5) / 11)


@pytest.mark.slow  # importing torchmetrics.detection alone takes seconds
def test_coco_map_of_one_box_at_iou_0_625() -> None:
    # IoU 62.5 / 100: matched at COCO thresholds 0.5, 0.55, 0.6 of the ten (0.5:0.05:0.95)
    r = coco_map([det([[0.0, 0.0, 10.0, 6.25]], [0.9], [1])], [gt([G1], [1])], num_classes=3)
    assert r["map"] == pytest.approx(0.3) and r["map_50"] == pytest.approx(1.0) and r["map_75"] == 0.0
    assert math.isnan(r["per_class"][0]) and r["per_class"][1] == pytest.approx(0.3)
    crowd = coco_map([det([G1], [0.9], [0])], [gt([G1, FAR], [0, 0], [False, True])], 1)
    assert crowd["map"] == pytest.approx(1.0)  # the difficult (crowd) box missed costs nothing


def test_plots_write_pngs(tmp_path: Path) -> None:
    r = dota_map(DETS, GTS, 1)
    p = plot_pr_curves(r, ["plane"], tmp_path / "pr.png")
    assert Image.open(p).size[0] > 100
    image = torch.zeros(3, 60, 80)  # 0-255 values: black
    boxes = B([[40.0, 30.0, 30.0, 10.0, 0.5]])
    q = draw_detections(image, boxes, B([0]), B([0.9]), ["plane"], tmp_path / "d.png")
    drawn = torch.from_numpy(np.array(Image.open(q).convert("RGB"))).float()
    empty = draw_detections(image, boxes[:0], B([], dtype=torch.int64), None, ["plane"], tmp_path / "e.png")
    blank = torch.from_numpy(np.array(Image.open(empty).convert("RGB"))).float()
    assert drawn.sum() > blank.sum()  # the box and its label add colour to the black image
