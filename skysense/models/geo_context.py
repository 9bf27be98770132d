"""Attentive geo-context integration (paper Sec. 3.1, Eq. 4) and the region partition.

``F_fus = Concat[F_fus_mm, Softmax(Q K^T / sqrt(d)) V]`` with ``Q = F_fus_mm`` (projected to the
prototype width d when it differs) and ``K = V = P_r``, the N_p learnable prototypes of the
sample's region r. GCPL (pre-training) refines the prototypes by Sinkhorn-Knopp assignment and
EMA; here they are plain parameters so fine-tuning may also move them.

Region partition: a cylindrical equal-area grid. Longitude is cut into ``lon_bands`` equal
sectors; latitude into ``lat_bands`` bands of equal width in sin(latitude), i.e. of equal area
(Lambert's cylindrical projection). Every region covers exactly 4*pi*R^2 / N_R; with the paper's
N_R = 4096 (64 x 64) that is about 124,500 km^2, a square of ~350 km at the equator that grows
taller and narrower towards the poles.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skysense.config import GeoContextConfig


def region_index(lat: Tensor, lon: Tensor, lat_bands: int, lon_bands: int) -> Tensor:
    """Degrees (WGS84) -> region id in [0, lat_bands*lon_bands), row-major from the south-west.

    lat (B,) in [-90, 90], lon (B,) any value (wrapped to [-180, 180)) -> (B,) int64.
    """
    lat = lat.to(torch.float64)
    lon = torch.remainder(lon.to(torch.float64) + 180.0, 360.0)  # [0, 360)
    row = torch.floor((torch.sin(torch.deg2rad(lat)) + 1.0) / 2.0 * lat_bands).clamp(0, lat_bands - 1)
    col = torch.floor(lon / 360.0 * lon_bands).clamp(0, lon_bands - 1)
    return (row * lon_bands + col).to(torch.int64)


def region_bounds(region: int, lat_bands: int, lon_bands: int) -> tuple[float, float, float, float]:
    """(south, north, west, east) in degrees of one region: for maps and documentation."""
    row, col = divmod(region, lon_bands)
    south = math.degrees(math.asin(2.0 * row / lat_bands - 1.0))
    north = math.degrees(math.asin(2.0 * (row + 1) / lat_bands - 1.0))
    west = -180.0 + 360.0 * col / lon_bands
    return south, north, west, west + 360.0 / lon_bands


class GeoContext(nn.Module):
    """Region prototypes P (N_R, N_p, d) and the attention of Eq. 4."""

    def __init__(self, cfg: GeoContextConfig, in_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.prototypes = nn.Parameter(torch.empty(cfg.num_regions, cfg.num_prototypes, cfg.dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        # Identity when the fused width already equals the prototype width (no extra parameters).
        self.query = nn.Linear(in_dim, cfg.dim) if cfg.dim != in_dim else nn.Identity()
        self.out_dim = in_dim + cfg.dim

    def regions(self, lat: Tensor, lon: Tensor) -> Tensor:
        return region_index(lat, lon, self.cfg.lat_bands, self.cfg.lon_bands)

    def forward(self, fused_mm: Tensor, region: Tensor | None) -> Tensor:
        """fused_mm (B, D, h, w), region (B,) int64 or None -> F_fus (B, D + d, h, w).

        Without a location (``region`` None, or -1 for a sample) the geo-context half is zero:
        no region, no prior, rather than a made-up one.
        """
        b, _, h, w = fused_mm.shape
        q = self.query(fused_mm.flatten(2).transpose(1, 2))  # (B, h*w, d)
        if region is None:
            ctx = q.new_zeros(q.shape)
        else:
            known = region >= 0
            protos = self.prototypes[region.clamp(min=0)].to(q.dtype)  # (B, N_p, d)
            ctx = F.scaled_dot_product_attention(q.unsqueeze(1), protos.unsqueeze(1), protos.unsqueeze(1))
            ctx = ctx.squeeze(1) * known[:, None, None].to(q.dtype)  # (B, h*w, d)
        ctx = ctx.transpose(1, 2).reshape(b, -1, h, w)
        return torch.cat([fused_mm, ctx], dim=1)
