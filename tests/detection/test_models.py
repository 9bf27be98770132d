"""The detectors over the hr pyramid: losses, gradients, eval outputs in the input's pixels."""

from __future__ import annotations

import math

import pytest
import torch

from skysense.config import preset_with
from skysense.detection.boxes import hbb_to_obb
from skysense.detection.models import (
    DetectionHeadConfig,
    HorizontalRCNN,
    HrFPN,
    KeepTransform,
    build_detector,
)
from skysense.detection.task import set_mode
from skysense.models.skysense import SkySense

HEAD = DetectionHeadConfig(fpn_channels=16, rpn_pre_nms=200, rpn_post_nms=64, roi_batch=64, fc_dim=32)
H, W = 96, 128  # not a multiple of 32 in W / 32 = 4, H / 32 = 3: the pad-to-32 path runs


def _encoder() -> SkySense:
    torch.manual_seed(0)
    return SkySense(preset_with("tiny", {"s2": None, "s1": None}))


def _targets(oriented: bool) -> list[dict[str, torch.Tensor]]:
    """Two images: three objects of anchor-like sizes, and none (a negative image)."""
    if oriented:
        boxes = torch.tensor([[30.0, 40, 36, 18, 0.5], [80, 60, 30, 40, -1.0], [100, 20, 20, 14, 0.0]])
    else:
        boxes = torch.tensor([[10.0, 20, 50, 44], [70, 40, 100, 82], [90, 10, 112, 26]])
    empty = torch.zeros(0, boxes.shape[1])
    return [
        {"boxes": boxes, "labels": torch.tensor([0, 1, 1])},
        {"boxes": empty, "labels": torch.zeros(0, dtype=torch.long)},
    ]


@pytest.mark.parametrize("task", ["detection", "oriented_detection"])
def test_every_trainable_parameter_gets_a_gradient_and_the_losses_are_finite(task):
    model = build_detector(task, _encoder(), 2, HEAD)
    set_mode(model, "full")
    model.train()
    torch.manual_seed(1)
    losses = model(torch.randn(2, 3, H, W), _targets(task == "oriented_detection"))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.encoder.encoders.hr.") for n in trainable)
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f"no gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    # the encoder parts a detector never reads (fusion, geo-context) are frozen, not silently untrained
    assert not any(n.startswith(("backbone.encoder.fusion.", "backbone.encoder.geo.")) for n in trainable)


@pytest.mark.parametrize("task,width", [("detection", 4), ("oriented_detection", 5)])
def test_eval_outputs_one_result_per_image_with_the_box_layout_of_the_task(task, width):
    model = build_detector(task, _encoder(), 3, HEAD).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, H, W))
    assert len(out) == 2
    for o in out:
        n = len(o["boxes"])
        assert 0 < n <= HEAD.detections
        assert o["boxes"].shape == (n, width) and o["scores"].shape == (n,) and o["labels"].shape == (n,)
        assert o["labels"].min() >= 0 and o["labels"].max() < 3  # 0-based, background hidden
        assert (o["scores"] >= HEAD.score_thresh).all()
        assert torch.all(o["scores"][:-1] >= o["scores"][1:])  # best first


def test_the_transform_keeps_the_normalised_pixels_and_the_size():
    """torchvision's default transform would re-normalise with ImageNet statistics and resize to 800 px."""
    t = KeepTransform().eval()
    x = torch.randn(3, H, W)
    batch, _ = t([x])
    assert batch.image_sizes == [(H, W)]
    assert batch.tensors.shape[-2:] == (96, 128)
    assert torch.equal(batch.tensors[0, :, :H, :W], x)
    odd = torch.randn(3, 50, 70)
    batch, _ = t([odd])
    assert batch.tensors.shape[-2:] == (64, 96) and batch.image_sizes == [(50, 70)]
    assert torch.equal(batch.tensors[0, :, :50, :70], odd) and batch.tensors[0, :, 50:].abs().sum() == 0


def test_horizontal_boxes_are_in_input_pixels():
    model = build_detector("detection", _encoder(), 2, HEAD).eval()
    assert isinstance(model, HorizontalRCNN)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 50, 70))[0]["boxes"]
    assert out[:, [0, 2]].max() <= 70 and out[:, [1, 3]].max() <= 50  # clipped to the unpadded input
    assert out[:, 2].max() > 35  # not in a frame resized to torchvision's 800 px or shrunk


def test_oriented_detections_with_zero_deltas_are_the_anchors_in_input_pixels():
    """With both regressions zeroed, every detection is an anchor: area size^2 (one of the configured
    sizes) and centre on the stride grid of its level, so the two stages decode in input pixels."""
    model = build_detector("oriented_detection", _encoder(), 2, HEAD).eval()
    for lin in (model.rpn_head.bbox_pred, model.bbox_pred):
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    # the midpoint offsets of a horizontal box are not 0 (its top corner is its top-left one): the RPN's
    # bias is set to the code of an anchor as its own target
    anchor = torch.tensor([[0.0, 0, 20, 10]])
    code = model.midpoint.encode(anchor, hbb_to_obb(anchor))[0]
    assert torch.allclose(code[:4], torch.zeros(4))
    model.rpn_head.bbox_pred.bias.data = code.repeat(len(HEAD.aspect_ratios))
    with torch.no_grad():
        boxes = model(torch.randn(1, 3, H, W))[0]["boxes"]
    assert len(boxes)
    sides = torch.tensor([float(s) for s in HEAD.anchor_sizes])
    area = boxes[:, 2] * boxes[:, 3]
    nearest = (area[:, None].sqrt() - sides[None]).abs().min(1)
    assert (nearest.values < 0.06 * sides[nearest.indices]).all()  # anchors are rounded to pixels
    turn = torch.remainder(boxes[:, 4], math.pi / 2)  # horizontal: angle 0 or -pi/2
    assert ((turn < 1e-5) | (turn > math.pi / 2 - 1e-5)).all()
    strides = (4, 8, 16, 32, 64)
    for b, i in zip(boxes, nearest.indices):
        s = strides[int(i)]
        # torchvision's anchors centre on (k * stride) of their level
        assert abs(float(b[0]) / s - round(float(b[0]) / s)) < 1e-3
        assert abs(float(b[1]) / s - round(float(b[1]) / s)) < 1e-3


def test_a_frozen_encoder_stays_in_eval_mode_and_gets_no_gradient():
    model = build_detector("detection", _encoder(), 1, HEAD)
    set_mode(model, "frozen")
    model.train()
    backbone = model.backbone
    assert isinstance(backbone, HrFPN)
    assert not backbone.encoder.training and backbone.fpn.training
    assert not any(p.requires_grad for p in backbone.encoder.parameters())
    set_mode(model, "partial", blocks=2)
    hr = backbone.encoder.encoders["hr"]
    assert not hr.patch_embed.projection.weight.requires_grad
    assert any(p.requires_grad for p in hr.parameters())


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="detection, oriented_detection"):
        build_detector("segmentation", _encoder(), 2)
    with pytest.raises(ValueError, match="at least one class"):
        build_detector("detection", _encoder(), 0)
    with pytest.raises(ValueError, match="no hr branch"):
        HrFPN(SkySense(preset_with("tiny", {"hr": None})), 8)
    model = build_detector("oriented_detection", _encoder(), 2, HEAD).train()
    with pytest.raises(ValueError, match="needs targets"):
        model(torch.randn(1, 3, 64, 64))
