"""Box coders: hand-computed deltas, decode(encode(x)) == x (also across the angle's wrap), clamping."""

from __future__ import annotations

import math

import pytest
import torch

from skysense.detection.boxes import canonical_obb, obb_to_hbb, obb_to_poly, poly_to_obb
from skysense.detection.coders import MidpointOffsetCoder, OBBDeltaCoder
from tests.detection.test_boxes import random_obb, same_corner_sets

ONES5, ONES6 = (1.0,) * 5, (1.0,) * 6


def angles_near_the_wraps(n: int) -> torch.Tensor:
    base = torch.tensor([-math.pi / 2, 0.0, math.pi / 2, math.pi / 4, -math.pi / 4], dtype=torch.float64)
    return base.repeat(n // 5 + 1)[:n] + torch.linspace(-1e-3, 1e-3, n, dtype=torch.float64)


def test_obb_delta_coder_hand_case() -> None:
    coder = OBBDeltaCoder(stds=ONES5, edge_swap=False)
    rois = torch.tensor([[10.0, 10.0, 4.0, 2.0, math.pi / 2]] * 2)
    targets = torch.tensor([[10.0, 12.0, 8.0, 2.0, math.pi / 2 + 0.1], [9.0, 10.0, 4.0, 1.0, -math.pi / 2]])
    # in the RoI's frame u = (0, 1), v = (-1, 0): (0, 2) is 2 along u (w = 4), (-1, 0) is 1 along v (h = 2)
    want = torch.tensor([[0.5, 0.0, math.log(2), 0.0, 0.1 / math.pi], [0.0, 0.5, 0.0, math.log(0.5), 0.0]])
    torch.testing.assert_close(coder.encode(rois, targets), want, atol=1e-6, rtol=0)
    coder = OBBDeltaCoder(means=(0.1, 0, 0, 0, 0), stds=(0.5, 1, 1, 1, 1), edge_swap=False)
    assert coder.encode(rois, targets)[0, 0].item() == pytest.approx((0.5 - 0.1) / 0.5)


@pytest.mark.parametrize("edge_swap", [False, True])
def test_obb_delta_coder_round_trip(edge_swap: bool) -> None:
    coder = OBBDeltaCoder(edge_swap=edge_swap)
    rois, targets = canonical_obb(random_obb(300, seed=1)), canonical_obb(random_obb(300, seed=2))
    targets[:100, 4] = angles_near_the_wraps(100)
    rois[:100, 4] = -angles_near_the_wraps(100)
    targets = canonical_obb(targets)
    back = coder.decode(rois, coder.encode(rois, targets))
    assert same_corner_sets(obb_to_poly(back), obb_to_poly(targets))
    if not edge_swap:  # the very same form, angle taken modulo pi
        torch.testing.assert_close(back[:, :4], targets[:, :4])
        turn = back[:, 4] - targets[:, 4]
        torch.testing.assert_close(torch.sin(turn), torch.zeros_like(turn), atol=1e-9, rtol=0)


def test_obb_delta_coder_edge_swap_turns_least() -> None:
    rois, targets = random_obb(300, seed=3), random_obb(300, seed=4)
    plain = OBBDeltaCoder(stds=ONES5, edge_swap=False).encode(rois, targets)
    swapped = OBBDeltaCoder(stds=ONES5).encode(rois, targets)
    assert plain[:, 4].abs().max() > 0.4 and (plain[:, 4].abs() < 0.5 + 1e-9).all()
    assert (swapped[:, 4].abs() <= 0.25 + 1e-9).all()
    # a RoI just below pi/2 and a target just above -pi/2 are nearly the same: a small delta
    rois = torch.tensor([[0.0, 0.0, 4.0, 2.0, math.pi / 2 - 0.01]])
    targets = torch.tensor([[0.0, 0.0, 4.0, 2.0, -math.pi / 2 + 0.01]])
    assert OBBDeltaCoder(stds=ONES5).encode(rois, targets)[0, 4].item() == pytest.approx(0.02 / math.pi)


def test_obb_delta_coder_clamps_sizes() -> None:
    coder = OBBDeltaCoder(stds=ONES5)
    rois = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]])
    out = coder.decode(rois, torch.tensor([[0.0, 0.0, 50.0, -50.0, 0.0]]))
    torch.testing.assert_close(out[0, 2:4], torch.tensor([4 * 1000 / 16, 2 * 16 / 1000]))


def test_midpoint_offset_coder_hand_cases() -> None:
    coder = MidpointOffsetCoder(stds=ONES6)
    # a rectangle with corners top (1, 0), right (3, 2), bottom (2, 3), left (0, 1): envelope [0, 3] x [0, 3]
    rect = poly_to_obb(torch.tensor([[[1.0, 0.0], [3.0, 2.0], [2.0, 3.0], [0.0, 1.0]]]))
    anchors = torch.tensor([[0.0, 0.0, 3.0, 3.0], [1.0, 1.0, 4.0, 7.0]])
    targets = torch.cat([rect, torch.tensor([[2.5, 4.0, 3.0, 6.0, 0.0]])])
    want = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, (1 - 1.5) / 3, (2 - 1.5) / 3],
            # level box: top corner at the left (alpha = -w/2), right corner at the top (beta = -h/2)
            [0.0, 0.0, 0.0, 0.0, -0.5, -0.5],
        ]
    )
    deltas = coder.encode(anchors, targets)
    torch.testing.assert_close(deltas, want, atol=1e-6, rtol=0)
    assert same_corner_sets(obb_to_poly(coder.decode(anchors, deltas)), obb_to_poly(targets), 1e-5)


def test_midpoint_offset_coder_decodes_a_parallelogram_to_its_rectangle() -> None:
    coder = MidpointOffsetCoder(stds=ONES6)
    anchors = torch.tensor([[-2.0, -2.0, 2.0, 2.0]], dtype=torch.float64)
    # corners top (1, -2), right (2, 0), bottom (-1, 2), left (-2, 0): the half-diagonal to the right one
    # (length 2) is stretched to sqrt 5
    out = coder.decode(anchors, torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.25, 0.0]], dtype=torch.float64))
    r = math.sqrt(5)
    want = torch.tensor([[[1.0, -2.0], [r, 0.0], [-1.0, 2.0], [-r, 0.0]]], dtype=torch.float64)
    assert same_corner_sets(obb_to_poly(out), want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_midpoint_offset_coder_round_trip(dtype: torch.dtype) -> None:
    coder = MidpointOffsetCoder()
    targets = random_obb(300, seed=5)
    targets[:100, 4] = angles_near_the_wraps(100)
    targets[100:105, 4] = torch.tensor([0.0, math.pi / 2, -math.pi / 2, math.pi / 4, 1e-7])
    anchors = obb_to_hbb(random_obb(300, seed=6))
    deltas = coder.encode(anchors.to(dtype), targets.to(dtype))
    assert (deltas[:, 4:].abs() <= 0.5 / 0.5 + 1e-6).all()
    back = coder.decode(anchors.to(dtype), deltas)
    tol = 1e-6 if dtype == torch.float64 else 1e-3
    assert same_corner_sets(obb_to_poly(back.double()), obb_to_poly(targets), tol)


def test_coders_check_their_input() -> None:
    with pytest.raises(ValueError, match="stds must have 5 values"):
        OBBDeltaCoder(stds=ONES6)
    with pytest.raises(ValueError, match=r"anchors must have shape \(N, 4\)"):
        MidpointOffsetCoder().encode(torch.zeros(2, 5), torch.zeros(2, 5))
