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
