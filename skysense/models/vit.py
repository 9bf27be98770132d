"""ViT spatial encoder of the ``s2``/``s1`` modalities (spec Sec. 2, 5 and 6; mmseg ``VisionTransformer``).

Parameter names follow mmseg/mmcv exactly (``layers.{i}.attn.attn.in_proj_weight``, ``ffn.layers.0.0``,
...), so the released SkySense ``backbone_s2``/``backbone_s1`` weights load with an identity mapping.
The compute path avoids ``nn.MultiheadAttention``'s forward and uses ``F.linear`` +
``F.scaled_dot_product_attention`` on the same packed weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from skysense.config import ViTConfig
from skysense.models.layers import DropPath
from skysense.runtime import linear


def resize_pos_embed(pos_embed: Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Tensor:
    """Resize a ``(1, 1 + h*w, D)`` position embedding from grid ``src_hw`` to ``dst_hw``.

    As mmseg ``resize_pos_embed``: bicubic, align_corners=False, on the grid part only; the cls slot
    (index 0) is kept as is. Returns ``(1, 1 + H*W, D)``.
    """
    if tuple(src_hw) == tuple(dst_hw):
        return pos_embed
    d = pos_embed.shape[-1]
    cls_pos = pos_embed[:, :1]  # (1, 1, D)
    grid = pos_embed[:, 1:].reshape(1, src_hw[0], src_hw[1], d).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=tuple(dst_hw), mode="bicubic", align_corners=False)  # (1, D, H, W)
    return torch.cat([cls_pos, grid.flatten(2).transpose(1, 2)], dim=1)


class PackedSelfAttention(nn.Module):
    """Self-attention holding ``nn.MultiheadAttention``'s packed parameters (q, k, v stacked in rows)."""

    def __init__(self, dim: int, num_heads: int, bias: bool = True) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"width {dim} not divisible by {num_heads} heads"
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        # nn.MultiheadAttention(bias=False) drops both the in- and the out-projection bias
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim)) if bias else None
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        init_transformer_(self)  # never leave the packed weights as torch.empty garbage

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """(N, L, D) -> (N, L, D); ``attn_mask`` bool, broadcastable to (N, H, L, L), True = attend."""
        n, l, d = x.shape
        qkv = linear(x, self.in_proj_weight, self.in_proj_bias)  # (N, L, 3D)
        qkv = qkv.view(n, l, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)  # (3, N, H, L, d)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)  # (N, H, L, d)
        return linear(x.transpose(1, 2).reshape(n, l, d), self.out_proj.weight, self.out_proj.bias)


class Attention(nn.Module):
    """mmcv ``MultiheadAttention`` wrapper: a shell so that keys read ``attn.attn.*``."""

    def __init__(self, dim: int, num_heads: int, bias: bool = True) -> None:
        super().__init__()
        self.attn = PackedSelfAttention(dim, num_heads, bias)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        return self.attn(x, attn_mask)


class FFN(nn.Module):
    """mmcv ``FFN`` with two layers: Linear(D, hidden) -> exact GELU -> Linear(hidden, D)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.GELU()), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        fc1, fc2 = self.layers[0][0], self.layers[1]  # type: ignore[index]
        assert isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
        return linear(linear(x, fc1.weight, fc1.bias, gelu=True), fc2.weight, fc2.bias)


class TransformerEncoderLayer(nn.Module):
    """Pre-norm layer of mmseg: ``x + attn(ln1(x))`` then ``x + ffn(ln2(x))``, drop-path on both branches."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ln2 = nn.LayerNorm(dim, eps=norm_eps)
        self.ffn = FFN(dim, int(dim * mlp_ratio))
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """(N, L, D) -> (N, L, D); ``attn_mask`` as in :class:`PackedSelfAttention` (the fusion's padding)."""
        x = x + self.drop_path(self.attn(self.ln1(x), attn_mask))
        return x + self.drop_path(self.ffn(self.ln2(x)))


def init_transformer_(module: nn.Module) -> None:
    """In place: trunc-normal(.02) Linear and packed attention weights, zero biases, unit LayerNorm,
    kaiming fan-in convolutions (mmseg's ViT init; the fusion transformer uses it too)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, PackedSelfAttention):
            nn.init.trunc_normal_(m.in_proj_weight, std=0.02)
            if m.in_proj_bias is not None:
                nn.init.zeros_(m.in_proj_bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PatchEmbed(nn.Module):
    """Conv2d(kernel = stride = patch) after mmcv "corner" padding: zeros right/bottom to a patch multiple."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, D, ceil(H/p), ceil(W/p))."""
        pad_h, pad_w = -x.shape[-2] % self.patch_size, -x.shape[-1] % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.projection(x)


class VisionTransformer(nn.Module):
    """mmseg ``VisionTransformer`` with SkySense's settings (spec Sec. 6).

    patch embed -> prepend cls -> add (resized) pos_embed -> [drop cls if ``with_cls_token`` is
    False] -> pre-norm layers, no final norm. ``forward`` returns one ``(N, D, h, w)`` map per
    index of ``cfg.out_indices``, in that order, with ``h, w = ceil(H/p), ceil(W/p)``.
    """

    def __init__(self, cfg: ViTConfig, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        d, depth = cfg.embed_dim, cfg.depth
        assert cfg.out_indices, "out_indices is empty"
        assert all(-depth <= i < depth for i in cfg.out_indices), f"bad out_indices for depth {depth}"
        self.out_indices = tuple(i % depth for i in cfg.out_indices)  # negative indices count from the end
        self.out_channels: int = d
        self.with_cls_token = cfg.with_cls_token
        self.grad_checkpointing = grad_checkpointing

        self.patch_embed = PatchEmbed(cfg.in_chans, d, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid_size**2 + 1, d))
        # plain floats (no torch.linspace) so that building on the meta device works
        rates = [cfg.drop_path * i / max(depth - 1, 1) for i in range(depth)]
        layer_args = (d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.norm_eps)
        self.layers = nn.ModuleList([TransformerEncoderLayer(*layer_args, drop_path=r) for r in rates])
        self.init_weights()

    def init_weights(self) -> None:
        """mmseg's init: trunc-normal(.02) for Linear/packed weights and tokens, zero biases, unit LN."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_transformer_(self)

    def interpolate_pos_embed(self, grid_hw: tuple[int, int]) -> Tensor:
        """Position embedding for a token grid ``(h, w)``: ``(1, 1 + h*w, D)``, the cls slot first.

        Resized only when the grid differs from ``img_size / patch_size`` (mmseg compares token
        counts instead, which differs only for non-square grids with exactly grid**2 tokens).
        """
        g = self.cfg.grid_size
        return resize_pos_embed(self.pos_embed, (g, g), (grid_hw[0], grid_hw[1]))

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) -> [(N, D, h, w)] * len(out_indices)."""
        x = self.patch_embed(x)  # (N, D, h, w)
        n, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (N, h*w, D)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)  # (N, 1 + h*w, D)
        x = x + self.interpolate_pos_embed((h, w))
        if not self.with_cls_token:
            x = x[:, 1:]  # (N, h*w, D); mmseg drops it after the position embedding
        feats: dict[int, Tensor] = {}
        last = max(self.out_indices)  # layers past the last exposed one cannot change any output
        for i, layer in enumerate(self.layers[: last + 1]):
            if self.grad_checkpointing and self.training:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
            if i in self.out_indices:
                tokens = x[:, 1:] if self.with_cls_token else x  # (N, h*w, D)
                feats[i] = tokens.transpose(1, 2).reshape(n, d, h, w).contiguous()  # (N, D, h, w)
        return [feats[i] for i in self.out_indices]
