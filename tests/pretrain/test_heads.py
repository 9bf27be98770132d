"""Projection heads: shapes, cosine logits, weight-normalised prototypes, sharing."""

import torch

from skysense.pretrain.heads import DINOHead, HeadConfig, ProjectionHeads

CFG = HeadConfig(hidden_dim=16, bottleneck_dim=8, out_dim=12, cma_dim=4)


def test_dino_head_logits_are_cosines_and_ignore_prototype_scale():
    head = DINOHead(5, CFG)
    x = torch.randn(3, 7, 5)
    y = head(x)
    assert y.shape == (3, 7, 12) and y.abs().max() <= 1 + 1e-6
    with torch.no_grad():
        head.prototypes.weight.mul_(torch.rand(12, 1) * 10 + 0.1)  # weight norm: row scale is irrelevant
    torch.testing.assert_close(head(x), y)


def test_heads_shared_or_per_granularity():
    dims = {"hr": 6, "s2": 5}
    shared = ProjectionHeads(dims, CFG, cma_in=6)
    assert set(shared.heads) == {"hr", "s2"}
    x = torch.randn(4, 6)
    assert torch.equal(shared("hr", "pix", x), shared("hr", "img", x))
    assert shared.cma(x).shape == (4, 4)
    split = ProjectionHeads(
        dims, HeadConfig(hidden_dim=16, bottleneck_dim=8, out_dim=12, share_granularities=False)
    )
    assert set(split.heads) == {f"{s}_{g}" for s in dims for g in ("pix", "obj", "img")}
    assert isinstance(split.cma, torch.nn.Identity)


def test_standardised_head_matches_a_float64_reference_and_ignores_offset_and_scale():
    torch.manual_seed(0)
    head = DINOHead(5, CFG, standardise=True).double()
    plain = DINOHead(5, CFG).double()
    plain.load_state_dict(head.state_dict())
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    flat = x.reshape(-1, 5)
    ref = (flat - flat.mean(0)) / (flat.var(0, unbiased=False) + 1e-5).sqrt()
    torch.testing.assert_close(head(x), plain(ref.reshape(3, 7, 5)))
    # A shared offset (the extra token's embedding) and a per-channel scale change nothing.
    shifted = x * torch.rand(5, dtype=torch.float64).add(0.5) + 100 * torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(head(shifted), head(x), rtol=1e-5, atol=1e-5)
    head.eval()  # the teacher: still the statistics of its own call
    torch.testing.assert_close(head(shifted), plain(ref.reshape(3, 7, 5)), rtol=1e-5, atol=1e-5)
    one = x[:1, :1]  # a single token has no spread: it goes through as is
    torch.testing.assert_close(head(one), plain(one))


def test_standardisation_keeps_near_constant_features_apart():
    """Features = a shared vector + a small per-token part (the fused stream at initialisation): the plain
    head maps every token to nearly the same logits, the standardised head does not."""
    torch.manual_seed(0)
    x = torch.randn(16) + 0.01 * torch.randn(64, 16)  # (N, D), pairwise cosine ~1
    cfg = HeadConfig(hidden_dim=32, bottleneck_dim=16, out_dim=64)
    heads = ProjectionHeads({"hr": 16, "s2": 16, "fused": 16}, cfg)
    assert heads.heads["s2"].norm is None  # the default standardises hr and fused only
    assert heads.heads["hr"].norm is not None and heads.heads["fused"].norm is not None
    heads.heads["s2"].load_state_dict(heads.heads["fused"].state_dict())
    spread_plain = heads("s2", "img", x).std(0).mean()
    spread_std = heads("fused", "img", x).std(0).mean()
    assert spread_std > 20 * spread_plain
