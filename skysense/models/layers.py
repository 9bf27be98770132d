"""Small layers shared by the encoders.

``DropPath`` is stochastic depth (Huang et al., ECCV 2016) with timm's semantics, written here so that
importing a model does not import timm (and torchvision behind it): the command line starts in a fraction
of the time. Same random draws as ``timm.layers.DropPath``, so a seeded run is unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn


class DropPath(nn.Module):
    """Zero a residual branch per sample with probability ``drop_prob`` while training; scale the kept
    samples by ``1 / (1 - drop_prob)`` so the expectation is unchanged. x: (B, ...) -> (B, ...)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # one draw per sample
        return x * (mask.div_(keep) if keep > 0.0 else mask)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"
