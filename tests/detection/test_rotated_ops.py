"""Rotated IoU (hand cases, shapely), rotated NMS (hand case, torchvision at angle 0) and rotated RoI Align
(torchvision's roi_align at angle 0 and on a map turned by torch.rot90)."""

from __future__ import annotations

import math

import pytest
import shapely
import torch
from torchvision.ops import batched_nms, nms, roi_align

from skysense.detection.boxes import hbb_to_obb, obb_to_poly
from skysense.detection.rotated_ops import (
    batched_rotated_nms,
    poly_iou,
    rotated_iou,
    rotated_nms,
    rotated_roi_align,
)
from tests.detection.test_boxes import random_obb


def shapely_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    pa = [shapely.Polygon(p) for p in obb_to_poly(a.double()).tolist()]
    pb = [shapely.Polygon(p) for p in obb_to_poly(b.double()).tolist()]
    out = torch.zeros(len(pa), len(pb), dtype=torch.float64)
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            out[i, j] = p.intersection(q).area / p.union(q).area
    return out


def test_rotated_iou_hand_cases() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0], [0.0, 0.0, 4.0, 2.0, 0.0]])
    b = torch.tensor(
        [
            [1.0, 0.0, 2.0, 2.0, 0.0],  # half of a[0]: 2 / 6; inside a[1]: 4 / 8
            [0.0, 0.0, 2.0, 2.0, math.pi / 4],  # with a[0] a regular octagon: 8 (sqrt 2 - 1) / (8 - that)
            [0.0, 0.0, 4.0, 2.0, math.pi / 2],  # 2 wide, 4 tall: holds a[0]: 4 / 8; a cross with a[1]: 4 / 12
        ]
    )
    want = torch.tensor([[1 / 3, 1 / math.sqrt(2), 1 / 2], [1 / 2, 0.0, 1 / 3]])
    want[1, 1] = shapely_iou(a[1:], b[1:2]).item()
    torch.testing.assert_close(rotated_iou(a, b), want, atol=1e-6, rtol=0)
    # the octagon by hand too
    assert rotated_iou(a[:1], b[1:2]).item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_poly_iou_any_convex_polygons_either_order() -> None:
    triangle = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]])
    square = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    # the unit square lies in the triangle (its corner (1, 1) on the long side): 1 / 2
    assert poly_iou(triangle, square).item() == pytest.approx(0.5, abs=1e-6)
    assert poly_iou(triangle.flip(1), square.flip(1)).item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match=r"a must have shape \(N, K, 2\)"):
        poly_iou(torch.zeros(1, 2, 2), square)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotated_iou_matches_shapely(dtype: torch.dtype) -> None:
    a, b = random_obb(40, seed=3), random_obb(50, seed=4)
    a[:, :2], b[:, :2] = a[:, :2] / 4, b[:, :2] / 4  # crowd them: most pairs overlap
    ref = shapely_iou(a, b)
    assert (ref > 0).float().mean() > 0.5
    got = rotated_iou(a.to(dtype), b.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), ref, atol=1e-4 if dtype == torch.float32 else 1e-9, rtol=0)


def test_rotated_iou_far_from_the_origin_in_float32() -> None:
    a, b = random_obb(20, seed=5), random_obb(20, seed=6)
    a[:, :2], b[:, :2] = a[:, :2] / 4 + 5000, b[:, :2] / 4 + 5000
    torch.testing.assert_close(
        rotated_iou(a.float(), b.float()).double(), shapely_iou(a, b), atol=1e-4, rtol=0
    )


def test_rotated_iou_same_box_in_every_form_is_one() -> None:
    a = random_obb(30, seed=7)
    turned = a.clone()
    turned[:, 4] += math.pi
    swapped = a[:, [0, 1, 3, 2, 4]].clone()
    swapped[:, 4] -= math.pi / 2
    for b in (a, turned, swapped):
        torch.testing.assert_close(rotated_iou(a, b).diagonal(), torch.ones(30, dtype=a.dtype))


