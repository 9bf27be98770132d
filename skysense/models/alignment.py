"""Alignment heads (spec Sec. 2): put ``s2``/``s1`` ViT features on the ``hr`` stage-4 grid.

A 1x1 convolution widens each ViT token to ``r*r*C_hr`` channels and ``PixelShuffle(r)`` spreads
them over an r x r block, so a ViT with patch size r gives one feature per input pixel: with the
paper's sensors (hr 0.3 m x stride 32 = 9.6 m, Sentinel 10 m) one cell of the hr stage-4 map per
Sentinel pixel. Other resolution ratios: :func:`resample_to_grid` resizes the aligned map onto
the target grid (bilinear when enlarging, area averaging when shrinking), so any pairing of
ground sampling distances and tile sizes meets on the grid of the fused map, provided the tiles
cover the same ground.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class AlignmentHead(nn.Module):
    """``decoder.0`` = Conv2d(C_vit -> r*r*C_out, 1x1), then PixelShuffle(r) (official key names)."""

    def __init__(self, in_dim: int, out_dim: int, upscale: int) -> None:
        super().__init__()
        self.decoder = nn.Sequential(
            nn.Conv2d(in_dim, out_dim * upscale * upscale, 1), nn.PixelShuffle(upscale)
        )
        self.out_dim = out_dim
        self.upscale = upscale

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_vit, h, w) -> (N, C_out, h*r, w*r)."""
        return self.decoder(x)


def resample_to_grid(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C, h, w) -> (N, C, *size): identity when equal, else bilinear up / area down."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
