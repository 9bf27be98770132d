"""Tests of the s2/s1 ViT encoder (spec Sec. 2, 5, 6) against timm and hand-written references."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import Tensor, nn

from skysense.config import ViTConfig
from skysense.models.vit import TransformerEncoderLayer, VisionTransformer

OFFICIAL_KEYS = Path(__file__).resolve().parents[3] / "shared" / "docs" / "official_keys.txt"
# grid 8x8 at the native size, 65 tokens with the cls slot
TINY = ViTConfig(
    in_chans=3, img_size=16, patch_size=2, embed_dim=32, depth=3, num_heads=4, out_indices=(0, 1, 2)
)


def build(seed: int = 0, **overrides: object) -> VisionTransformer:
    """A tiny float64 model whose every parameter (LN and biases included) is random, so nothing cancels."""
    torch.manual_seed(seed)
    model = VisionTransformer(dataclasses.replace(TINY, **overrides)).double()  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def to_timm(model: VisionTransformer) -> TimmViT:
    """timm's ViT (class token, no pooling, no head) carrying our weights; its final norm is never used."""
    cfg = model.cfg
    ref = TimmViT(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=True,
        class_token=True,
        global_pool="",
        num_classes=0,
        norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps),
        act_layer=nn.GELU,
    ).double()
    ours = model.state_dict()
    sd = {
        "cls_token": ours["cls_token"],
        "pos_embed": ours["pos_embed"],
        "patch_embed.proj.weight": ours["patch_embed.projection.weight"],
        "patch_embed.proj.bias": ours["patch_embed.projection.bias"],
    }
    names = {
        "norm1": "ln1",
        "attn.qkv": "attn.attn.in_proj",
        "attn.proj": "attn.attn.out_proj",
        "norm2": "ln2",
        "mlp.fc1": "ffn.layers.0.0",
        "mlp.fc2": "ffn.layers.1",
    }
    for i in range(cfg.depth):
        for theirs, mine in names.items():
            for kind in ("weight", "bias"):
                key = f"layers.{i}.{mine}_{kind}" if mine.endswith("in_proj") else f"layers.{i}.{mine}.{kind}"
                sd[f"blocks.{i}.{theirs}.{kind}"] = ours[key]
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert set(missing) == {"norm.weight", "norm.bias"} and not unexpected
    return ref.eval()


def hand_pos_embed(pos_embed: Tensor, grid: int, hw: tuple[int, int]) -> Tensor:
    """mmseg resize_pos_embed written out: bicubic on the grid part, the cls slot untouched."""
    cls_pos, grid_pos = pos_embed[:, :1], pos_embed[:, 1:]
    grid_pos = grid_pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos, size=hw, mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, grid_pos.flatten(2).transpose(1, 2)], dim=1)


def hand_forward(ref: TimmViT, x: Tensor, grid: int, with_cls_token: bool = True) -> list[Tensor]:
    """mmseg's forward spelled out on timm's modules: corner padding, cls, resized pos, all block outputs."""
    p = ref.patch_embed.patch_size[0]
    x = F.pad(x, (0, (p - x.shape[-1] % p) % p, 0, (p - x.shape[-2] % p) % p))
    t = ref.patch_embed.proj(x)
    n, d, h, w = t.shape
    cls_token, pos_embed = cast(Tensor, ref.cls_token), cast(Tensor, ref.pos_embed)
    t = torch.cat([cls_token.expand(n, -1, -1), t.flatten(2).transpose(1, 2)], dim=1)
    t = t + hand_pos_embed(pos_embed, grid, (h, w))
    if not with_cls_token:
        t = t[:, 1:]
    outs = []
    for blk in ref.blocks:
        t = blk(t)
        spatial = t[:, 1:] if with_cls_token else t
        outs.append(spatial.reshape(n, h, w, d).permute(0, 3, 1, 2))
    return outs


def layer_of(model: VisionTransformer, i: int) -> TransformerEncoderLayer:
    return cast(TransformerEncoderLayer, model.layers[i])


