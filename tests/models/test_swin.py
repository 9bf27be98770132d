"""Tests of the hr SwinV2 encoder (spec Sec. 2, 5, 6) against torchvision and a hand-written mmcls reference.

Two independent references:

* torchvision's ``SwinTransformer`` built as V2 (``SwinTransformerBlockV2``, ``PatchMergingV2``), which
  follows Microsoft's original code, carrying our weights. Semantic differences from the official mmcls
  code (hence from ours) found while mapping it, all avoided by the compared config and sizes:

  - no-shift rule: torchvision drops the shift per axis when ``window >= padded side``; mmcls drops both
    shifts when ``min(H, W) == window`` of the unpadded map (an 8 x 16 map with window 8 is shifted along
    W by torchvision, not at all by mmcls); maps smaller than the window: mmcls asserts, we pad (below);
  - no extra norm (``norm3``) and a single final ``norm`` on the last stage only (ours: ``norm0..3``);
  - patch merging concatenates the 2x2 neighbours as (0,0), (1,0), (0,1), (1,1) blocks of C channels;
    mmcls uses ``nn.Unfold`` order c*4 + kh*2 + kw: the reduction weight's columns are permuted;
  - the patch embedding has no padding (the conv floors sizes that are not a multiple of the patch);
  - qkv bias is one tensor whose k third is zeroed on every forward (mmcls: ``q_bias``, ``v_bias``);
  - the cpb MLP hidden width is fixed at 512;
  - stochastic depth wraps the normed branch, ``x + dp(norm(f(x)))``; mmcls (and ours) apply it before
    the norm, ``x + norm(dp(f(x)))`` (training only, not compared).

  Both pad right/bottom *before* the cyclic shift (timm shifts first, then pads: another difference).

* a float64 per-window loop written here from spec Sec. 6 for what torchvision does not cover: the
  mmcls no-shift rule at ``min(H, W) == window``, padding to window multiples, the -100 mask, the
  ``norm3`` placement, ``nn.Unfold`` patch merging, "corner" padding of the patch embedding, and our
  extension to maps smaller than the window (pad, no shift).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

from skysense.config import SwinConfig
from skysense.models.swin import (
    PatchEmbed,
    PatchMerging,
    ShiftWindowMSA,
    SwinTransformerV2,
    relative_coords_table,
    relative_position_index,
    shift_mask,
)

REPO = Path(__file__).resolve().parents[2]
TINY = SwinConfig(
    in_chans=3, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, cpb_hidden=32,
    extra_norm_every=0,
)  # fmt: skip


def official_keys_file() -> Path | None:
    for root in (REPO.parent, REPO):
        p = root / "shared" / "docs" / "official_keys.txt"
        if p.is_file():
            return p
    return None


def build(seed: int = 0, clamp: bool = True, **overrides: object) -> SwinTransformerV2:
    """A tiny float64 model whose every parameter is random (LN, biases, logit scales), so nothing cancels.

    With ``clamp`` one logit scale is set above log(100), so that the clamp matters (its gradient is 0).
    """
    torch.manual_seed(seed)
    model = SwinTransformerV2(dataclasses.replace(TINY, **overrides)).double()  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if clamp:
            model.stages[0].blocks[0].attn.w_msa.logit_scale[0] = 5.0
    return model


def assert_all_close(a: list[Tensor], b: list[Tensor], atol: float, rtol: float = 0.0) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, (i, x.shape, y.shape)
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol, msg=f"level {i}")


# ----------------------------------------------------------------------------- official keys


@pytest.mark.data
@pytest.mark.skipif(official_keys_file() is None, reason="official_keys.txt not found (shared/docs)")
def test_huge_state_dict_equals_the_official_keys_on_meta() -> None:
    official, buffers = [], {}
    for line in official_keys_file().read_text().splitlines():  # type: ignore[union-attr]
        if line.startswith("hr_swinv2\t"):
            _, key, shape, kind, _ = line.split("\t")
            if kind == "buffer":
                buffers[key] = tuple(eval(shape))
            else:
                official.append((key, tuple(eval(shape))))
    with torch.device("meta"):
        model = SwinTransformerV2(SwinConfig())
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == official  # same keys, shapes and order: the released weights load with identity mapping
    assert sum(p.numel() for p in model.parameters()) == 655_079_632
    assert len(official) + len(buffers) == 483
    named_buffers = {k: tuple(v.shape) for k, v in model.named_buffers()}
    assert named_buffers == buffers  # recomputed, non-persistent, same shapes as the official ones
    assert model.out_channels == (352, 704, 1408, 2816)


# ----------------------------------------------------------------------------- torchvision reference


def to_torchvision(model: SwinTransformerV2) -> SwinTransformer:
    """torchvision's SwinV2 (features + final norm) carrying our weights."""
    cfg = model.cfg
    ref = SwinTransformer(
        patch_size=[cfg.patch_size] * 2, embed_dim=cfg.embed_dim, depths=list(cfg.depths),
        num_heads=list(cfg.num_heads), window_size=[cfg.window_size] * 2, mlp_ratio=cfg.mlp_ratio,
        stochastic_depth_prob=0.0, num_classes=1, block=SwinTransformerBlockV2,
        downsample_layer=PatchMergingV2,
    ).double()  # fmt: skip
    ours = model.state_dict()
    sd = {
        "features.0.0.weight": ours["patch_embed.projection.weight"],
        "features.0.0.bias": ours["patch_embed.projection.bias"],
        "features.0.2.weight": ours["patch_embed.norm.weight"],
        "features.0.2.bias": ours["patch_embed.norm.bias"],
        "norm.weight": ours[f"norm{len(cfg.depths) - 1}.weight"],
        "norm.bias": ours[f"norm{len(cfg.depths) - 1}.bias"],
    }
    for s, depth in enumerate(cfg.depths):
        if s > 0:  # torchvision merges at the end of the previous stage
            w = ours[f"stages.{s}.downsample.reduction.weight"]  # columns c*4 + kh*2 + kw
            w = w.view(w.shape[0], -1, 2, 2).permute(0, 3, 2, 1)  # columns (kw*2 + kh)*C + c
            sd[f"features.{2 * s}.reduction.weight"] = w.flatten(1)
            for n in ("weight", "bias"):
                sd[f"features.{2 * s}.norm.{n}"] = ours[f"stages.{s}.downsample.norm.{n}"]
        for b in range(depth):
            src, dst = f"stages.{s}.blocks.{b}.", f"features.{2 * s + 1}.{b}."
            attn = src + "attn.w_msa."
            q_bias, v_bias = ours[attn + "q_bias"], ours[attn + "v_bias"]
            sd[dst + "attn.qkv.weight"] = ours[attn + "qkv.weight"]
            k_junk = 5 * torch.ones_like(q_bias)  # torchvision zeroes the k third on every forward
            sd[dst + "attn.qkv.bias"] = torch.cat([q_bias, k_junk, v_bias])
            for n in ("proj.weight", "proj.bias", "logit_scale", "cpb_mlp.0.weight", "cpb_mlp.0.bias"):
                sd[dst + "attn." + n] = ours[attn + n]
            sd[dst + "attn.cpb_mlp.2.weight"] = ours[attn + "cpb_mlp.2.weight"]
            for n in ("weight", "bias"):
                sd[dst + f"norm1.{n}"] = ours[src + f"norm1.{n}"]
                sd[dst + f"norm2.{n}"] = ours[src + f"norm2.{n}"]
                sd[dst + f"mlp.0.{n}"] = ours[src + f"ffn.layers.0.0.{n}"]
                sd[dst + f"mlp.3.{n}"] = ours[src + f"ffn.layers.1.{n}"]
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert {k for k in missing if "relative_" not in k} == {"head.weight", "head.bias"} and not unexpected
    return ref.eval()