def test_rotated_iou_disjoint_touching_and_empty_boxes_are_zero() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0, math.pi / 4]])  # the diamond |x| + |y| <= sqrt 2
    b = torch.tensor(
        [
            [10.0, 0.0, 2.0, 2.0, 0.3],  # far apart
            [1.5, 1.5, 1.0, 1.0, 0.0],  # envelopes overlap, boxes do not
            [0.0, 0.0, 0.0, 2.0, 0.3],  # no area
        ]
    )
    a0 = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]])
    touching = torch.tensor([[2.0, 0.0, 2.0, 2.0, 0.0]])  # shares a side
    assert torch.equal(rotated_iou(a, b), torch.zeros(1, 3))
    assert rotated_iou(a0, touching).item() == 0.0
    assert rotated_iou(a, torch.zeros(0, 5)).shape == (1, 0)


def test_rotated_iou_chunks_do_not_change_it() -> None:
    a, b = random_obb(30, seed=8), random_obb(40, seed=9)
    a[:, :2] /= 3
    torch.testing.assert_close(rotated_iou(a, b, chunk_size=7), rotated_iou(a, b))


def test_rotated_nms_hand_case() -> None:
    boxes = torch.tensor(
        [
            [4.0, 0.0, 10.0, 10.0, 0.0],  # C: IoU 2/3 with B, 3/7 with A
            [0.0, 0.0, 10.0, 10.0, 0.0],  # A
            [2.0, 0.0, 10.0, 10.0, 0.0],  # B: IoU 2/3 with A
            [0.0, 0.0, 10.0, 10.0, math.pi / 2],  # A turned: IoU 1
        ]
    )
    scores = torch.tensor([0.7, 0.9, 0.8, 0.6])
    # B goes (A is kept), so C stays although it overlaps B
    assert rotated_nms(boxes, scores, 0.5).tolist() == [1, 0]
    assert rotated_nms(boxes, scores, 0.7).tolist() == [1, 2, 0]
    assert rotated_nms(boxes[:0], scores[:0], 0.5).tolist() == []


@pytest.mark.parametrize("block", [1024, 16])
def test_rotated_nms_matches_torchvision_at_angle_zero(block: int) -> None:
    g = torch.Generator().manual_seed(0)
    xy, wh = torch.rand(300, 2, generator=g) * 150, 5 + torch.rand(300, 2, generator=g) * 40
    hbb, scores = torch.cat([xy, xy + wh], dim=1), torch.rand(300, generator=g)
    for thr in (0.1, 0.5):
        assert torch.equal(rotated_nms(hbb_to_obb(hbb), scores, thr, block=block), nms(hbb, scores, thr))
    idxs = torch.randint(0, 4, (300,), generator=g)
    assert torch.equal(
        batched_rotated_nms(hbb_to_obb(hbb), scores, idxs, 0.3), batched_nms(hbb, scores, idxs, 0.3)
    )


def test_rotated_nms_turns_with_the_boxes() -> None:
    boxes, scores = random_obb(200, seed=10), torch.rand(200, dtype=torch.float64)
    boxes[:, :2] /= 2
    t = 0.7  # turn every box about the origin
    turned = boxes.clone()
    turned[:, 0] = boxes[:, 0] * math.cos(t) - boxes[:, 1] * math.sin(t)
    turned[:, 1] = boxes[:, 0] * math.sin(t) + boxes[:, 1] * math.cos(t)
    turned[:, 4] += t
    keep = rotated_nms(boxes, scores, 0.3)
    assert 10 < len(keep) < 190
    assert torch.equal(rotated_nms(turned, scores, 0.3), keep)
    assert (rotated_iou(boxes[keep], boxes[keep]).triu(1) <= 0.3).all()


def test_batched_rotated_nms_keeps_categories_apart() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.2]] * 3)
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert batched_rotated_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5).tolist() == [1, 2]
    assert batched_rotated_nms(boxes, scores, torch.tensor([0, 0, 0]), 0.5).tolist() == [1]


