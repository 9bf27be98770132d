"""Task heads over the encoder's named outputs (paper Sec. 4).

- :class:`ClassificationHead`: scene classification, single- or multi-label, from one map (``hr`` level,
  ``fused``) or a dated series (``s2``/``s1`` maps with their padding mask); mean or attention pooling.
- :class:`UperNetHead`: semantic segmentation, UperNet (Xiao et al., ECCV 2018) as mmseg's ``UPerHead``,
  the head of the paper and of the official configs: a pyramid pooling module on the coarsest level, an
  FPN top-down path, a fused 3x3 bottleneck. One level (the fused map) gives the PPM path alone.
- :class:`FCNHead`: the optional auxiliary segmentation head (mmseg ``FCNHead``, ``concat_input=False``).
- :class:`ChangeHead`: change detection from the pyramids of the before and after images: per level a
  fusion of ``|a - b|`` and ``a + b`` (symmetric in the two dates), then a light top-down decoder.

Dense heads return logits at their finest input level; :func:`resize_to` brings them to the label size.
Convolutions are followed by BatchNorm and ReLU as in mmseg, so training needs batches of 2 or more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize_to(logits: Tensor, size: Sequence[int]) -> Tensor:
    """(B, K, h, w) -> (B, K, H, W), bilinear with align_corners=False; returned as is when sizes agree."""
    hw = (int(size[-2]), int(size[-1]))
    if tuple(logits.shape[-2:]) == hw:
        return logits
    return F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias: BatchNorm follows) -> BatchNorm -> ReLU, mmcv's ``ConvModule`` of the mmseg heads."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1) -> None:
        conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # mmcv's ConvModule init
        super().__init__(conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def classifier(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout2d -> 1x1 conv to the class logits (mmseg ``cls_seg``, weights N(0, 0.01))."""
    conv = nn.Conv2d(channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # Conv2d(bias=True) has one
    return nn.Sequential(nn.Dropout2d(dropout), conv)


def check_levels(feats: Sequence[Tensor], in_channels: Sequence[int], who: str) -> None:
    """A ValueError when ``feats`` are not the (B, C_i, h_i, w_i) maps the head was built for."""
    if len(feats) != len(in_channels):
        raise ValueError(
            f"{who} was built for {len(in_channels)} level(s) with channels {list(in_channels)}, got "
            f"{len(feats)}: pass the maps it was built for (out['hr'] for the pyramid, [out['fused']])"
        )
    for i, (f, c) in enumerate(zip(feats, in_channels)):
        if f.dim() != 4 or f.shape[1] != c:
            raise ValueError(f"{who} level {i}: expected a (B, {c}, h, w) map, got shape {tuple(f.shape)}")


class ClassificationHead(nn.Module):
    """Scene classification: x (B, C, h, w), or (B, T, C, h, w) with ``mask`` (B, T) bool (True = padded
    step) -> logits (B, K); K sigmoid outputs for multi-label.

    ``pool="mean"``: the mean over space and valid dates, no normalisation, then Linear (with a frozen
    encoder this is the linear probe). ``pool="attention"``: a learned query attends over every token
    (space x valid dates; padded tokens masked out) of the LayerNorm-ed features, then Linear. Padded
    steps are zeroed before anything reads them, so their content (even NaN) cannot change the output.
    ``standardise=True`` puts BatchNorm without affine parameters between the pooling and the Linear (MAE's
    linear probe, He et al. 2022): features of very different scales train at one learning rate.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        pool: str = "mean",
        dropout: float = 0.0,
        standardise: bool = False,
    ) -> None:
        super().__init__()
        if pool not in ("mean", "attention"):
            raise ValueError(f"pool={pool!r}: choose 'mean' (linear probe) or 'attention'")
        self.in_dim, self.pool = in_dim, pool
        self.standardise = nn.BatchNorm1d(in_dim, affine=False) if standardise else nn.Identity()
        if pool == "attention":
            self.norm = nn.LayerNorm(in_dim)
            self.query = nn.Parameter(torch.empty(1, 1, in_dim))
            self.key = nn.Linear(in_dim, in_dim, bias=False)  # a key bias shifts every score alike: no-op
            self.value = nn.Linear(in_dim, in_dim)
            nn.init.trunc_normal_(self.query, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)
        for lin in (m for m in self.modules() if isinstance(m, nn.Linear)):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def tokens(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, N, C) tokens with padded ones zeroed and (B, N) bool validity, N = (T *) h * w."""
        if x.dim() not in (4, 5) or x.shape[-3] != self.in_dim:
            raise ValueError(
                f"expected a (B, {self.in_dim}, h, w) map or a (B, T, {self.in_dim}, h, w) series, "
                f"got shape {tuple(x.shape)}"
            )
        if x.dim() == 4:
            if mask is not None:
                raise ValueError("mask is for a series (B, T, C, h, w); a single map takes none")
            b, c, h, w = x.shape
            return x.flatten(2).transpose(1, 2), torch.ones(b, h * w, dtype=torch.bool, device=x.device)
        b, t, c, h, w = x.shape
        if mask is None:
            mask = torch.zeros(b, t, dtype=torch.bool, device=x.device)
        elif mask.shape != (b, t) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a ({b}, {t}) bool tensor (True = padded), got {tuple(mask.shape)}"
            )
        if bool(mask.all(1).any()):
            raise ValueError("a sample has every time step padded: drop it or give it one valid date")
        valid = (~mask)[:, :, None].expand(b, t, h * w).reshape(b, t * h * w)
        tokens = x.permute(0, 1, 3, 4, 2).reshape(b, t * h * w, c)
        return tokens.masked_fill(~valid[..., None], 0.0), valid

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        tokens, valid = self.tokens(x, mask)  # (B, N, C), (B, N)
        if self.pool == "mean":
            pooled = tokens.sum(1) / valid.sum(1, keepdim=True).to(tokens.dtype)
        else:
            t = self.norm(tokens)
            scores = (self.key(t) @ self.query.transpose(1, 2)).squeeze(-1) / math.sqrt(self.in_dim)
            weights = scores.masked_fill(~valid, float("-inf")).softmax(-1)  # (B, N), 0 on padded tokens
            pooled = torch.bmm(weights.unsqueeze(1), self.value(t)).squeeze(1)
        return self.fc(self.dropout(self.standardise(pooled)))  # (B, K)