@pytest.mark.parametrize("size", [(160, 160), (176, 208)])
def test_last_level_matches_torchvision_swin_v2(size: tuple[int, int]) -> None:
    # window 4: every stage map is larger than the window (both shift); 176 x 208 pads stages 2-3 to
    # window multiples and merges an odd 11 x 13 map, which both pad right/bottom alike
    model = build(cpb_hidden=512).eval()
    ref = to_torchvision(model)
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        ours = model(x)[-1]
        theirs = ref.norm(ref.features(x)).permute(0, 3, 1, 2)
    assert ours.shape == theirs.shape == (1, 128, math.ceil(size[0] / 32), math.ceil(size[1] / 32))
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- naive mmcls reference


def naive_layer_norm(x: Tensor, p: dict[str, Tensor], name: str, eps: float) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * p[name + ".weight"] + p[name + ".bias"]


def naive_window_attention(x: Tensor, p: dict[str, Tensor], pre: str, heads: int, w: int, s: int) -> Tensor:
    """mmcls ``ShiftWindowMSA`` + ``WindowMSAV2`` with explicit loops over windows, heads and token pairs."""
    b, h, wd, c = x.shape
    shift = 0 if min(h, wd) <= w else s  # mmcls: no shift at min == window; ours also below (mmcls asserts)
    hp, wp = math.ceil(h / w) * w, math.ceil(wd / w) * w
    xp = torch.zeros(b, hp, wp, c, dtype=x.dtype)
    xp[:, :h, :wd] = x
    if shift:
        xp = torch.roll(xp, (-shift, -shift), (1, 2))
    label = torch.zeros(hp, wp)  # regions of the rolled map, as mmcls slices them
    if shift:
        cnt = 0
        for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
                label[hs, ws] = cnt
                cnt += 1
    # continuous position bias for every offset (dy, dx), coordinates computed in fp32 as officially
    cpb = torch.zeros(2 * w - 1, 2 * w - 1, heads, dtype=x.dtype)
    for dy in range(-(w - 1), w):
        for dx in range(-(w - 1), w):
            r = torch.tensor([dy, dx], dtype=torch.float32) * 8 / (w - 1)
            coord = (torch.sign(r) * torch.log2(r.abs() + 1) / math.log2(8)).to(x.dtype)
            hidden = torch.relu(coord @ p[pre + "cpb_mlp.0.weight"].T + p[pre + "cpb_mlp.0.bias"])
            cpb[dy + w - 1, dx + w - 1] = 16 * torch.sigmoid(hidden @ p[pre + "cpb_mlp.2.weight"].T)
    qkv_bias = torch.cat([p[pre + "q_bias"], torch.zeros_like(p[pre + "q_bias"]), p[pre + "v_bias"]])
    logit_scale = torch.exp(torch.clamp(p[pre + "logit_scale"].flatten(), max=math.log(100)))
    ty, tx = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    ty, tx = ty.flatten(), tx.flatten()
    d = c // heads
    out = torch.zeros_like(xp)
    for bi in range(b):
        for i in range(hp // w):
            for j in range(wp // w):
                win = xp[bi, i * w : (i + 1) * w, j * w : (j + 1) * w].reshape(w * w, c)
                q, k, v = (win @ p[pre + "qkv.weight"].T + qkv_bias).split(c, dim=-1)
                lab = label[i * w : (i + 1) * w, j * w : (j + 1) * w].flatten()
                mask = torch.where(lab[:, None] != lab[None, :], -100.0, 0.0).to(x.dtype)
                heads_out = []
                for hd in range(heads):
                    qh, kh, vh = (t[:, hd * d : (hd + 1) * d] for t in (q, k, v))
                    qh = qh / qh.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                    kh = kh / kh.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                    logits = qh @ kh.T * logit_scale[hd]
                    dy, dx = ty[:, None] - ty[None, :] + w - 1, tx[:, None] - tx[None, :] + w - 1
                    logits = logits + cpb[dy, dx, hd]
                    heads_out.append(torch.softmax(logits + mask, dim=-1) @ vh)
                o = torch.cat(heads_out, dim=-1) @ p[pre + "proj.weight"].T + p[pre + "proj.bias"]
                out[bi, i * w : (i + 1) * w, j * w : (j + 1) * w] = o.view(w, w, c)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    return out[:, :h, :wd]


def naive_forward(model: SwinTransformerV2, x: Tensor) -> list[Tensor]:
    """The official forward from spec Sec. 6, reading our parameters by their official names."""
    cfg, eps, w = model.cfg, model.cfg.norm_eps, model.cfg.window_size
    p = dict(model.named_parameters())
    ps = cfg.patch_size
    x = F.pad(x, (0, (-x.shape[3]) % ps, 0, (-x.shape[2]) % ps))  # mmcv "corner" padding
    x = F.conv2d(x, p["patch_embed.projection.weight"], p["patch_embed.projection.bias"], stride=ps)
    x = naive_layer_norm(x.permute(0, 2, 3, 1), p, "patch_embed.norm", eps)
    outs = []
    for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
        if s > 0:  # pad to even, nn.Unfold(2, 2), Linear, LayerNorm
            xc = x.permute(0, 3, 1, 2)
            xc = F.pad(xc, (0, xc.shape[3] % 2, 0, xc.shape[2] % 2))
            hh, ww = xc.shape[2] // 2, xc.shape[3] // 2
            cols = nn.Unfold(kernel_size=2, stride=2)(xc).transpose(1, 2)  # (B, L, 4C)
            x = cols @ p[f"stages.{s}.downsample.reduction.weight"].T
            x = naive_layer_norm(x, p, f"stages.{s}.downsample.norm", eps).view(x.shape[0], hh, ww, -1)
        for i in range(depth):
            pre = f"stages.{s}.blocks.{i}."
            a = naive_window_attention(x, p, pre + "attn.w_msa.", heads, w, w // 2 if i % 2 else 0)
            x = x + naive_layer_norm(a, p, pre + "norm1", eps)
            hid = F.gelu(x @ p[pre + "ffn.layers.0.0.weight"].T + p[pre + "ffn.layers.0.0.bias"])
            f = hid @ p[pre + "ffn.layers.1.weight"].T + p[pre + "ffn.layers.1.bias"]
            x = x + naive_layer_norm(f, p, pre + "norm2", eps)
            if cfg.extra_norm_every and (i + 1) % cfg.extra_norm_every == 0:
                x = naive_layer_norm(x, p, pre + "norm3", eps)
        outs.append(naive_layer_norm(x, p, f"norm{s}", eps).permute(0, 3, 1, 2))
    return outs


@pytest.mark.parametrize(
    "size, overrides",
    [
        # maps 32x40, 16x20, 8x10, 4x5: stage 3 has min(H, W) == window (no shift) and pads W 5 -> 8
        ((128, 160), {}),
        # 25x13 (pad 28x16, shift), 13x7 (pad, shift), 7x4 (min == window), 4x2 (smaller: our extension);
        # odd maps into patch merging, input not a patch multiple (corner padding)
        ((99, 50), {}),
        # extra norm every 3 blocks: norm3 on stage 2, blocks 2 and 5 only
        ((64, 48), {"depths": (2, 1, 6, 1), "extra_norm_every": 3}),
    ],
)
def test_matches_naive_mmcls_reference(size: tuple[int, int], overrides: dict[str, object]) -> None:
    model = build(**overrides).eval()
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        assert_all_close(model(x), naive_forward(model, x), atol=1e-10)


def test_gradients_match_naive_mmcls_reference() -> None:
    model = build(clamp=False, depths=(2, 1, 3, 1), extra_norm_every=3).train()
    x = torch.randn(1, 3, 36, 44, dtype=torch.float64, requires_grad=True)  # maps 9x11 (shifted) .. 2x2
    weights = [
        torch.randn(1, 16 * 2**i, math.ceil(36 / 2 ** (i + 2)), math.ceil(44 / 2 ** (i + 2)))
        for i in range(4)
    ]
    grads = []
    for fn in (model, lambda t: naive_forward(model, t)):
        model.zero_grad()
        x.grad = None
        sum((o * w).sum() for o, w in zip(fn(x), weights)).backward()  # type: ignore[union-attr]
        grads.append([x.grad.clone()] + [p.grad.clone() for p in model.parameters()])  # type: ignore[union-attr]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_shift_mask_is_the_mmcls_region_mask() -> None:
    hp, wp, w, s = 12, 16, 4, 2
    label = torch.zeros(hp, wp)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            label[hs, ws] = cnt
            cnt += 1
    windows = [label[i : i + w, j : j + w].flatten() for i in range(0, hp, w) for j in range(0, wp, w)]
    expected = torch.stack([torch.where(m[:, None] != m[None, :], -100.0, 0.0) for m in windows])
    mask = shift_mask(hp, wp, w, s, torch.float32, torch.device("cpu"))
    assert torch.equal(mask, expected)
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    assert mask[0].abs().sum() == 0  # interior windows are not masked


@pytest.mark.parametrize("hw, shifted", [((8, 8), False), ((8, 13), False), ((9, 12), True), ((5, 7), False)])
def test_no_shift_when_the_smaller_side_fits_one_window(hw: tuple[int, int], shifted: bool) -> None:
    # mmcls: no roll at all when min(H, W) == window; ours also when smaller (mmcls asserts there)
    torch.manual_seed(0)
    attn = ShiftWindowMSA(8, 2, window=8, shift=4, cpb_hidden=16).double().eval()
    plain = ShiftWindowMSA(8, 2, window=8, shift=0, cpb_hidden=16).double().eval()
    plain.load_state_dict(attn.state_dict())
    x = torch.randn(2, *hw, 8, dtype=torch.float64)
    with torch.no_grad():
        same = torch.allclose(attn(x), plain(x), atol=1e-12)
    assert same != shifted


@pytest.mark.parametrize("batch", [1, 4])  # either the activations or the (smaller) weight get permuted
def test_patch_merging_uses_unfold_order(batch: int) -> None:
    torch.manual_seed(0)
    merge = PatchMerging(6, eps=1e-5).double()
    x = torch.randn(batch, 5, 7, 6, dtype=torch.float64)  # odd sizes: padded right/bottom to 6 x 8
    xc = F.pad(x.permute(0, 3, 1, 2), (0, 1, 0, 1))
    cols = nn.Unfold(kernel_size=2, stride=2)(xc).transpose(1, 2)  # feature c*4 + kh*2 + kw
    expected = merge.norm(merge.reduction(cols)).view(batch, 3, 4, 12)
    torch.testing.assert_close(merge(x), expected, atol=1e-12, rtol=0)


def test_patch_embedding_pads_right_bottom() -> None:
    torch.manual_seed(0)
    embed = PatchEmbed(3, 8, patch=4, eps=1e-5).double()
    x = torch.randn(1, 3, 10, 13, dtype=torch.float64)
    expected = embed.norm(embed.projection(F.pad(x, (0, 3, 0, 2))).permute(0, 2, 3, 1))
    out = embed(x)
    assert out.shape == (1, 3, 4, 8)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_extra_norm_placement_and_drop_path_rates() -> None:
    cfg = dataclasses.replace(TINY, depths=(2, 1, 7, 1), extra_norm_every=3, drop_path=0.8)
    model = SwinTransformerV2(cfg)
    with_norm3 = {k.rsplit(".norm3", 1)[0] for k in model.state_dict() if ".norm3." in k}
    assert with_norm3 == {"stages.2.blocks.2", "stages.2.blocks.5"}
    blocks = [b for st in model.stages for b in st.blocks]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]  # block 0: Identity
    assert rates == pytest.approx([0.8 * i / 10 for i in range(11)])
    off = SwinTransformerV2(dataclasses.replace(TINY, depths=(2, 1, 7, 1), extra_norm_every=0))
    assert not any(".norm3." in k for k in off.state_dict())


def test_relative_position_tables() -> None:
    w = 5
    table = relative_coords_table(w)
    assert table.shape == (1, 9, 9, 2) and table.dtype == torch.float32
    r = torch.arange(-4, 5, dtype=torch.float32)
    f = torch.sign(r) * torch.log2((8 * r / 4).abs() + 1) / 3
    torch.testing.assert_close(table[0, :, 0, 0], f, atol=1e-7, rtol=0)  # dy varies along dim 1
    torch.testing.assert_close(table[0, 0, :, 1], f, atol=1e-7, rtol=0)  # dx along dim 2
    index = relative_position_index(w)
    for a in range(w * w):
        for b in (0, 7, 24):
            dy, dx = a // w - b // w, a % w - b % w
            assert index[a, b] == (dy + w - 1) * (2 * w - 1) + dx + w - 1


def test_init() -> None:
    torch.manual_seed(0)
    model = SwinTransformerV2(dataclasses.replace(TINY, embed_dim=64))
    w_msa = model.stages[0].blocks[0].attn.w_msa
    assert w_msa.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.allclose(w_msa.logit_scale, torch.full_like(w_msa.logit_scale, math.log(10)))
    for zero in (w_msa.q_bias, w_msa.v_bias, w_msa.proj.bias, w_msa.cpb_mlp[0].bias):
        assert zero.abs().sum() == 0
    assert bool((model.norm0.weight == 1).all()) and model.norm0.eps == TINY.norm_eps
    assert model.out_channels == (64, 128, 256, 512)


# ----------------------------------------------------------------------------- training and runtime


def test_every_parameter_gets_a_gradient() -> None:
    model = build(clamp=False, depths=(2, 2, 3, 2), extra_norm_every=3).train()
    x = torch.randn(1, 3, 56, 68, dtype=torch.float64)  # stage maps 14x17 .. 2x3, shifts where allowed
    outs = model(x)
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)  # random projection: LN sums cancel
    loss.backward()  # type: ignore[union-attr]
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_close_to_fp32() -> None:
    model = build().float().eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    for a, b in zip(low, ref):
        assert a.dtype == torch.bfloat16
        assert (a.float() - b).norm() / b.norm() < 5e-2


def test_inference_mode_caches_do_not_leak_into_training() -> None:
    model = build().float()
    x = torch.randn(1, 3, 40, 44)
    with torch.inference_mode():
        model.eval()(x)  # fills the per-resolution caches (masks, gather indices, position biases)
    outs = model.train()(x)
    sum(o.sum() for o in outs).backward()  # type: ignore[union-attr]
    assert model.stages[0].blocks[1].attn.w_msa.cpb_mlp[0].weight.grad is not None


@pytest.mark.compile
def test_torch_compile_fullgraph_matches_eager() -> None:
    # dynamo + AOT autograd with no graph break; the inductor backend is exercised by the slow test
    model = build(depths=(2, 1, 1, 1)).float().eval()
    x = torch.randn(1, 3, 40, 44)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, dynamic=False, fullgraph=True, backend="aot_eager")(x)
    assert_all_close(compiled, eager, atol=1e-5)


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SKYSENSE_TEST_INDUCTOR"), reason="inductor codegen takes ~30 s cold")
def test_torch_compile_inductor_matches_eager() -> None:
    model = build(depths=(2, 1, 1, 1)).float().eval()
    x = torch.randn(1, 3, 40, 44)
    with torch.inference_mode():
        eager = model(x)
        compiled = torch.compile(model, dynamic=False, fullgraph=True)(x)
    assert_all_close(compiled, eager, atol=1e-4)


