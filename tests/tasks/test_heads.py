"""Task heads on the outputs of the ``tiny`` encoder: shapes, gradients, padding, symmetry (paper Sec. 4)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from skysense.models.skysense import build_model
from skysense.tasks.heads import ChangeHead, ClassificationHead, FCNHead, UperNetHead, resize_to

B, T, K = 2, 3, 5


@pytest.fixture(scope="module")
def outs() -> dict[str, Any]:
    """Encoder outputs of an hr + s2 sample (sample 1 has its last date padded) and of a second hr image."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    sample = {
        "hr": torch.randn(B, 3, 64, 64),
        "s2": torch.randn(B, T, 10, 16, 16),
        "s2_dates": torch.tensor([[19000, 19030, 19060], [19100, 19130, 19160]]),
        "s2_mask": torch.tensor([[False, False, False], [False, False, True]]),
    }
    with torch.no_grad():
        out = model(sample)
        out["hr_post"] = model({"hr": torch.randn(B, 3, 64, 64)})["hr"]
    out["s2_mask"] = sample["s2_mask"]
    return out


def assert_all_grads(head: nn.Module) -> None:
    for name, p in head.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def backward(y: Tensor) -> None:
    (y * torch.randn_like(y)).sum().backward()


@pytest.mark.parametrize("pool", ["mean", "attention"])
@pytest.mark.parametrize("source", ["hr", "fused", "s2"])
def test_classification_shapes_and_gradients(outs: dict[str, Any], pool: str, source: str) -> None:
    x = {"hr": outs["hr"][-1], "fused": outs["fused"], "s2": outs["s2"][-1]}[source]
    mask = outs["s2_mask"] if source == "s2" else None
    head = ClassificationHead(x.shape[-3], K, pool=pool, dropout=0.1)
    y = head(x, mask)
    assert y.shape == (B, K)
    backward(y)
    assert_all_grads(head)


@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_classification_padded_steps_change_nothing(outs: dict[str, Any], pool: str) -> None:
    x, mask = outs["s2"][-1], outs["s2_mask"]  # (B, T, D, h, w); sample 1 has its last date padded
    head = ClassificationHead(x.shape[2], K, pool=pool).eval()
    ref = head(x, mask)
    garbage = x.clone()
    garbage[mask] = torch.randn_like(garbage[mask]) * 1e3
    garbage[1, 2, 0, 0, 0] = float("nan")
    assert torch.equal(head(garbage, mask), ref)
    # the same as the series without the padded step
    torch.testing.assert_close(head(x[1:, :2]), ref[1:], rtol=1e-5, atol=1e-6)
    # a valid step does count
    changed = x.clone()
    changed[1, 0] += torch.randn_like(changed[1, 0])  # not a constant: LayerNorm would remove it
    assert not torch.allclose(head(changed, mask)[1], ref[1])
    if pool == "mean":  # an independent reference: the plain mean of the valid dates and pixels
        expected = head.fc(x[1, :2].mean(dim=(0, 2, 3)))
        torch.testing.assert_close(ref[1], expected, rtol=1e-5, atol=1e-6)


def test_classification_standardise_normalises_the_pooled_features(outs: dict[str, Any]) -> None:
    """standardise=True: (pooled - batch mean) / sqrt(biased batch var + eps) in training, running stats
    in eval; checked against a float64 re-computation."""
    x = torch.cat([outs["hr"][-1]] * 3) * torch.arange(1.0, 7.0).view(6, 1, 1, 1)  # 6 samples, varied scale
    head = ClassificationHead(x.shape[1], K, standardise=True)
    y = head(x)
    pooled = x.double().mean(dim=(2, 3))  # (6, C)
    z = (pooled - pooled.mean(0)) / (pooled.var(0, unbiased=False) + 1e-5).sqrt()
    expected = z @ head.fc.weight.double().T + head.fc.bias.double()
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-5)
    backward(y)
    assert_all_grads(head)
    head.eval()  # running stats after one step: 0.9 * (0, 1) + 0.1 * (batch mean, unbiased var)
    mean, var = 0.1 * pooled.mean(0), 0.9 + 0.1 * pooled.var(0, unbiased=True)
    expected = ((pooled - mean) / (var + 1e-5).sqrt()) @ head.fc.weight.double().T + head.fc.bias.double()
    torch.testing.assert_close(head(x).double(), expected, rtol=1e-4, atol=1e-5)


