"""Multi-modal temporal fusion with the date-aware temporal position encoding (paper Eq. 2-3).

Per spatial cell s of the common grid, the tokens of all dates of all modalities,
``F_T = [F_hr (1) | F_s2 (T1) | F_s1 (T2)]``, get the DTPE row of their acquisition day added,
are projected to the fusion width, an extra learnable token ``F_e`` is prepended, and a stack of
pre-norm transformer layers mixes them; the extra token's output is ``F_fus_mm``.

Parameter names follow the released fusion weights (``porj_linear`` sic, ``cls_token``,
``layers.{i}``), so official weights load by name; the DTPE table (released as ``ctpe``) is
``dtpe`` here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from skysense.config import FusionConfig
from skysense.dates import dtpe_index
from skysense.models.vit import TransformerEncoderLayer, init_transformer_
from skysense.runtime import linear


class TemporalFusion(nn.Module):
    """Fuse (B, L, C, h, w) time-stacked aligned features into ``F_fus_mm`` (B, D, h, w)."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        # Zero init as in the release: without dates (or before training) DTPE is a no-op.
        self.dtpe = nn.Parameter(torch.zeros(1, cfg.dtpe_days, cfg.in_dim)) if cfg.use_dtpe else None
        self.porj_linear = nn.Linear(cfg.in_dim, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                d, cfg.num_heads, cfg.mlp_ratio, norm_eps=cfg.norm_eps, drop_path=rates[i]
            )
            for i in range(cfg.depth)
        )
        self.grad_checkpointing = False
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_transformer_(self)

    def date_encoding(self, days: Tensor, dated: Tensor) -> Tensor | None:
        """DTPE rows, already projected: (B, L) days, (B, L) bool -> (B, L, D), zero where undated.

        proj(F + P) = proj(F) + W P, and W P is gathered from the projected 365-row table, which
        is far cheaper than adding a C-wide row to every one of the h*w*L tokens.
        """
        if self.dtpe is None:
            return None
        table = self.dtpe[0] @ self.porj_linear.weight.t()  # (365, D)
        rows = table[dtpe_index(days.clamp(min=0), self.cfg.dtpe_calendar, self.cfg.dtpe_days)]  # (B, L, D)
        return rows * dated.unsqueeze(-1).to(rows.dtype)

    def forward(self, feats: Tensor, days: Tensor, dated: Tensor, pad: Tensor) -> Tensor:
        """feats (B, L, C, h, w); days (B, L) int64 days since 1970; dated/pad (B, L) bool -> (B, D, h, w).

        ``pad`` True marks padded time steps: their tokens are zeroed and never attended to.
        """
        b, l, c, h, w = feats.shape
        x = linear(
            feats.permute(0, 3, 4, 1, 2), self.porj_linear.weight, self.porj_linear.bias
        )  # (B, h, w, L, D)
        enc = self.date_encoding(days, dated)
        if enc is not None:
            x = x + enc[:, None, None].to(x.dtype)
        x = x.masked_fill(pad[:, None, None, :, None], 0.0).reshape(b * h * w, l, -1)  # (B*h*w, L, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # (N, 1+L, D)
        keep = torch.cat([pad.new_zeros(b, 1), pad], dim=1).logical_not()  # (B, 1+L), True = attend
        attn_mask = keep[:, None, None, :].expand(b, h * w, 1, l + 1).reshape(b * h * w, 1, 1, l + 1)
        for layer in self.layers:
            if self.grad_checkpointing and self.training:
                x = checkpoint(layer, x, attn_mask, use_reentrant=False)
            else:
                x = layer(x, attn_mask)
        return x[:, 0].reshape(b, h, w, -1).permute(0, 3, 1, 2)  # (B, D, h, w)