def test_grad_checkpointing_is_exact() -> None:
    x = torch.randn(2, 3, 36, 40, dtype=torch.float64)
    results = []
    for ckpt in (False, True):
        model = build(depths=(2, 2, 1, 1), drop_path=0.3).train()  # checkpoint replays the drop-path RNG
        model.grad_checkpointing = ckpt
        calls: list[int] = []
        model.stages[1].blocks[0].attn.register_forward_hook(lambda *_, c=calls: c.append(1))
        torch.manual_seed(1)
        outs = model(x)
        sum(o.square().sum() for o in outs).backward()  # type: ignore[union-attr]
        assert len(calls) == (2 if ckpt else 1)  # recomputed in backward
        results.append((outs, {n: p.grad for n, p in model.named_parameters()}))
    (o1, g1), (o2, g2) = results
    assert_all_close(o1, o2, atol=0)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=0, rtol=0, msg=name)


def test_deterministic_under_seed() -> None:
    a, b = build(seed=3), build(seed=3)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    x = torch.randn(1, 3, 48, 40, dtype=torch.float64)
    with torch.no_grad():
        assert_all_close(a.eval()(x), b.eval()(x), atol=0)


@pytest.mark.parametrize("size", [(50, 70), (33, 97), (16, 16)])
def test_sizes_not_multiple_of_32(size: tuple[int, int]) -> None:
    model = build().float().eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *size))
    for i, o in enumerate(outs):
        assert o.shape == (2, 16 * 2**i, math.ceil(size[0] / 2 ** (i + 2)), math.ceil(size[1] / 2 ** (i + 2)))
        assert o.is_contiguous() and torch.isfinite(o).all()


def test_eval_cache_follows_weights_and_mode() -> None:
    model, other = build(seed=0).eval(), build(seed=1).eval()
    x = torch.randn(1, 3, 40, 48, dtype=torch.float64)
    with torch.no_grad():
        first = model(x)
        model.load_state_dict(other.state_dict())  # the cached position biases must not survive this
        assert_all_close(model(x), other(x), atol=1e-12)
    model.train()
    with torch.no_grad():
        train_out = model(x)  # drop_path 0: training mode computes the same function
    assert_all_close(train_out, other(x), atol=1e-12)
    assert not torch.allclose(first[-1], train_out[-1])
