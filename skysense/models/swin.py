"""Swin Transformer V2 encoder ``g_hr`` (SkySense spec Sec. 2, semantics Sec. 6; Liu et al., CVPR 2022).

The function is the one of the official SkySense backbone, i.e. mmcls 0.25 ``SwinTransformerV2`` with
``pad_small_map=False``, post-norm patch merging and ``out_indices=(0, 1, 2, 3)``; module names reproduce
its state-dict keys, so the released weights load with an identity key mapping:

- patch embedding: Conv2d(kernel = stride = patch, bias) on the input zero-padded right/bottom to a patch
  multiple (mmcv "corner" padding), then LayerNorm;
- stage s > 0 starts with patch merging: pad H/W right/bottom to even, gather 2x2 neighbours in the order
  of ``nn.Unfold(2, 2)`` (feature c*4 + kh*2 + kw), Linear(4C -> 2C, no bias), then LayerNorm;
- post-norm blocks ``x = x + norm1(attn(x))``, ``x = x + norm2(ffn(x))``, then ``x = norm3(x)`` on blocks
  whose index i in their stage has (i + 1) % extra_norm_every == 0 (mmcls applies the rule in every stage;
  with depths (2, 2, 18, 2) and 6 only stage 2 has any);
- window attention on the map zero-padded right/bottom to a window multiple; odd blocks shift the padded
  map by window // 2 (mask -100 between regions), except when min(H, W) of the unpadded map equals the
  window (then neither roll is done); cosine attention with ``exp(min(logit_scale, log 100))``, bias
  ``16 * sigmoid(cpb_mlp(table))``, qkv bias ``(q_bias, 0, v_bias)``;
- stochastic depth as mmcls places it: ``x + norm1(drop_path(attn(x)))`` (likewise for the FFN);
- outputs: the 4 stage maps, each through ``norm{i}``, as (B, C_i, H_i, W_i) at strides 4/8/16/32.

Our one extension: where a stage's map is smaller than the window (inputs under 32 * window px), mmcls
asserts; we zero-pad the map to the window like any other size and do not shift (the rule min(H, W) <=
window). Everywhere the official code runs, the outputs agree to float precision.

Speed (CPU eager is memory-bound here): one ``index_select`` with a cached index does roll + window
partition, another undoes both and crops the padding (under ``torch.compile``: plain roll/permute, which
inductor folds into index arithmetic); windows are laid out token-major, (N, B*nW, C),
so q/k/v of every window and head are strided views that ``F.scaled_dot_product_attention`` reads
directly; ``exp(logit_scale)`` is folded into the normalised q; shifted blocks merge the windows into
the head axis, (B, nW*heads, N, d), so the per-window mask plus position bias broadcasts over the batch.
The position bias is cached in eval mode without autograd; when autograd does not need them, q/k
scaling and GELU run in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from skysense.config import SwinConfig
from skysense.models.layers import DropPath
from skysense.runtime import linear

LOGIT_SCALE_MAX = math.log(100.0)  # mmcls: clamp(logit_scale, max=log(1 / 0.01))
MASK_VALUE = -100.0  # mmcls: additive mask between regions of a shifted window
_CACHE: dict[tuple[object, ...], Tensor] = {}
_CACHE_MAX_NUMEL = 1 << 26  # per-resolution constants kept at once (256 MB of fp32); then start afresh


def relative_coords_table(window: int) -> Tensor:
    """(1, 2w-1, 2w-1, 2) fp32 log-spaced coordinates sign(r) * log2(|8 r / (w-1)| + 1) / log2(8)."""
    r = torch.arange(-(window - 1), window, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).unsqueeze(0)
    table = table / max(window - 1, 1) * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


def relative_position_index(window: int) -> Tensor:
    """(N, N) index into the (2w-1)^2 table for every (query, key) pair of a window, N = w*w."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N), both in [0, 2w-2]
    return rel[0] * (2 * window - 1) + rel[1]


def _cached(key: tuple[object, ...], build: Callable[[], Tensor]) -> Tensor:
    """Per-resolution constants (masks, gather indices): cached in eager mode, traced under compile.

    Built as normal tensors even under ``torch.inference_mode`` so that later training can save them.
    """
    if torch.compiler.is_compiling():
        return build()
    if key not in _CACHE:
        with torch.inference_mode(False), torch.no_grad():
            value = build()
        if sum(t.numel() for t in _CACHE.values()) + value.numel() > _CACHE_MAX_NUMEL:
            _CACHE.clear()
        _CACHE[key] = value
    return _CACHE[key]