def test_classification_rejects_bad_input(outs: dict[str, Any]) -> None:
    x = outs["s2"][-1]
    head = ClassificationHead(x.shape[2], K)
    with pytest.raises(ValueError, match="expected a"):
        ClassificationHead(x.shape[2] + 1, K)(x)
    with pytest.raises(ValueError, match="single map takes none"):
        head(x[:, 0], outs["s2_mask"])
    with pytest.raises(ValueError, match="every time step padded"):
        head(x, torch.ones(B, T, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor"):
        head(x, torch.zeros(B, T + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="choose 'mean'"):
        ClassificationHead(8, K, pool="max")


def test_upernet_four_levels(outs: dict[str, Any]) -> None:
    feats = outs["hr"]  # strides 4..32 of a 64 px image
    head = UperNetHead([f.shape[1] for f in feats], K, channels=32)
    y = head(feats)
    assert y.shape == (B, K, 16, 16)
    assert resize_to(y, (64, 64)).shape == (B, K, 64, 64)
    backward(y)
    assert_all_grads(head)
    head.eval()
    with torch.no_grad():  # the top-down path: the coarsest level reaches the finest output everywhere
        base = head(feats)
        moved = head([*feats[:-1], feats[-1] + 1.0])
    assert ((moved - base).abs().amax(dim=1) > 0).all()


def test_upernet_one_level(outs: dict[str, Any]) -> None:
    fused = outs["fused"]  # (B, D, gh, gw)
    head = UperNetHead([fused.shape[1]], K, channels=16)
    assert head.fpn_bottleneck is None and len(head.lateral_convs) == 0
    y = head([fused])
    assert y.shape == (B, K, *fused.shape[-2:])
    backward(y)
    assert_all_grads(head)


def test_upernet_rejects_bad_input(outs: dict[str, Any]) -> None:
    feats = outs["hr"]
    head = UperNetHead([f.shape[1] for f in feats], K, channels=16)
    with pytest.raises(ValueError, match="4 level"):
        head(feats[:3])
    with pytest.raises(ValueError, match="level 2"):
        head([feats[0], feats[1], feats[1], feats[3]])
    with pytest.raises(ValueError, match="batch of 2 or more"):
        head([f[:1] for f in feats])
    assert head.eval()([f[:1] for f in feats]).shape == (1, K, 16, 16)  # inference takes one sample


def test_fcn_head(outs: dict[str, Any]) -> None:
    x = outs["hr"][2]  # (B, 64, 4, 4), the stage mmseg's auxiliary head reads
    head = FCNHead(x.shape[1], K, channels=16, num_convs=2)
    y = head(x)
    assert y.shape == (B, K, *x.shape[-2:])
    backward(y)
    assert_all_grads(head)
    with pytest.raises(ValueError, match="at least one conv"):
        FCNHead(x.shape[1], K, num_convs=0)


@pytest.mark.parametrize("levels", [4, 1])
def test_change_head_shapes_gradients_and_symmetry(outs: dict[str, Any], levels: int) -> None:
    pre, post = outs["hr"][:levels], outs["hr_post"][:levels]
    head = ChangeHead([f.shape[1] for f in pre], channels=16)
    y = head(pre, post)
    assert y.shape == (B, 1, 16, 16)
    assert torch.equal(head(post, pre), y)  # training mode: batch statistics, still exact
    backward(y)
    assert_all_grads(head)
    head.eval()
    with torch.no_grad():
        y = head(pre, post)
        assert torch.equal(head(post, pre), y)
        assert not torch.allclose(head(pre, pre), y)  # the difference matters


def test_change_head_rejects_different_sizes(outs: dict[str, Any]) -> None:
    pre = outs["hr"]
    head = ChangeHead([f.shape[1] for f in pre], channels=16)
    with pytest.raises(ValueError, match="same size"):
        head(pre, [f[..., :-1, :-1] for f in pre])
    with pytest.raises(ValueError, match="level"):
        head(pre, pre[:2])


def test_resize_to_is_bilinear_half_pixel() -> None:
    x = torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2)
    y = resize_to(x, (1, 4))
    # align_corners=False samples the source at (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped)
    torch.testing.assert_close(y, torch.tensor([[[[0.0, 0.25, 0.75, 1.0]]]]))
    assert resize_to(x, (1, 2)) is x
