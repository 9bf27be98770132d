"""Detectors over the SkySense ``hr`` pyramid (paper Sec. 4.3): an FPN on the four Swin stage maps, then
Faster R-CNN (horizontal boxes, DIOR in the paper) or Oriented R-CNN (oriented boxes, DIOR-R / FAIR1M).

The horizontal detector is torchvision's :class:`~torchvision.models.detection.FasterRCNN` (its anchor
generator, RPN, RoI heads and box coder) with :class:`HrFPN` as the backbone. torchvision's
``GeneralizedRCNNTransform`` would normalise with ImageNet statistics and resize every image to its
``min_size``; our images are normalised already (``sample["hr"]``, see :mod:`skysense.detection`) and
resized by the data (``data.size``), so :class:`KeepTransform` does neither: it only pads the batch
right/bottom to a multiple of 32, and outputs stay in the input's pixels.

Both detectors: ``model(images, targets)`` with images a (B, 3, H, W) tensor or a list of (3, H, W),
targets a list of ``{"boxes", "labels"}``; train mode returns a dict of losses, eval mode one
``{"boxes", "scores", "labels"}`` per image. Labels are 0-based class indices (torchvision's background
class 0 is hidden inside).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from skysense.models.skysense import SkySense

TASKS = ("detection", "oriented_detection")


@dataclass
class DetectionHeadConfig:
    """The FPN and the R-CNN heads; the defaults are the papers' recipes scaled down for a CPU."""

    fpn_channels: int = 64  # 256 in Faster / Oriented R-CNN
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)  # one per FPN level P2..P6 (32..512 in mmdet)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms: int = 1000  # proposals kept per level before NMS (2000 train / 1000 test in the papers)
    rpn_post_nms: int = 500  # proposals per image after NMS (2000 / 1000)
    rpn_nms: float = 0.7  # Oriented R-CNN: 0.8 on the proposals' horizontal envelopes
    rpn_batch: int = 256  # anchors sampled per image for the RPN loss
    roi_batch: int = 256  # proposals sampled per image for the RoI loss (512 in the papers)
    fc_dim: int = 256  # the 2-fc box head's width (1024)
    score_thresh: float = 0.05
    nms: float = 0.5  # final NMS per class (Oriented R-CNN: 0.1, rotated)
    detections: int = 100  # per image


class KeepTransform(GeneralizedRCNNTransform):
    """torchvision's transform without its normalisation and resize (see the module doc)."""

    def __init__(self) -> None:
        super().__init__(min_size=1, max_size=1, image_mean=[0.0], image_std=[1.0], size_divisible=32)

    def normalize(self, image: Tensor) -> Tensor:
        return image

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target


class HrFPN(nn.Module):
    """The encoder's hr pyramid (strides 4/8/16/32) through an FPN, plus a max-pooled P6 (stride 64).

    ``forward(images (B, 3, H, W))`` -> OrderedDict ``"0".."3", "pool"`` of (B, fpn_channels, H/s, W/s).
    A frozen encoder (``frozen_encoder``) stays in eval mode under ``train()``.
    """

    def __init__(self, encoder: SkySense, channels: int) -> None:
        super().__init__()
        if encoder.cfg.hr is None:
            raise ValueError("detection reads the hr pyramid: the encoder has no hr branch (model.hr: null?)")
        self.encoder, self.out_channels = encoder, channels
        self.frozen_encoder = False
        self.fpn = FeaturePyramidNetwork(list(encoder.cfg.hr.out_channels), channels, LastLevelMaxPool())

    def train(self, mode: bool = True) -> HrFPN:
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()
        return self

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        levels = self.encoder.encoders["hr"](images)  # the pyramid alone: no fusion, no geo-context
        return self.fpn(OrderedDict((str(i), x) for i, x in enumerate(levels)))


class HorizontalRCNN(FasterRCNN):
    """Faster R-CNN with FPN (torchvision's) over :class:`HrFPN`; 0-based labels in and out."""

    def __init__(self, backbone: HrFPN, num_classes: int, head: DetectionHeadConfig) -> None:
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        anchors = AnchorGenerator(
            tuple((s,) for s in head.anchor_sizes), (tuple(head.aspect_ratios),) * len(head.anchor_sizes)
        )
        super().__init__(
            backbone,
            rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
            # the 2-fc box head at the configured width (torchvision's default is 1024); + background
            box_head=TwoMLPHead(backbone.out_channels * 7 * 7, head.fc_dim),
            box_predictor=FastRCNNPredictor(head.fc_dim, num_classes + 1),
            rpn_pre_nms_top_n_train=head.rpn_pre_nms,
            rpn_pre_nms_top_n_test=head.rpn_pre_nms,
            rpn_post_nms_top_n_train=head.rpn_post_nms,
            rpn_post_nms_top_n_test=head.rpn_post_nms,
            rpn_nms_thresh=head.rpn_nms,
            rpn_batch_size_per_image=head.rpn_batch,
            box_batch_size_per_image=head.roi_batch,
            box_score_thresh=head.score_thresh,
            box_nms_thresh=head.nms,
            box_detections_per_img=head.detections,
        )
        self.transform = KeepTransform()

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> Any:
        shifted = None
        if self.training:
            if targets is None:
                raise ValueError("a detector in train mode needs targets: call model.eval() to predict")
            shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        out = super().forward(list(images), shifted)
        if self.training:
            return out
        return [{**o, "labels": o["labels"] - 1} for o in out]


def build_detector(
    task: str, encoder: SkySense, num_classes: int, head: DetectionHeadConfig | None = None
) -> nn.Module:
    """``detection`` -> :class:`HorizontalRCNN`, ``oriented_detection`` -> Oriented R-CNN, both over
    ``encoder``'s hr pyramid (its parameters live under ``backbone.encoder.``)."""
    head = head or DetectionHeadConfig()
    if task not in TASKS:
        raise ValueError(f"task {task!r}: the detectors are {', '.join(TASKS)}")
    if num_classes < 1:
        raise ValueError("a detector needs at least one class")
    backbone = HrFPN(encoder, head.fpn_channels)
    if task == "detection":
        return HorizontalRCNN(backbone, num_classes, head)
    from skysense.detection.oriented_rcnn import OrientedRCNN

    return OrientedRCNN(backbone, num_classes, head)


ENCODER_PREFIX = "backbone.encoder."  # where layer decay and freezing find the encoder in a detector