def _features_and_rois(scale: float, min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 13, 17, generator=g, dtype=torch.float64)
    k = 25
    batch = torch.randint(0, 2, (k,), generator=g).double()
    # centres over the map and a little beyond it, so some samples fall outside
    cx = (torch.rand(k, generator=g, dtype=torch.float64) * 1.2 - 0.1) * 17 / scale
    cy = (torch.rand(k, generator=g, dtype=torch.float64) * 1.2 - 0.1) * 13 / scale
    wh = min_size + torch.rand(k, 2, generator=g, dtype=torch.float64) * 12 / scale
    return feats, torch.stack([batch, cx, cy, wh[:, 0], wh[:, 1], torch.zeros(k, dtype=torch.float64)], dim=1)


def _xyxy(rois: torch.Tensor) -> torch.Tensor:
    b, cx, cy, w, h = rois[:, :5].unbind(1)
    return torch.stack([b, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_at_angle_zero_is_torchvision(aligned: bool) -> None:
    scale = 0.25
    # unaligned RoIs at least one feature pixel wide: there torchvision widens from the corner, this op
    # about the centre
    feats, rois = _features_and_rois(scale, 0.1 if aligned else 1 / scale)
    got = rotated_roi_align(feats, rois, (5, 4), scale, 2, aligned)
    want = roi_align(feats, _xyxy(rois), (5, 4), scale, 2, aligned)
    torch.testing.assert_close(got, want)


def test_roi_align_at_ninety_degrees_is_torchvision_on_the_turned_map() -> None:
    scale = 0.5
    feats, rois = _features_and_rois(scale, 0.1)
    turned = rois.clone()
    turned[:, 5] = math.pi / 2
    got = rotated_roi_align(feats, turned, (3, 6), scale, 2)
    # rot90(F)[a, b] = F[b, W - 1 - a]: image point (x, y) goes to (y, W - x), in input pixels W = 17 / scale;
    # the RoI's w side (along +y at 90 degrees) runs along the turned map's rows -> its columns
    g = torch.rot90(feats, 1, dims=(-2, -1))
    moved = rois.clone()
    moved[:, 1], moved[:, 2] = rois[:, 2], 17 / scale - rois[:, 1]
    want = roi_align(g, _xyxy(moved), (3, 6), scale, 2, True)
    torch.testing.assert_close(got, want)


def test_roi_align_turned_by_pi_flips_the_output() -> None:
    feats, rois = _features_and_rois(1.0, 2.0)
    rois[:, 5] = torch.rand(len(rois), dtype=torch.float64)
    turned = rois.clone()
    turned[:, 5] += math.pi
    a, b = rotated_roi_align(feats, rois, 4), rotated_roi_align(feats, turned, 4)
    torch.testing.assert_close(b, a.flip(-1, -2))


def test_roi_align_gradient_reaches_the_features() -> None:
    feats, rois = _features_and_rois(1.0, 2.0)
    rois[:, 5] = 0.4
    feats = feats[:, :1, :6, :7].clone().requires_grad_(True)
    rois = rois[:4]
    rois[:, 1:3] = torch.tensor([[3.0, 2.0], [4.0, 3.0], [2.5, 4.0], [5.0, 2.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: rotated_roi_align(f, rois, 2), (feats,))
    rotated_roi_align(feats, rois, 2).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_roi_align_checks_its_input() -> None:
    feats = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"batch indices must lie in \[0, 2\)"):
        rotated_roi_align(feats, torch.tensor([[2.0, 4, 4, 2, 2, 0]]), 2)
    with pytest.raises(ValueError, match=r"rois must have shape \(N, 6\)"):
        rotated_roi_align(feats, torch.zeros(3, 5), 2)
    assert rotated_roi_align(feats, torch.zeros(0, 6), (2, 3)).shape == (0, 3, 2, 3)


def test_roi_align_places_samples_in_float32_for_half_features() -> None:
    feats, rois = _features_and_rois(0.125, 8.0)
    rois[:, 5] = 0.3
    half = feats.to(torch.bfloat16)
    got = rotated_roi_align(half, rois.to(torch.bfloat16), 3, 0.125)
    assert got.dtype == torch.bfloat16
    want = rotated_roi_align(half.float(), rois.to(torch.bfloat16).float(), 3, 0.125)
    torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=1e-2)
