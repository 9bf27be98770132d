"""Oriented-box forms: hand-computed corners and envelopes, round trips, the angle's periodicity."""

from __future__ import annotations

import math

import pytest
import shapely
import torch

from skysense.detection.boxes import (
    canonical_obb,
    hbb_to_obb,
    is_convex_quad,
    obb_to_hbb,
    obb_to_poly,
    poly_area,
    poly_to_obb,
)


def random_obb(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    size = 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30
    angle = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * math.pi
    return torch.cat([centre, size, angle], dim=1)


def same_corner_sets(p: torch.Tensor, q: torch.Tensor, tol: float = 1e-6) -> bool:
    """Each polygon of p has the corners of the same-index polygon of q, in any order."""
    d = torch.cdist(p, q)
    return bool((d.min(dim=2).values < tol).all() and (d.min(dim=1).values < tol).all())


def test_obb_to_poly_hand_cases() -> None:
    boxes = torch.tensor([[10.0, 20.0, 4.0, 2.0, 0.0], [0.0, 0.0, 4.0, 2.0, math.pi / 2]])
    want = torch.tensor(
        [
            [[8.0, 19.0], [12.0, 19.0], [12.0, 21.0], [8.0, 21.0]],
            # u = (0, 1): the w side runs down the rows
            [[1.0, -2.0], [1.0, 2.0], [-1.0, 2.0], [-1.0, -2.0]],
        ]
    )
    torch.testing.assert_close(obb_to_poly(boxes), want, atol=1e-6, rtol=0)
    assert (poly_area(obb_to_poly(boxes)) > 0).all()
    torch.testing.assert_close(poly_area(obb_to_poly(boxes)), torch.tensor([8.0, 8.0]))


def test_obb_to_hbb_hand_cases() -> None:
    boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0, math.pi / 2], [1.0, 1.0, 2.0, 2.0, math.pi / 4]])
    r = math.sqrt(2)
    want = torch.tensor([[-1.0, -2.0, 1.0, 2.0], [1 - r, 1 - r, 1 + r, 1 + r]])
    torch.testing.assert_close(obb_to_hbb(boxes), want, atol=1e-6, rtol=0)


def test_obb_to_hbb_is_the_corner_envelope() -> None:
    boxes = random_obb(50)
    poly = obb_to_poly(boxes)
    want = torch.cat([poly.min(dim=1).values, poly.max(dim=1).values], dim=1)
    torch.testing.assert_close(obb_to_hbb(boxes), want)


def test_hbb_obb_round_trip() -> None:
    hbb = torch.tensor([[1.0, 2.0, 5.0, 3.0], [0.0, 0.0, 10.0, 20.0]])
    obb = hbb_to_obb(hbb)
    torch.testing.assert_close(obb, torch.tensor([[3.0, 2.5, 4.0, 1.0, 0.0], [5.0, 10.0, 10.0, 20.0, 0.0]]))
    torch.testing.assert_close(obb_to_hbb(obb), hbb)


def test_canonical_obb_hand_cases() -> None:
    a = torch.tensor([3 * math.pi / 4, -math.pi / 2, math.pi / 2, math.pi, -3 * math.pi / 2, 0.3])
    boxes = torch.cat([torch.tensor([[1.0, 2.0, 3.0, 4.0]]).expand(6, 4), a[:, None]], dim=1)
    out = canonical_obb(boxes)
    want = torch.tensor([-math.pi / 4, -math.pi / 2, -math.pi / 2, 0.0, -math.pi / 2, 0.3])
    torch.testing.assert_close(out[:, 4], want, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, :4], boxes[:, :4])
    # just under -pi/2 wraps to just under pi/2, never to pi/2 itself
    tiny = canonical_obb(torch.tensor([[0.0, 0.0, 1.0, 1.0, -math.pi / 2 - 1e-9]], dtype=torch.float64))
    assert -math.pi / 2 <= tiny[0, 4].item() < math.pi / 2


def test_canonical_angle_range_and_same_polygon() -> None:
    boxes = random_obb(200)
    boxes[:, 4] = (torch.rand(200, dtype=torch.float64) - 0.5) * 20
    out = canonical_obb(boxes)
    assert ((out[:, 4] >= -math.pi / 2) & (out[:, 4] < math.pi / 2)).all()
    assert same_corner_sets(obb_to_poly(out), obb_to_poly(boxes))