def assert_all_close(a: list[Tensor], b: list[Tensor], atol: float = 1e-10) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.shape == v.shape
        torch.testing.assert_close(u, v, atol=atol, rtol=0)


@torch.no_grad()
def test_matches_timm_at_native_size() -> None:
    model = build().eval()
    ref = to_timm(model)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ours = model(x)
    theirs = ref.forward_intermediates(x, [0, 1, 2], norm=False, output_fmt="NCHW", intermediates_only=True)
    assert [o.shape for o in ours] == [(2, 32, 8, 8)] * 3
    assert all(o.is_contiguous() for o in ours)
    assert_all_close(ours, cast(list[Tensor], theirs))
    assert model.out_channels == 32


@torch.no_grad()
# (8, 32): a 4x16 grid has as many tokens as the native 8x8 one; mmseg would add the embedding
# unresized there (it compares token counts), we resize it like any other grid
@pytest.mark.parametrize("hw", [(24, 12), (10, 10), (32, 32), (8, 32)])
def test_resized_pos_embed_matches_hand_reference(hw: tuple[int, int]) -> None:
    model = build().eval()
    ref = to_timm(model)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    assert_all_close(model(x), hand_forward(ref, x, TINY.grid_size))
    grid = (hw[0] // 2, hw[1] // 2)
    torch.testing.assert_close(model.interpolate_pos_embed(grid), hand_pos_embed(model.pos_embed, 8, grid))


@torch.no_grad()
def test_interpolate_pos_embed_properties() -> None:
    model = build()
    assert model.interpolate_pos_embed((8, 8)) is model.pos_embed  # native grid: untouched
    # bicubic reproduces a constant grid exactly, and the cls slot is kept as is
    model.pos_embed[:, 1:] = 0.5
    out = model.interpolate_pos_embed((5, 11))
    assert out.shape == (1, 1 + 5 * 11, 32)
    torch.testing.assert_close(out[:, 0], model.pos_embed[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1:], torch.full_like(out[:, 1:], 0.5), rtol=0, atol=1e-12)


@torch.no_grad()
@pytest.mark.parametrize("hw", [(15, 13), (17, 16), (7, 9)])
def test_odd_sizes_pad_right_bottom(hw: tuple[int, int]) -> None:
    model = build().eval()
    x = torch.randn(1, 3, *hw, dtype=torch.float64)
    out = model(x)
    assert out[0].shape[-2:] == (-(-hw[0] // 2), -(-hw[1] // 2))
    assert_all_close(out, hand_forward(to_timm(model), x, TINY.grid_size))
    padded = F.pad(x, (0, hw[1] % 2, 0, hw[0] % 2))  # explicit zeros right/bottom give the same maps
    assert_all_close(out, model(padded), atol=0)


@torch.no_grad()
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_attention_equals_nn_multihead_attention(qkv_bias: bool) -> None:
    model = build(qkv_bias=qkv_bias)
    layer = layer_of(model, 1)
    packed = layer.attn.attn
    mha = nn.MultiheadAttention(32, 4, bias=qkv_bias, batch_first=True).double()
    mha.load_state_dict(packed.state_dict())  # same names, same packing: loads strictly
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    torch.testing.assert_close(packed(x), mha(x, x, x, need_weights=False)[0], atol=1e-12, rtol=0)
    # and the whole pre-norm layer, by hand
    fc1, fc2 = layer.ffn.layers[0].get_submodule("0"), layer.ffn.layers[1]
    y = x + mha(*(3 * [layer.ln1(x)]), need_weights=False)[0]
    y = y + fc2(F.gelu(fc1(layer.ln2(y))))
    torch.testing.assert_close(layer(x), y, atol=1e-12, rtol=0)


@torch.no_grad()
def test_without_cls_token() -> None:
    model = build(with_cls_token=False).eval()
    ref = to_timm(model)
    for hw in [(16, 16), (12, 20)]:
        x = torch.randn(2, 3, *hw, dtype=torch.float64)
        assert_all_close(model(x), hand_forward(ref, x, TINY.grid_size, with_cls_token=False))
    # same weights with the cls token give different maps: the token takes part in attention
    with_cls = build(with_cls_token=True).eval()
    with_cls.load_state_dict(model.state_dict())
    assert not torch.allclose(with_cls(x)[-1], model(x)[-1])


@torch.no_grad()
def test_out_indices_pick_the_right_layers() -> None:
    full = build().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    t = full.patch_embed(x).flatten(2).transpose(1, 2)
    t = torch.cat([full.cls_token.expand(2, -1, -1), t], dim=1) + full.pos_embed
    manual = []
    for layer in full.layers:
        t = layer(t)
        manual.append(t[:, 1:].transpose(1, 2).reshape(2, 32, 8, 8))
    for indices in [(0, 1, 2), (2, 0), (1,), (-1, 0)]:
        model = build(out_indices=indices).eval()
        assert_all_close(model(x), [manual[i] for i in indices], atol=0)


@pytest.mark.data
def test_huge_keys_and_shapes_equal_official() -> None:
    if not OFFICIAL_KEYS.exists():
        pytest.skip(f"{OFFICIAL_KEYS} (official key list of the released checkpoints) is absent")
    official = {}
    for line in OFFICIAL_KEYS.read_text().splitlines():
        if line.startswith("s2_vit\t"):
            _, key, shape, _, _ = line.split("\t")
            official[key] = tuple(int(s) for s in shape.strip("[]").split(","))
    with torch.device("meta"):
        model = VisionTransformer(ViTConfig(in_chans=10, img_size=64, patch_size=4, embed_dim=1024, depth=24))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official
    assert sum(p.numel() for p in model.parameters()) == 302_738_432


def test_every_parameter_gets_a_gradient() -> None:
    model = build().train()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    loss = sum((o * torch.randn_like(o)).sum() for o in model(x))
    loss.backward()  # type: ignore[union-attr]
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert (model.pos_embed.grad[0].abs().sum(-1) > 0).all()  # type: ignore[index]  # every row is used


def test_drop_path_rates_increase_linearly() -> None:
    model = VisionTransformer(dataclasses.replace(TINY, depth=5, drop_path=0.2))
    rates = [getattr(layer.drop_path, "drop_prob", 0.0) for layer in model.layers]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_init() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(dataclasses.replace(TINY, embed_dim=64, depth=1, out_indices=(0,)))
    layer = layer_of(model, 0)
    assert layer.attn.attn.in_proj_weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    for name, p in model.named_parameters():
        if name.endswith("bias") and not name.startswith("layers.0.ln"):
            assert p.abs().sum() == 0, name
    assert bool((layer.ln1.weight == 1).all()) and layer.ln1.eps == TINY.norm_eps


def test_bf16_autocast_close_to_fp32() -> None:
    model = build().float().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    for a, b in zip(low, ref):
        assert (a.float() - b).norm() / b.norm() < 3e-2


@pytest.mark.compile
@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    # inductor codegen dominates (about 15 s cold on 2 cores): one layer, one small input
    model = build(depth=1, embed_dim=16, num_heads=2, out_indices=(0,)).float().eval()
    x = torch.randn(1, 3, 12, 10)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)  # fullgraph: no graph breaks allowed
    assert_all_close(compiled, eager, atol=1e-5)


def test_grad_checkpointing_is_exact() -> None:
    x = torch.randn(2, 3, 12, 16, dtype=torch.float64)
    results = []
    for ckpt in (False, True):
        model = build(drop_path=0.3).train()  # checkpoint replays the drop-path RNG state
        model.grad_checkpointing = ckpt
        torch.manual_seed(1)
        outs = model(x)
        sum(o.square().sum() for o in outs).backward()  # type: ignore[union-attr]
        results.append((outs, {n: p.grad for n, p in model.named_parameters()}))
    (o1, g1), (o2, g2) = results
    assert_all_close(o1, o2, atol=0)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=0, rtol=0, msg=name)


def test_deterministic_under_seed() -> None:
    a, b = build(seed=3), build(seed=3)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert_all_close(a.eval()(x), b.eval()(x), atol=0)