def shift_mask(hp: int, wp: int, window: int, shift: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(nW, N, N) mask of the shifted windows of a padded (hp, wp) map: 0 within a region, -100 across.

    Regions along each axis are [0, n - w), [n - w, n - s), [n - s, n) of the rolled map (mmcls/Swin).
    """

    def build() -> Tensor:
        def regions(n: int) -> Tensor:
            i = torch.arange(n, device=device)
            return (i >= n - window).long() + (i >= n - shift).long()

        ids = regions(hp)[:, None] * 3 + regions(wp)[None, :]  # (Hp, Wp)
        ids = ids.view(hp // window, window, wp // window, window).transpose(1, 2).flatten(2).flatten(0, 1)
        mask = torch.zeros(ids.shape[0], ids.shape[1], ids.shape[1], dtype=dtype, device=device)
        return mask.masked_fill(ids[:, None, :] != ids[:, :, None], MASK_VALUE)

    return _cached(("mask", hp, wp, window, shift, dtype, str(device)), build)


def window_index(
    b: int, h: int, w: int, window: int, shift: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Row indices that turn a (B, H, W) map into rolled windows and back, with padding and crop folded in.

    ``fwd``: (N * B*nW,) rows of the flattened zero-padded (B, Hp, Wp) map, in the token-major window
    order (ty, tx, b, i, j) of ``torch.roll(-shift)`` followed by window partition.
    ``inv``: (B*H*W,) rows of the flattened windows that land on each unpadded pixel after the reverse
    partition and ``torch.roll(+shift)``. One ``index_select`` each replaces pad/roll/permute/crop copies.
    """
    hp, wp = h + (-h) % window, w + (-w) % window

    def build() -> Tensor:
        ty, tx, bi, i, j = torch.meshgrid(
            *(torch.arange(n, device=device) for n in (window, window, b, hp // window, wp // window)),
            indexing="ij",
        )
        fwd = ((bi * hp + (i * window + ty + shift) % hp) * wp + (j * window + tx + shift) % wp).flatten()
        inv = torch.empty_like(fwd)
        inv[fwd] = torch.arange(fwd.numel(), device=device)
        inv = inv.view(b, hp, wp)[:, :h, :w].flatten()
        return torch.cat([fwd, inv])

    both = _cached(("index", b, h, w, window, shift, str(device)), build)
    n_fwd = b * hp * wp
    return both[:n_fwd], both[n_fwd:]


def _free(t: Tensor) -> bool:
    """No autograd graph needs ``t``: an op may write into it (fresh big CPU allocations are slow)."""
    return not (t.requires_grad and torch.is_grad_enabled())


def _residual(y: Tensor, x: Tensor) -> Tensor:
    """``x + y``, written into ``y`` (a fresh LayerNorm output: its backward keeps no output) when it can."""
    return y.add_(x) if torch.promote_types(y.dtype, x.dtype) == y.dtype else x + y


class WindowMSAV2(nn.Module):
    """Cosine window attention with continuous position bias (``attn.w_msa``, spec Sec. 6)."""

    relative_coords_table: Tensor
    relative_position_index: Tensor

    def __init__(self, dim: int, num_heads: int, window: int, cpb_hidden: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, cpb_hidden), nn.ReLU(inplace=True), nn.Linear(cpb_hidden, num_heads, bias=False)
        )
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.register_buffer("relative_coords_table", relative_coords_table(window), persistent=False)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self._bias_cache: dict[tuple[torch.dtype, torch.device], tuple[tuple[int, ...], Tensor]] = {}

    def train(self, mode: bool = True) -> WindowMSAV2:
        self._bias_cache.clear()
        return super().train(mode)

    def position_bias(self, dtype: torch.dtype) -> Tensor:
        """(heads, N, N): 16 * sigmoid(cpb_mlp(table)), computed in the table's precision (fp32).

        Cached in eval mode without autograd, keyed on dtype/device and guarded by the version counters
        of the cpb parameters (so ``load_state_dict`` or an optimizer step invalidates it). Parameters
        made under ``torch.inference_mode`` have no version counter: their bias is recomputed each call.
        """
        table = self.relative_coords_table
        use_cache = not (self.training or torch.is_grad_enabled() or torch.compiler.is_compiling())
        use_cache = use_cache and not any(p.is_inference() for p in self.cpb_mlp.parameters())
        if use_cache:
            versions = tuple(p._version for p in self.cpb_mlp.parameters())
            hit = self._bias_cache.get((dtype, table.device))
            if hit is not None and hit[0] == versions:
                return hit[1]
        n = self.window * self.window
        with torch.autocast(table.device.type, enabled=False):
            bias = self.cpb_mlp(table).view(-1, self.num_heads)  # ((2w-1)^2, heads)
            bias = 16 * torch.sigmoid(bias[self.relative_position_index.view(-1)])
        bias = bias.view(n, n, self.num_heads).permute(2, 0, 1).to(dtype).contiguous()  # (heads, N, N)
        if use_cache:
            self._bias_cache[(dtype, table.device)] = (versions, bias)
        return bias

    def forward(self, x: Tensor, batch: int, mask: Tensor | None = None) -> Tensor:
        """x: (N, B*nW, C) windows, token-major; mask: (nW, N, N) or None -> (N, B*nW, C)."""
        n, bw, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = linear(x, self.qkv.weight, qkv_bias)  # one GEMM on the leaf weight (autocast caches its cast)
        q, k, v = qkv.view(n, bw, 3, h, d).unbind(2)  # (N, B*nW, heads, d) each
        # cosine attention as F.normalize does it (eps 1e-12), exp(logit_scale) folded into q
        scale = self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp().view(h, 1)
        q_factor = scale.to(q.dtype) / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k_norm = k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        q, k = (q.mul_(q_factor), k.div_(k_norm)) if _free(qkv) else (q * q_factor, k / k_norm)
        bias = self.position_bias(q.dtype)  # (heads, N, N)
        if mask is None:
            q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # (B*nW, heads, N, d)
            attn_mask = bias.unsqueeze(0)
        else:  # windows into the head axis so the (nW, heads, N, N) mask broadcasts over the batch
            # (B, nW*heads, N, d); q, k are fresh tensors, v is copied here
            q, k, v = (t.reshape(n, batch, -1, d).permute(1, 2, 0, 3) for t in (q, k, v))
            attn_mask = (mask.to(q.dtype).unsqueeze(1) + bias).reshape(1, -1, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)
        out = out.permute(2, 0, 1, 3).reshape(n, bw, c)  # a view where SDPA keeps the layout (CPU flash)
        return linear(out, self.proj.weight, self.proj.bias)


class ShiftWindowMSA(nn.Module):
    """(Shifted) window attention on a (B, H, W, C) map (``attn``, mmcls ``ShiftWindowMSA``)."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, cpb_hidden: int) -> None:
        super().__init__()
        self.window = window
        self.shift_size = shift
        self.w_msa = WindowMSAV2(dim, num_heads, window, cpb_hidden)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        ws = self.window
        shift = self.shift_size if min(h, w) > ws else 0  # mmcls: no shift when the map fits one window
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp, nh, nw = h + pad_b, w + pad_r, (h + pad_b) // ws, (w + pad_r) // ws
        mask = shift_mask(hp, wp, ws, shift, x.dtype, x.device) if shift else None
        if torch.compiler.is_compiling():  # plain roll/permute: inductor turns them into index arithmetic
            if shift:
                x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            # (B, Hp, Wp, C) -> (w, w, B, nh, nw, C) -> (N, B*nW, C)
            # contiguous: a strided (N, B*nW, C) view would make the qkv linear a bmm on a copied weight
            x = x.view(b, nh, ws, nw, ws, c).permute(2, 4, 0, 1, 3, 5).reshape(ws * ws, -1, c).contiguous()
            x = self.w_msa(x, b, mask)
            x = x.view(ws, ws, b, nh, nw, c).permute(2, 3, 0, 4, 1, 5).reshape(b, hp, wp, c)
            if shift:
                x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
            return x[:, :h, :w]
        fwd, inv = window_index(b, h, w, ws, shift, x.device)  # eager: one cached gather each way
        x = x.reshape(-1, c).index_select(0, fwd).view(ws * ws, -1, c)  # (N, B*nW, C), rolled windows
        x = self.w_msa(x, b, mask)
        return x.view(-1, c).index_select(0, inv).view(b, h, w, c)  # unrolled, cropped


class FFN(nn.Module):
    """Linear -> GELU (erf) -> Linear; mmcv ``FFN`` names ``layers.0.0`` and ``layers.1``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.GELU()), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        fc1, fc2 = self.layers[0][0], self.layers[1]  # type: ignore[index]
        assert isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
        return linear(linear(x, fc1.weight, fc1.bias, gelu=True), fc2.weight, fc2.bias)


class SwinBlockV2(nn.Module):
    """Post-norm block; ``norm3`` only on blocks with the extra norm (mmcls ``SwinBlockV2``)."""

    def __init__(
        self, dim: int, num_heads: int, shift: bool, extra_norm: bool, drop_path: float, cfg: SwinConfig
    ) -> None:
        super().__init__()
        window = cfg.window_size
        self.attn = ShiftWindowMSA(dim, num_heads, window, window // 2 if shift else 0, cfg.cpb_hidden)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.ffn = FFN(dim, int(dim * cfg.mlp_ratio))
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.norm3 = nn.LayerNorm(dim, eps=cfg.norm_eps) if extra_norm else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = _residual(self.norm1(self.drop_path(self.attn(x))), x)  # mmcls drops the branch before its norm
        x = _residual(self.norm2(self.drop_path(self.ffn(x))), x)
        if self.norm3 is not None:
            x = self.norm3(x)
        return x


class PatchMerging(nn.Module):
    """2x2 neighbours in ``nn.Unfold(2, 2)`` order -> Linear(4C, 2C, no bias) -> LayerNorm (post-norm)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        x = x.view(b, h // 2, 2, w // 2, 2, c)  # (B, H/2, kh, W/2, kw, C)
        weight = self.reduction.weight  # official input feature c*4 + kh*2 + kw
        if x.numel() > weight.numel():  # cheaper to gather whole channel rows and permute the weight
            x = x.transpose(2, 3).reshape(b, h // 2, w // 2, 4 * c)  # feature (kh*2 + kw)*C + c
            weight = weight.view(-1, c, 4).transpose(1, 2).reshape(-1, 4 * c)
        else:
            x = x.permute(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, 4 * c)  # nn.Unfold order
        return self.norm(linear(x, weight))


class PatchEmbed(nn.Module):
    """Conv2d(kernel = stride = patch) on the right/bottom zero-padded input, then LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch: int, eps: float) -> None:
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, ceil(H/p), ceil(W/p), C)."""
        pad_b, pad_r = (-x.shape[2]) % self.patch, (-x.shape[3]) % self.patch
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        return self.norm(self.projection(x).permute(0, 2, 3, 1))


class SwinStage(nn.Module):
    """Optional patch merging (stages 1..3), then the blocks (mmcls ``SwinBlockV2Sequence``)."""

    def __init__(
        self, in_dim: int, depth: int, heads: int, downsample: bool, drop_paths: list[float], cfg: SwinConfig
    ) -> None:
        super().__init__()
        self.downsample = PatchMerging(in_dim, cfg.norm_eps) if downsample else None
        dim = 2 * in_dim if downsample else in_dim
        every = cfg.extra_norm_every
        self.blocks = nn.ModuleList(
            SwinBlockV2(dim, heads, i % 2 == 1, every > 0 and (i + 1) % every == 0, drop_paths[i], cfg)
            for i in range(depth)
        )

    def forward(self, x: Tensor, grad_checkpointing: bool = False) -> Tensor:
        """(B, H, W, C_in) -> (B, H', W', C); blocks recomputed in backward with ``grad_checkpointing``."""
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            if grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class SwinTransformerV2(nn.Module):
    """SwinV2 ``hr`` encoder: (B, C_in, H, W) -> 4 maps (B, C_i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2)))."""

    def __init__(self, cfg: SwinConfig, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_channels = cfg.out_channels
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.norm_eps)
        dpr = torch.linspace(0, cfg.drop_path, sum(cfg.depths), device="cpu").tolist()  # as in mmcls
        self.stages = nn.ModuleList()
        for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            in_dim = self.out_channels[max(s - 1, 0)]
            drop_paths = dpr[sum(cfg.depths[:s]) : sum(cfg.depths[: s + 1])]
            self.stages.append(SwinStage(in_dim, depth, heads, s > 0, drop_paths, cfg))
        for s, dim in enumerate(self.out_channels):
            self.add_module(f"norm{s}", nn.LayerNorm(dim, eps=cfg.norm_eps))
        self.grad_checkpointing = grad_checkpointing  # when training, recompute every block in backward
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, C_in, H, W) -> [(B, C_i, H_i, W_i)] at strides 4, 8, 16, 32, each through ``norm{i}``."""
        x = self.patch_embed(x)  # (B, H/4, W/4, C)
        outs = []
        for s, stage in enumerate(self.stages):
            x = stage(x, self.grad_checkpointing and self.training)  # (B, H_s, W_s, C_s)
            outs.append(getattr(self, f"norm{s}")(x).permute(0, 3, 1, 2).contiguous())
        return outs


__all__ = ["SwinTransformerV2", "shift_mask", "relative_coords_table", "relative_position_index"]
