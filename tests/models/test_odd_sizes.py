"""Sentinel inputs whose side is not a multiple of the ViT patch: the fused map keeps the input size."""

import torch

from skysense.models.skysense import build_model
from tests.models.test_skysense import make_sample


@torch.no_grad()
def test_9x9_s2_gives_a_9x9_fused_map_equal_to_the_zero_padded_input():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    assert model.cfg.s2.patch_size == 2  # 9 px -> 5 tokens, 10 aligned cells before the crop
    sample = make_sample(("s2", "s1"), b=1)
    g = torch.Generator().manual_seed(1)
    odd = dict(
        sample, s2=torch.randn(1, 3, 10, 9, 9, generator=g), s1=torch.randn(1, 2, 2, 9, 9, generator=g)
    )
    out = model(odd)
    assert out["fused"].shape[-2:] == (9, 9)
    assert out["s2_aligned"].shape[-2:] == (9, 9)
    assert out["s2"][-1].shape[-2:] == (5, 5)  # tokens: ceil(9 / 2)
    # the model pads with zeros to 10x10: the 9x9 result is exactly that result's first 9 rows/columns
    padded = dict(odd, s2=torch.nn.functional.pad(odd["s2"], (0, 1, 0, 1)))
    padded["s1"] = torch.nn.functional.pad(odd["s1"], (0, 1, 0, 1))
    ref = model(padded)
    torch.testing.assert_close(out["s2_aligned"], ref["s2_aligned"][..., :9, :9])
    torch.testing.assert_close(out["fused"], ref["fused"][..., :9, :9])


@torch.no_grad()
def test_odd_sentinel_size_with_hr_meets_the_hr_grid():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    sample = make_sample(("hr", "s2"), b=1)
    sample["s2"] = torch.randn(1, sample["s2"].shape[1], 10, 7, 7)
    out = model(sample)
    assert out["fused"].shape[-2:] == out["hr"][-1].shape[-2:]
