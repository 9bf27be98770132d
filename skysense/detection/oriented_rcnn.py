"""Oriented R-CNN (Xie et al., ICCV 2021) over the SkySense hr FPN (paper Sec. 4.3: DIOR-R, FAIR1M).

Two stages, as in the paper and mmrotate's ``oriented_rcnn_r50_fpn`` recipe:

1. *Oriented RPN.* Horizontal anchors (torchvision's :class:`AnchorGenerator`, one size per FPN level,
   three ratios) and torchvision's RPN head with 6 regression outputs per anchor: the midpoint-offset
   deltas ``(dx, dy, dw, dh, da, db)`` of :class:`~skysense.detection.coders.MidpointOffsetCoder`.
   Anchors are matched to the ground truth's horizontal envelopes (IoU >= 0.7 positive, < 0.3 negative,
   each box's best anchor positive), 256 sampled per image, half positive at most; BCE objectness and
   smooth-L1 (beta 1/9) on the deltas of the positives towards the oriented box. Proposals: the
   ``rpn_pre_nms`` best anchors per level, decoded to oriented boxes, then NMS per level on their
   horizontal envelopes (as mmrotate does: a rotated NMS over thousands of proposals costs far more and
   the RoI stage sorts out the rest), ``rpn_post_nms`` kept per image.
2. *Oriented RoI head.* In training the ground truth joins the proposals; they are matched by rotated
   IoU (>= 0.5 positive, else negative), ``roi_batch`` sampled, a quarter positive at most. Each RoI is
   read by rotated RoI align (7 x 7, 2 samples per bin) on the FPN level of its size
   (``floor(log2(sqrt(w h) / 56))``, P2..P5), then a 2-fc head gives the class scores (+ background)
   and class-agnostic :class:`~skysense.detection.coders.OBBDeltaCoder` deltas; cross-entropy and
   smooth-L1 (beta 1) on the positives. Post-processing: per-class scores above ``score_thresh``,
   batched rotated NMS (``nms``), the ``detections`` best per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.rpn import RPNHead, permute_and_flatten
from torchvision.ops import batched_nms, box_iou

from skysense.detection.boxes import canonical_obb, obb_to_hbb
from skysense.detection.coders import MidpointOffsetCoder, OBBDeltaCoder
from skysense.detection.models import DetectionHeadConfig, HrFPN, KeepTransform
from skysense.detection.rotated_ops import batched_rotated_nms, rotated_iou, rotated_roi_align

FINEST_SCALE = 56  # an RoI of sqrt(w h) < 112 px reads P2, < 224 P3, < 448 P4, else P5 (mmrotate)
MIN_SIZE = 1e-2  # proposals and detections with a side under this (pixels) are dropped


class OrientedRPNHead(RPNHead):
    """torchvision's RPN head (3x3 conv, objectness) with 6 midpoint-offset outputs per anchor."""

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__(channels, num_anchors)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 6, kernel_size=1)
        nn.init.normal_(self.bbox_pred.weight, std=0.01)
        nn.init.constant_(self.bbox_pred.bias, 0.0)  # type: ignore[arg-type]