class PPM(nn.Module):
    """Pyramid pooling (PSPNet): x and its pooled-and-upsampled branches, concatenated, 3x3 bottleneck."""

    def __init__(self, in_ch: int, channels: int, scales: Sequence[int]) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_ch, channels)) for s in scales
        )
        self.bottleneck = ConvBNReLU(in_ch + len(self.scales) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, h, w) -> (B, channels, h, w)."""
        branches = [x] + [resize_to(stage(x), x.shape[-2:]) for stage in self.stages]
        return self.bottleneck(torch.cat(branches, 1))


class UperNetHead(nn.Module):
    """UperNet: feats [(B, C_i, h_i, w_i)], finest first -> logits (B, K, h_0, w_0).

    laterals: 1x1 convs of levels 0..L-2 plus the PPM of level L-1; top-down, each lateral adds the
    bilinearly upsampled one above; 3x3 convs on levels 0..L-2; all levels upsampled to level 0,
    concatenated, 3x3 bottleneck; dropout and a 1x1 classifier. With one level: PPM, classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = tuple(int(c) for c in in_channels)
        if not self.in_channels:
            raise ValueError("in_channels is empty: give the channels of every input level, finest first")
        self.pool_scales = tuple(pool_scales)
        self.ppm = PPM(self.in_channels[-1], channels, self.pool_scales)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in self.in_channels[:-1])
        levels = len(self.in_channels)
        self.fpn_bottleneck = ConvBNReLU(levels * channels, channels, 3) if levels > 1 else None
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        check_levels(feats, self.in_channels, "UperNetHead")
        if self.training and feats[-1].shape[0] < 2 and 1 in self.pool_scales:
            raise ValueError(
                "UperNetHead in training mode needs a batch of 2 or more (BatchNorm over the 1x1 pooled "
                "map): raise the batch size, or call .eval() for inference"
            )
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)] + [self.ppm(feats[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        x = outs[0]
        if self.fpn_bottleneck is not None:
            x = self.fpn_bottleneck(torch.cat([resize_to(o, x.shape[-2:]) for o in outs], 1))
        return self.cls(x)


class FCNHead(nn.Module):
    """Auxiliary head: x (B, C, h, w) -> ``num_convs`` 3x3 ConvBNReLU -> dropout, 1x1 -> (B, K, h, w)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        num_convs: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs={num_convs}: FCNHead needs at least one conv")
        self.in_channels = in_channels
        self.convs = nn.Sequential(
            *(ConvBNReLU(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs))
        )
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, x: Tensor) -> Tensor:
        check_levels([x], [self.in_channels], "FCNHead")
        return self.cls(self.convs(x))


class ChangeHead(nn.Module):
    """Change detection: pre, post [(B, C_i, h_i, w_i)], finest first -> change logits (B, 1, h_0, w_0).

    Per level, a 3x3 ConvBNReLU over concat(|a - b|, a + b): both terms are exactly symmetric in float
    arithmetic, so swapping the dates gives the same output bit for bit. Then top-down from the coarsest
    level: add the upsampled coarser map, a 3x3 ConvBNReLU; a 1x1 conv gives one logit per pixel.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 128) -> None:
        super().__init__()
        self.in_channels = tuple(int(c) for c in in_channels)
        if not self.in_channels:
            raise ValueError("in_channels is empty: give the channels of every input level, finest first")
        self.fuse = nn.ModuleList(ConvBNReLU(2 * c, channels, 3) for c in self.in_channels)
        self.smooth = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in self.in_channels[:-1])
        self.cls = classifier(channels, 1, 0.0)

    def forward(self, pre: Sequence[Tensor], post: Sequence[Tensor]) -> Tensor:
        check_levels(pre, self.in_channels, "ChangeHead (pre)")
        check_levels(post, self.in_channels, "ChangeHead (post)")
        for i, (a, b) in enumerate(zip(pre, post)):
            if a.shape != b.shape:
                raise ValueError(
                    f"ChangeHead level {i}: before {tuple(a.shape)} and after {tuple(b.shape)} differ: "
                    "the two images must have the same size"
                )
        fused = [f(torch.cat([(a - b).abs(), a + b], 1)) for f, a, b in zip(self.fuse, pre, post)]
        y = fused[-1]
        for i in range(len(fused) - 2, -1, -1):  # top-down
            y = self.smooth[i](fused[i] + resize_to(y, fused[i].shape[-2:]))
        return self.cls(y)


__all__ = ["ChangeHead", "ClassificationHead", "FCNHead", "UperNetHead", "resize_to"]
