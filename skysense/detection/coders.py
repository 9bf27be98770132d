"""Box coders of the oriented detector (paper Sec. 4.3, Oriented R-CNN, Xie et al. ICCV 2021): regression
targets relative to anchors or RoIs, and back.

Plain PyTorch (no compiled detection framework is installed here). Boxes follow ``skysense.detection``'s
convention: oriented ``cx, cy, w, h, angle`` (pixels, radians), horizontal ``x1, y1, x2, y2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from skysense.detection.boxes import _check_last, canonical_angle, canonical_obb, obb_to_hbb, poly_to_obb

MAX_LOG_RATIO = abs(math.log(16 / 1000))  # decoded sizes stay within 1000/16 of the anchor's (as mmdet)


def _stats(values: Sequence[float], n: int, name: str) -> Tensor:
    if len(values) != n:
        raise ValueError(f"{name} must have {n} values (one per delta), got {len(values)}")
    return torch.tensor(values, dtype=torch.float32)


class OBBDeltaCoder:
    """Oriented boxes relative to oriented RoIs, in the RoI's own turned frame (Oriented R-CNN's RoI head).

    For a RoI ``(px, py, pw, ph, pa)`` and a target ``(gx, gy, gw, gh, ga)``, with ``u = (cos pa, sin pa)``
    and ``v = (-sin pa, cos pa)``::

        dx = (g - p) . u / pw      dy = (g - p) . v / ph
        dw = log(gw / pw)          dh = log(gh / ph)
        da = ((ga - pa) wrapped to [-pi/2, pi/2)) / pi, in [-1/2, 1/2)

    then ``(d - means) / stds``. With ``edge_swap`` (the default, as Oriented R-CNN) the target is first
    written in whichever of its forms ``(gw, gh, ga)`` or ``(gh, gw, ga + pi/2)`` turns least from the RoI,
    so ``|da| <= 1/4`` and the same box never asks for two different regressions. Decoding clamps ``dw, dh``
    to ``+-max_log_ratio`` and returns canonical boxes.
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0,) * 5,
        stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2, 0.1),
        edge_swap: bool = True,
        max_log_ratio: float = MAX_LOG_RATIO,
    ) -> None:
        self.means, self.stds = _stats(means, 5, "means"), _stats(stds, 5, "stds")
        self.edge_swap, self.max_log_ratio = edge_swap, max_log_ratio

    def encode(self, rois: Tensor, targets: Tensor) -> Tensor:
        """(N, 5) RoIs, (N, 5) target boxes -> (N, 5) normalised deltas."""
        _check_last(rois, (5,), "rois")
        _check_last(targets, (5,), "targets")
        px, py, pw, ph, pa = rois.unbind(1)
        gx, gy, gw, gh, ga = targets.unbind(1)
        da = canonical_angle(ga - pa)
        if self.edge_swap:
            swap = da.abs() > math.pi / 4
            gw, gh = torch.where(swap, gh, gw), torch.where(swap, gw, gh)
            da = torch.where(swap, canonical_angle(da + math.pi / 2), da)
        cos, sin = torch.cos(pa), torch.sin(pa)
        ex, ey = gx - px, gy - py
        dx, dy = (ex * cos + ey * sin) / pw, (-ex * sin + ey * cos) / ph
        deltas = torch.stack([dx, dy, torch.log(gw / pw), torch.log(gh / ph), da / math.pi], dim=1)
        return (deltas - self.means.to(deltas)) / self.stds.to(deltas)

    def decode(self, rois: Tensor, deltas: Tensor) -> Tensor:
        """(N, 5) RoIs, (N, 5) normalised deltas -> (N, 5) canonical boxes."""
        _check_last(rois, (5,), "rois")
        _check_last(deltas, (5,), "deltas")
        d = deltas * self.stds.to(deltas) + self.means.to(deltas)
        dx, dy, dw, dh, da = d.unbind(1)
        px, py, pw, ph, pa = rois.unbind(1)
        r = self.max_log_ratio
        dw, dh = dw.clamp(-r, r), dh.clamp(-r, r)
        cos, sin = torch.cos(pa), torch.sin(pa)
        ox, oy = dx * pw, dy * ph  # offset in the RoI's frame, back to the image's
        gx, gy = px + ox * cos - oy * sin, py + ox * sin + oy * cos
        ga = canonical_angle(pa + da * math.pi)
        return torch.stack([gx, gy, pw * torch.exp(dw), ph * torch.exp(dh), ga], dim=1)