class OrientedRCNN(nn.Module):
    """Oriented R-CNN (see the module doc); ``forward`` as the detectors of :mod:`skysense.detection.models`
    with (N, 5) oriented boxes ``cx, cy, w, h, angle`` in and out."""

    def __init__(self, backbone: HrFPN, num_classes: int, head: DetectionHeadConfig) -> None:
        super().__init__()
        self.backbone, self.head_cfg, self.num_classes = backbone, head, num_classes
        self.transform = KeepTransform()
        n = len(head.aspect_ratios)
        self.anchors = AnchorGenerator(
            tuple((s,) for s in head.anchor_sizes), (tuple(head.aspect_ratios),) * len(head.anchor_sizes)
        )
        c = backbone.out_channels
        self.rpn_head = OrientedRPNHead(c, n)
        self.box_head = TwoMLPHead(c * 7 * 7, head.fc_dim)
        self.cls_score = nn.Linear(head.fc_dim, num_classes + 1)  # + background (index 0)
        self.bbox_pred = nn.Linear(head.fc_dim, 5)  # class-agnostic, as in the paper's recipe
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for lin in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(lin.bias)
        self.midpoint, self.deltas = MidpointOffsetCoder(), OBBDeltaCoder()
        self.rpn_matcher = det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)
        self.rpn_sampler = det_utils.BalancedPositiveNegativeSampler(head.rpn_batch, 0.5)
        self.roi_matcher = det_utils.Matcher(0.5, 0.5, allow_low_quality_matches=False)
        self.roi_sampler = det_utils.BalancedPositiveNegativeSampler(head.roi_batch, 0.25)

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> Any:
        if self.training and targets is None:
            raise ValueError("a detector in train mode needs targets: call model.eval() to predict")
        batch, _ = self.transform(list(images))
        feats = list(self.backbone(batch.tensors).values())
        anchors = self.anchors(batch, feats)  # per image (sum_l H_l W_l A, 4), level by level
        objectness, deltas = self.rpn_head(feats)
        counts = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        b = len(anchors)
        obj = torch.cat([permute_and_flatten(o, b, o.shape[1], 1, *o.shape[2:]) for o in objectness], 1)
        reg = torch.cat([permute_and_flatten(d, b, d.shape[1] // 6, 6, *d.shape[2:]) for d in deltas], 1)
        obj = obj.squeeze(-1)  # (B, sum_l H_l W_l A), (B, ..., 6)
        proposals = [self.propose(anchors[i], obj[i].detach(), reg[i].detach(), counts) for i in range(b)]
        levels = feats[:4]  # P2..P5 (the max-pooled P6 holds anchors only)
        strides = [batch.tensors.shape[-1] / f.shape[-1] for f in levels]
        if self.training:
            assert targets is not None
            gts = [canonical_obb(t["boxes"].float()) for t in targets]
            losses = self.rpn_loss(anchors, obj, reg, gts)
            return losses | self.roi_loss(levels, strides, proposals, gts, [t["labels"] for t in targets])
        return self.detect(levels, strides, proposals)

    # ------------------------------------------------------------------ stage 1: the oriented RPN

    def propose(self, anchors: Tensor, obj: Tensor, reg: Tensor, counts: list[int]) -> Tensor:
        """One image's proposals (P, 5): the best ``rpn_pre_nms`` anchors of each level, decoded, then
        NMS per level on the horizontal envelopes (see the module doc)."""
        cfg = self.head_cfg
        picked, level_ids = [], []
        for lvl, (o, start) in enumerate(zip(obj.split(counts), [0, *torch.tensor(counts).cumsum(0)[:-1]])):
            top = o.topk(min(cfg.rpn_pre_nms, o.numel())).indices + int(start)
            picked.append(top)
            level_ids.append(torch.full_like(top, lvl))
        idx, ids = torch.cat(picked), torch.cat(level_ids)
        boxes = self.midpoint.decode(anchors[idx], reg[idx])
        scores = obj[idx]
        keep = (boxes[:, 2] > MIN_SIZE) & (boxes[:, 3] > MIN_SIZE) & torch.isfinite(boxes).all(1)
        boxes, scores, ids = boxes[keep], scores[keep], ids[keep]
        keep = batched_nms(obb_to_hbb(boxes), scores, ids, cfg.rpn_nms)[: cfg.rpn_post_nms]
        return boxes[keep]

    def rpn_loss(
        self, anchors: list[Tensor], obj: Tensor, reg: Tensor, gts: list[Tensor]
    ) -> dict[str, Tensor]:
        """Objectness BCE and midpoint-offset smooth-L1 over the sampled anchors of every image."""
        labels, targets = [], []
        for a, gt in zip(anchors, gts):
            if gt.numel() == 0:  # every anchor a negative
                labels.append(torch.zeros(len(a), device=a.device))
                targets.append(torch.zeros(len(a), 6, device=a.device))
                continue
            matched = self.rpn_matcher(box_iou(obb_to_hbb(gt), a))
            lab = (matched >= 0).float()
            lab[matched == det_utils.Matcher.BELOW_LOW_THRESHOLD] = 0.0
            lab[matched == det_utils.Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
            targets.append(self.midpoint.encode(a, gt[matched.clamp(min=0)]))
        pos, neg = self.rpn_sampler(labels)
        pos_idx = torch.where(torch.cat(pos))[0]
        sampled = torch.where(torch.cat(pos) | torch.cat(neg))[0]
        lab_all, obj_all = torch.cat(labels), obj.flatten()
        box = F.smooth_l1_loss(
            reg.reshape(-1, 6)[pos_idx], torch.cat(targets)[pos_idx], beta=1 / 9, reduction="sum"
        ) / max(sampled.numel(), 1)
        objectness = F.binary_cross_entropy_with_logits(obj_all[sampled], lab_all[sampled])
        return {"loss_objectness": objectness, "loss_rpn_box_reg": box}

    # ------------------------------------------------------------------ stage 2: the oriented RoI head

    def roi_features(self, levels: list[Tensor], strides: list[float], rois: list[Tensor]) -> Tensor:
        """(sum K_i, C, 7, 7) rotated RoI align of each image's (K_i, 5) RoIs on the level of its size."""
        idx = torch.cat(
            [torch.full((len(r),), i, dtype=rois[0].dtype, device=r.device) for i, r in enumerate(rois)]
        )
        boxes = torch.cat(rois)
        scale = (boxes[:, 2] * boxes[:, 3]).clamp(min=1e-6).sqrt()
        lvl = torch.floor(torch.log2(scale / FINEST_SCALE + 1e-6)).clamp(0, len(levels) - 1).long()
        out = levels[0].new_zeros(len(boxes), levels[0].shape[1], 7, 7)
        rois6 = torch.cat([idx[:, None], boxes], dim=1)
        for i, (feat, stride) in enumerate(zip(levels, strides)):
            at = torch.where(lvl == i)[0]
            if at.numel():
                out[at] = rotated_roi_align(
                    feat, rois6[at], (7, 7), spatial_scale=1.0 / stride, sampling_ratio=2, aligned=True
                ).to(out.dtype)
        return out

    def head(self, levels: list[Tensor], strides: list[float], rois: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = self.box_head(self.roi_features(levels, strides, rois))
        return self.cls_score(x), self.bbox_pred(x)

    def sample_rois(
        self, proposals: list[Tensor], gts: list[Tensor], labels: list[Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """The sampled RoIs of each image, their class targets (0 = background) and delta targets."""
        rois, matched_labels, matched_boxes = [], [], []
        for props, gt, lab in zip(proposals, gts, labels):
            props = torch.cat([props, gt])  # the ground truth is a proposal too
            if gt.numel() == 0:
                cls = torch.zeros(len(props), dtype=torch.long, device=props.device)
                boxes = props
            else:
                matched = self.roi_matcher(rotated_iou(gt, props))
                cls = lab[matched.clamp(min=0)] + 1
                cls[matched < 0] = 0
                boxes = gt[matched.clamp(min=0)]
            rois.append(props)
            matched_labels.append(cls)
            matched_boxes.append(boxes)
        pos, neg = self.roi_sampler(matched_labels)
        keep = [torch.where(p | n)[0] for p, n in zip(pos, neg)]
        rois = [r[k] for r, k in zip(rois, keep)]
        cls = torch.cat([c[k] for c, k in zip(matched_labels, keep)])
        targets = self.deltas.encode(torch.cat(rois), torch.cat([b[k] for b, k in zip(matched_boxes, keep)]))
        return rois, cls, targets

    def roi_loss(
        self,
        levels: list[Tensor],
        strides: list[float],
        proposals: list[Tensor],
        gts: list[Tensor],
        labels: list[Tensor],
    ) -> dict[str, Tensor]:
        rois, cls, targets = self.sample_rois(proposals, gts, labels)
        logits, reg = self.head(levels, strides, rois)
        pos = cls > 0
        box = F.smooth_l1_loss(reg[pos], targets[pos], beta=1.0, reduction="sum") / max(cls.numel(), 1)
        # no RoI at all (no proposal survived and no object): 0, not the NaN of a mean over nothing
        ce = F.cross_entropy(logits, cls) if cls.numel() else logits.sum() * 0.0
        return {"loss_classifier": ce, "loss_box_reg": box}

    @torch.no_grad()
    def detect(
        self, levels: list[Tensor], strides: list[float], proposals: list[Tensor]
    ) -> list[dict[str, Tensor]]:
        """Per image: scored, per-class NMS'd oriented boxes (see the module doc)."""
        cfg, k = self.head_cfg, self.num_classes
        logits, reg = self.head(levels, strides, proposals)
        scores = F.softmax(logits.float(), -1)[:, 1:]  # (sum P, K) without the background
        boxes = canonical_obb(self.deltas.decode(torch.cat(proposals), reg.float()))
        out = []
        for s, bx in zip(scores.split([len(p) for p in proposals]), boxes.split([len(p) for p in proposals])):
            lab = torch.arange(k, device=s.device).expand_as(s).flatten()
            bx, s = bx.repeat_interleave(k, 0), s.flatten()  # one candidate per (RoI, class)
            ok = (s > cfg.score_thresh) & (bx[:, 2] > MIN_SIZE) & (bx[:, 3] > MIN_SIZE)
            ok &= torch.isfinite(bx).all(1)
            bx, s, lab = bx[ok], s[ok], lab[ok]
            keep = batched_rotated_nms(bx, s, lab, cfg.nms)[: cfg.detections]
            out.append({"boxes": bx[keep], "scores": s[keep], "labels": lab[keep]})
        return out
