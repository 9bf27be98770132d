"""Box forms of object detection (paper Sec. 4.3): oriented boxes ``cx, cy, w, h, angle``, their corner
polygons and their horizontal envelopes.

Written in plain PyTorch: no compiled detection framework (mmcv, mmrotate, detectron2) is installed here,
so these ops run wherever torch runs, vectorised, on the CPU or the GPU.

Angle convention (see ``skysense.detection``): ``angle`` in radians from the image's +x axis towards its +y
axis (rows point down), ``w`` the side along ``angle``. A box equals itself turned by pi, and
``(w, h, angle)`` equals ``(h, w, angle + pi/2)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_last(x: Tensor, shape: tuple[int, ...], name: str) -> None:
    if x.shape[-len(shape) :] != shape or x.dim() != len(shape) + 1:
        want = ", ".join(["N", *map(str, shape)])
        raise ValueError(f"{name} must have shape ({want}), got {tuple(x.shape)}")


def canonical_angle(angle: Tensor) -> Tensor:
    """The angle modulo pi, in [-pi/2, pi/2)."""
    out = torch.remainder(angle + math.pi / 2, math.pi) - math.pi / 2
    # remainder may round up to pi itself for an angle just under -pi/2
    return torch.where(out >= math.pi / 2, out - math.pi, out)


def canonical_obb(boxes: Tensor) -> Tensor:
    """(N, 5) oriented boxes -> (N, 5) the same boxes with ``angle`` in [-pi/2, pi/2).

    Uses the period pi only: ``w`` stays the side along ``angle``, ``w`` and ``h`` are kept as they are.
    """
    _check_last(boxes, (5,), "boxes")
    return torch.cat([boxes[:, :4], canonical_angle(boxes[:, 4:5])], dim=1)


def obb_to_poly(boxes: Tensor) -> Tensor:
    """(N, 5) oriented boxes -> (N, 4, 2) corners ``(x, y)``.

    Corner order, with ``u`` the unit vector along ``angle`` and ``v`` the one along ``angle + pi/2``:
    ``c - u w/2 - v h/2``, ``c + u w/2 - v h/2``, ``c + u w/2 + v h/2``, ``c - u w/2 + v h/2``. At angle 0
    that is top-left, top-right, bottom-right, bottom-left (clockwise on screen, rows down); the shoelace
    area of the corners is then positive, and the first edge runs along ``angle``.
    """
    _check_last(boxes, (5,), "boxes")
    c, w, h, a = boxes[:, 0:2], boxes[:, 2:3], boxes[:, 3:4], boxes[:, 4:5]
    cos, sin = torch.cos(a), torch.sin(a)
    u = torch.cat([cos, sin], dim=1) * (w / 2)
    v = torch.cat([-sin, cos], dim=1) * (h / 2)
    return torch.stack([c - u - v, c + u - v, c + u + v, c - u + v], dim=1)


def poly_to_obb(poly: Tensor) -> Tensor:
    """(N, 4, 2) points -> (N, 5) canonical oriented box: the minimum-area rectangle enclosing them.

    Rotating calipers: the smallest enclosing rectangle has a side along an edge of the points' convex hull.
    Every hull edge of 4 points joins two of them, so the rectangles aligned with all 6 point pairs are
    measured at once and the smallest kept (a pair that is no hull edge gives an enclosing rectangle too,
    never a smaller one). Ties go to the first pair, the edge p0 -> p1, so that
    ``poly_to_obb(obb_to_poly(b))`` gives back a canonical ``b`` itself. Points that all coincide give a box
    of size 0 at angle 0.
    """
    _check_last(poly, (4, 2), "poly")
    mean = poly.mean(dim=1, keepdim=True)
    poly = poly - mean  # projections about the points' mean lose fewer digits
    d = poly[:, [1, 2, 3, 0, 2, 3]] - poly[:, [0, 1, 2, 3, 0, 1]]  # (N, 6, 2) the candidate edge directions
    length = d.norm(dim=-1, keepdim=True)
    u = d / length.clamp_min(torch.finfo(poly.dtype).tiny)
    u = torch.where(length > 0, u, torch.tensor([1.0, 0.0], dtype=poly.dtype, device=poly.device))
    v = torch.stack([-u[..., 1], u[..., 0]], dim=-1)
    pu = torch.einsum("nkd,npd->nkp", u, poly)  # (N, 6, 4) projections on each direction
    pv = torch.einsum("nkd,npd->nkp", v, poly)
    lo_u, hi_u = pu.min(-1).values, pu.max(-1).values
    lo_v, hi_v = pv.min(-1).values, pv.max(-1).values
    area = (hi_u - lo_u) * (hi_v - lo_v)
    # the smallest area, the first pair among those within rounding of it (a direction from a short edge
    # is off by rounding / its length, which the long side magnifies: allow sqrt(eps) of the area)
    rel = torch.finfo(poly.dtype).eps ** 0.5
    near = area <= area.min(dim=1, keepdim=True).values * (1 + rel) + 1e-12
    k = near.int().argmax(dim=1, keepdim=True)

    def pick(t: Tensor) -> Tensor:
        return t.gather(1, k).squeeze(1)

    cu, cv = pick((lo_u + hi_u) / 2), pick((lo_v + hi_v) / 2)
    uk = u.gather(1, k[..., None].expand(-1, -1, 2)).squeeze(1)
    vk = torch.stack([-uk[:, 1], uk[:, 0]], dim=1)
    centre = cu[:, None] * uk + cv[:, None] * vk + mean[:, 0]
    angle = torch.atan2(uk[:, 1], uk[:, 0])
    w, h = pick(hi_u - lo_u), pick(hi_v - lo_v)
    return canonical_obb(torch.stack([centre[:, 0], centre[:, 1], w, h, angle], dim=1))


def obb_to_hbb(boxes: Tensor) -> Tensor:
    """(N, 5) oriented boxes -> (N, 4) their horizontal envelopes ``x1, y1, x2, y2``."""
    _check_last(boxes, (5,), "boxes")
    cx, cy, w, h, a = boxes.unbind(1)
    cos, sin = torch.cos(a).abs(), torch.sin(a).abs()
    ex = (w * cos + h * sin) / 2  # half extents of the turned box along x and y
    ey = (w * sin + h * cos) / 2
    return torch.stack([cx - ex, cy - ey, cx + ex, cy + ey], dim=1)


def hbb_to_obb(boxes: Tensor) -> Tensor:
    """(N, 4) horizontal boxes ``x1, y1, x2, y2`` -> (N, 5) oriented boxes at angle 0."""
    _check_last(boxes, (4,), "boxes")
    x1, y1, x2, y2 = boxes.unbind(1)
    zero = torch.zeros_like(x1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, zero], dim=1)


def poly_area(poly: Tensor) -> Tensor:
    """(..., K, 2) polygons -> (...,) signed shoelace areas (positive in ``obb_to_poly``'s corner order)."""
    x, y = poly[..., 0], poly[..., 1]
    return 0.5 * (x * y.roll(-1, dims=-1) - x.roll(-1, dims=-1) * y).sum(-1)


def is_convex_quad(poly: Tensor, eps: float = 1e-6) -> Tensor:
    """(N, 4, 2) corner points -> (N,) bool: the points, in their order, bound a convex quadrilateral.

    Either turning direction is fine. All four corners must turn the same way by more than ``eps`` times the
    product of the edge lengths (so no three corners on a line, no zero-size box); four equal turns of less
    than pi each add up to one full turn, which rules out self-crossing (bow-tie) orders. Not finite -> False.
    """
    _check_last(poly, (4, 2), "poly")
    e = poly.roll(-1, dims=1) - poly  # edge k runs from corner k to corner k+1
    f = e.roll(-1, dims=1)
    cross = e[..., 0] * f[..., 1] - e[..., 1] * f[..., 0]
    scale = e.norm(dim=-1) * f.norm(dim=-1) * eps
    turns_left = (cross > scale).all(dim=1)
    turns_right = (cross < -scale).all(dim=1)
    finite = torch.isfinite(poly).flatten(1).all(dim=1)
    return (turns_left | turns_right) & finite