def _midpoint_offsets(targets: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 5) oriented boxes -> (N,), (N,) offsets ``alpha`` (along x, of the top corner) and ``beta`` (along
    y, of the right corner) from the centre.

    In the form whose angle ``t`` lies in [0, pi/2) the top corner is ``c - u w/2 - v h/2`` and the right one
    ``c + u w/2 - v h/2``; written with ``t`` these stay continuous, also where a side turns level or upright
    and two corners tie for top or right.
    """
    _, _, w, h, a = targets.unbind(1)
    swap = a < 0  # canonical angles in [-pi/2, 0): the (h, w, a + pi/2) form
    w, h = torch.where(swap, h, w), torch.where(swap, w, h)
    a = torch.where(swap, a + math.pi / 2, a)
    cos, sin = torch.cos(a), torch.sin(a)
    return (h * sin - w * cos) / 2, (w * sin - h * cos) / 2


class MidpointOffsetCoder:
    """Midpoint offset representation (Oriented R-CNN, Xie et al. ICCV 2021, Sec. 3.1): an oriented box
    from a horizontal anchor as 6 deltas ``dx, dy, dw, dh, dalpha, dbeta``.

    The target's horizontal envelope ``(x, y, w, h)`` is coded like Faster R-CNN's; its top corner sits at
    ``(x + alpha, y - h/2)`` and its right corner at ``(x + w/2, y + beta)``, and by symmetry the bottom and
    left ones at ``(x - alpha, y + h/2)`` and ``(x - w/2, y - beta)``. ``dalpha = alpha / w`` and
    ``dbeta = beta / h``, both in [-1/2, 1/2]. Decoding builds that parallelogram, stretches its shorter
    diagonal to the longer one's length (a parallelogram with equal diagonals is a rectangle), and returns
    the rectangle as a canonical oriented box.
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0,) * 6,
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5),
        max_log_ratio: float = MAX_LOG_RATIO,
    ) -> None:
        self.means, self.stds = _stats(means, 6, "means"), _stats(stds, 6, "stds")
        self.max_log_ratio = max_log_ratio

    def encode(self, anchors: Tensor, targets: Tensor) -> Tensor:
        """(N, 4) horizontal anchors, (N, 5) oriented targets -> (N, 6) normalised deltas."""
        _check_last(anchors, (4,), "anchors")
        _check_last(targets, (5,), "targets")
        ax, ay = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        hbb = obb_to_hbb(targets)
        gx, gy = (hbb[:, 0] + hbb[:, 2]) / 2, (hbb[:, 1] + hbb[:, 3]) / 2
        gw, gh = hbb[:, 2] - hbb[:, 0], hbb[:, 3] - hbb[:, 1]
        alpha, beta = _midpoint_offsets(canonical_obb(targets))
        d = [(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah), alpha / gw, beta / gh]
        deltas = torch.stack(d, dim=1)
        return (deltas - self.means.to(deltas)) / self.stds.to(deltas)

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """(N, 4) horizontal anchors, (N, 6) normalised deltas -> (N, 5) canonical oriented boxes."""
        _check_last(anchors, (4,), "anchors")
        _check_last(deltas, (6,), "deltas")
        d = deltas * self.stds.to(deltas) + self.means.to(deltas)
        dx, dy, dw, dh, da, db = d.unbind(1)
        ax, ay = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        r = self.max_log_ratio
        x, y = ax + dx * aw, ay + dy * ah
        w, h = aw * torch.exp(dw.clamp(-r, r)), ah * torch.exp(dh.clamp(-r, r))
        alpha, beta = da.clamp(-0.5, 0.5) * w, db.clamp(-0.5, 0.5) * h
        # corners about the centre: top, right, bottom, left (the corner order of obb_to_poly)
        half = torch.stack(
            [
                torch.stack([alpha, -h / 2], dim=1),
                torch.stack([w / 2, beta], dim=1),
                torch.stack([-alpha, h / 2], dim=1),
                torch.stack([-w / 2, -beta], dim=1),
            ],
            dim=1,
        )
        length = half.norm(dim=-1, keepdim=True)
        stretch = length.max(dim=1, keepdim=True).values / length.clamp_min(torch.finfo(half.dtype).tiny)
        rect = half * stretch + torch.stack([x, y], dim=1)[:, None]
        return poly_to_obb(rect)
