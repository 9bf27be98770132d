"""Our DropPath against timm's (the layer it replaces): same draws, same scaling, same eval identity."""

import pytest
import torch
from timm.layers import DropPath as TimmDropPath

from skysense.models.layers import DropPath


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(16, 7, 5), (8, 3, 4, 4)])
def test_drop_path_matches_timm(p, shape) -> None:
    x = torch.randn(shape)
    ours, ref = DropPath(p), TimmDropPath(p)
    for train in (True, False):
        ours.train(train), ref.train(train)
        torch.manual_seed(3)
        a = ours(x)
        torch.manual_seed(3)
        b = ref(x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(DropPath(p).eval()(x), x)
    assert repr(ours) == repr(ref)


def test_drop_path_zeroes_whole_samples_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.ones(20_000, 3)
    y = DropPath(0.25).train()(x)
    per_sample = y[:, 0]
    assert torch.equal(y, per_sample[:, None].expand_as(y))  # a sample is dropped or kept as a whole
    torch.testing.assert_close(per_sample.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs(float(y.mean()) - 1.0) < 0.02  # E[y] = x (binomial sd of the mean ~0.004)


def test_drop_path_is_differentiable() -> None:
    x = torch.randn(4, 6, requires_grad=True)
    torch.manual_seed(1)
    DropPath(0.5).train()(x).sum().backward()
    assert x.grad is not None and set(x.grad[:, 0].tolist()) <= {0.0, 2.0}
