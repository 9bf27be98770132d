"""The encoder under ``torch.inference_mode`` / ``torch.no_grad``: built, loaded and run there, and the
Swin position-bias cache still right when the weights change afterwards."""

import torch

from skysense.models.skysense import build_model
from tests.models.test_skysense import make_sample


def _weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    m = build_model("tiny")
    with torch.no_grad():
        for p in m.parameters():  # random everywhere, so every weight (cpb MLP included) matters
            p.normal_(0, 0.05)
    return m.state_dict()


def _reference(state: dict[str, torch.Tensor], sample: dict) -> torch.Tensor:
    fresh = build_model("tiny").eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        return fresh(sample)["fused"]


def test_built_loaded_and_run_under_inference_mode():
    sample, a = make_sample(), _weights(1)
    with torch.inference_mode():
        model = build_model("tiny").eval()
        model.load_state_dict(a)
        first = model(sample)["fused"]
        again = model(sample)["fused"]
    torch.testing.assert_close(first, _reference(a, sample))
    torch.testing.assert_close(again, first)


def test_inference_mode_model_reloaded_inside_inference_mode():
    # inference-tensor weights have no version counter: new weights must not meet a stale bias
    sample, a, b = make_sample(), _weights(1), _weights(2)
    with torch.inference_mode():
        model = build_model("tiny").eval()
        model.load_state_dict(a)
        model(sample)
        model.load_state_dict(b)
        out = model(sample)["fused"]
    torch.testing.assert_close(out, _reference(b, sample))


def test_cache_follows_new_weights_loaded_outside_inference_mode():
    sample, a, b = make_sample(), _weights(1), _weights(2)
    model = build_model("tiny").eval()
    model.load_state_dict(a)
    with torch.inference_mode():
        model(sample)  # fills the bias cache
    with torch.no_grad():
        model(sample)
    model.load_state_dict(b)
    with torch.no_grad():
        out_ng = model(sample)["fused"]
    with torch.inference_mode():
        out_im = model(sample)["fused"]
    ref = _reference(b, sample)
    assert not torch.allclose(ref, _reference(a, sample))  # the new weights change the output
    torch.testing.assert_close(out_ng, ref)
    torch.testing.assert_close(out_im, ref)