def test_periodicity_gives_the_same_polygon() -> None:
    boxes = random_obb(100)
    turned = boxes.clone()
    turned[:, 4] += math.pi
    swapped = boxes[:, [0, 1, 3, 2, 4]].clone()
    swapped[:, 4] += math.pi / 2
    p = obb_to_poly(boxes)
    assert same_corner_sets(p, obb_to_poly(turned))
    assert same_corner_sets(p, obb_to_poly(swapped))
    # a different box is told apart
    other = boxes.clone()
    other[:, 4] += 0.1
    assert not same_corner_sets(p, obb_to_poly(other))


def test_poly_obb_round_trip() -> None:
    boxes = canonical_obb(random_obb(200))
    torch.testing.assert_close(poly_to_obb(obb_to_poly(boxes)), boxes)
    # float32 too
    b32 = boxes.float()
    torch.testing.assert_close(poly_to_obb(obb_to_poly(b32)), b32, atol=1e-4, rtol=1e-5)
    # the corners in the other turning order give the same rectangle (maybe in its (h, w) form)
    back = poly_to_obb(obb_to_poly(boxes).flip(1))
    assert same_corner_sets(obb_to_poly(back), obb_to_poly(boxes))


def test_poly_to_obb_hand_cases() -> None:
    poly = torch.tensor(
        [
            [[0.0, 0.0], [4.0, 0.0], [4.0, 2.0], [0.0, 2.0]],
            [[1.0, -2.0], [1.0, 2.0], [-1.0, 2.0], [-1.0, -2.0]],
            # a rhombus with diagonals 4 and 2: the rectangle along an edge (area 6.4) beats the one along
            # the diagonals (area 8)
            [[0.0, -1.0], [2.0, 0.0], [0.0, 1.0], [-2.0, 0.0]],
            [[3.0, 3.0], [3.0, 3.0], [3.0, 3.0], [3.0, 3.0]],
        ]
    )
    s5 = math.sqrt(5)
    want = torch.tensor(
        [
            [2.0, 1.0, 4.0, 2.0, 0.0],
            [0.0, 0.0, 4.0, 2.0, -math.pi / 2],
            [0.0, 0.0, 8 / s5, 4 / s5, math.atan2(1, 2)],
            [3.0, 3.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(poly_to_obb(poly), want, atol=1e-6, rtol=0)


def test_poly_to_obb_matches_shapely_on_random_quads() -> None:
    g = torch.Generator().manual_seed(1)
    poly = torch.rand(100, 4, 2, generator=g, dtype=torch.float64) * 50
    obb = poly_to_obb(poly)
    for p, b in zip(poly, obb):
        ref = shapely.minimum_rotated_rectangle(shapely.MultiPoint(p.tolist()))
        assert b[2] * b[3] == pytest.approx(ref.area, rel=1e-9)
        # the area, not the rectangle: an acute triangle (a corner inside the hull) has three of equal area
        mine = shapely.Polygon(obb_to_poly(b[None])[0].tolist())
        assert mine.buffer(1e-7).covers(shapely.MultiPoint(p.tolist()))


def test_is_convex_quad() -> None:
    poly = torch.tensor(
        [
            [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],  # square
            [[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]],  # the same, turning the other way
            [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]],  # bow-tie
            [[0.0, 0.0], [2.0, 1.0], [4.0, 0.0], [2.0, 3.0]],  # dart (concave at (2, 1))
            [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 1.0]],  # three corners on a line
            [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],  # a point
            [[0.0, 0.0], [1.0, 0.0], [float("nan"), 1.0], [0.0, 1.0]],
        ]
    )
    want = torch.tensor([True, True, False, False, False, False, False])
    assert torch.equal(is_convex_quad(poly), want)
    assert is_convex_quad(obb_to_poly(random_obb(50))).all()


def test_shape_errors_say_what_is_wanted() -> None:
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 5\)"):
        obb_to_poly(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"poly must have shape \(N, 4, 2\)"):
        poly_to_obb(torch.zeros(3, 8))
