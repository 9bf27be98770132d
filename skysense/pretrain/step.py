"""One pre-training step of SkySense (paper Sec. 3.2): views -> student/teacher -> MGCL + CMA, and GCPL.

``L = L_MGCL + w_cma * L_CMA`` with ``L_MGCL = sum over streams (hr, s2, s1, fused) of L_pix + L_obj +
L_img`` (Eq. 5); ``loss.weights`` (not in the paper) scales a granularity, e.g. ``{pix: 0.25, obj: 0.25}``.
Streams: ``hr`` = the stage-4 map (stride 32), ``s2``/``s1`` = the last ViT map per date,
``fused`` = F_fus (with the geo-context half). ``hr1`` ... ``hr4`` name one stage of the hr pyramid
(``hr4`` is ``hr`` with a head of its own): not in the paper, they give the earlier stages MGCL targets
of their own, on grids fine enough for pixel and object terms when views are small. ``loss.levels``
picks the granularities of each stream, e.g. ``{hr: [img], hr3: [pix, obj]}``: the dense terms on the
4 x 4 stage-3 grid of a 64-px view instead of the 2 x 2 stage-4 grid, the image term on stage 4.

The CMA embedding of a modality is its aligned map (``hr`` stage 4, ``s2_aligned``, ``s1_aligned``,
all in the hr stage-4 space) pooled over space and valid dates, through one shared linear projection.

Order inside :func:`pretrain_step`: the teacher runs first (no grad); GCPL then updates the student's
prototypes in place from the teacher's ``F_fus_mm`` (projected by the teacher's geo query) of both
views, *before* the student forward, so the in-place update never touches a tensor autograd saved;
then the student runs and the losses are built; last, the teacher centres move (EMA). The caller does
``backward``, the optimiser step and :func:`skysense.pretrain.teacher.ema_update_`.

With ``views.local_crops`` > 0 (DINO multi-crop, not in the paper), small crops of the batch run through
the student only and add ``img_local/<stream>``: L_img against both teacher global views.

With GCPL on, ``freeze_prototypes`` (default) takes the prototypes out of gradient descent: they move
only by the GCPL EMA, as the paper describes; the teacher's copy follows by the parameter EMA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from skysense.config import SERIES
from skysense.models.skysense import SkySense
from skysense.pretrain.heads import GRANULARITIES, HeadConfig, ProjectionHeads
from skysense.pretrain.losses import (
    LossConfig,
    cma_loss,
    fgcl,
    gcpl_update_,
    image_loss,
    tokens,
    update_center_,
)
from skysense.pretrain.teacher import collapse_monitors, make_teacher
from skysense.pretrain.views import View, ViewConfig, correspondence, local_views, make_views


def hr_stage(stream: str) -> int | None:
    """Pyramid index (0-based) of an ``hr<k>`` stream, None for other streams."""
    return int(stream[2:]) - 1 if stream[:2] == "hr" and stream[2:].isdigit() else None


@dataclass
class PretrainConfig:
    views: ViewConfig = field(default_factory=ViewConfig)
    heads: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    freeze_prototypes: bool = True  # with GCPL on: prototypes move by the GCPL EMA only


class Student(nn.Module):
    """The encoder g and its projection heads; the teacher is a :func:`make_teacher` copy of this."""

    def __init__(self, backbone: SkySense, cfg: HeadConfig, streams: tuple[str, ...] = ()) -> None:
        super().__init__()
        bcfg = backbone.cfg
        dims = {"fused": backbone.out_dim}
        if bcfg.hr is not None:
            dims["hr"] = bcfg.hr.out_channels[-1]
            for s in streams:  # hr stage streams, checked by build_pretrain
                k = hr_stage(s)
                if k is not None:
                    dims[s] = bcfg.hr.out_channels[k]
        for m in SERIES:
            vit = getattr(bcfg, m)
            if vit is not None:
                dims[m] = vit.embed_dim
        self.backbone = backbone
        self.heads = ProjectionHeads(dims, cfg, cma_in=bcfg.aligned_dim)

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        return self.backbone(sample)


class Centers(nn.Module):
    """Teacher centres (1, K), one per (stream, granularity), as buffers ``<stream>_<granularity>``."""

    def __init__(self, streams: tuple[str, ...], out_dim: int) -> None:
        super().__init__()
        for s in streams:
            for g in GRANULARITIES:
                self.register_buffer(f"{s}_{g}", torch.zeros(1, out_dim))

    def get(self, stream: str) -> dict[str, Tensor]:
        return {g: getattr(self, f"{stream}_{g}") for g in GRANULARITIES}


@dataclass
class StepOutput:
    losses: dict[str, Tensor]  # "loss" (total), "mgcl", "cma", "<granularity>/<stream>"
    monitors: dict[str, float]


def build_pretrain(backbone: SkySense, cfg: PretrainConfig) -> tuple[Student, Student, Centers]:
    """Student (backbone + heads), its EMA teacher and the teacher centres."""
    n = len(backbone.cfg.hr.out_channels) if backbone.cfg.hr is not None else 0
    stages = {f"hr{k}" for k in range(1, n + 1)}
    known = {"hr", "fused", *SERIES, *stages}
    for key, names in (("loss.streams", cfg.loss.streams), ("heads.standardise", cfg.heads.standardise)):
        bad = [s for s in names if s not in known]
        if bad:
            raise ValueError(
                f"pretrain.{key}: unknown streams {bad}: use hr, s2, s1, fused or a stage of this hr "
                f"encoder, {sorted(stages)}"
            )
    student = Student(backbone, cfg.heads, cfg.loss.streams)
    if cfg.loss.gcpl and cfg.freeze_prototypes and backbone.geo is not None:
        backbone.geo.prototypes.requires_grad_(False)
    return student, make_teacher(student), Centers(cfg.loss.streams, cfg.heads.out_dim)


def stream_map(out: dict[str, Any], sample: dict[str, Any], stream: str) -> tuple[Tensor, Tensor] | None:
    """Feature map (B, T, D, h, w) and padding (B, T) of one MGCL stream, None if absent."""
    k = -1 if stream == "hr" else hr_stage(stream)
    if stream == "fused":
        x = out["fused"].unsqueeze(1)
    elif k is not None and "hr" in out:
        x = out["hr"][k].unsqueeze(1)
    elif stream in SERIES and stream in out:
        x = out[stream][-1]
        pad = sample.get(f"{stream}_mask")
        return x, pad if pad is not None else torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
    else:
        return None
    return x, torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)


def cma_embeddings(
    out: dict[str, Any], sample: dict[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Pooled aligned features per modality (B, C) and which samples have the modality (B,) bool."""
    emb, keep = {}, {}
    if "hr" in out:
        emb["hr"] = out["hr"][-1].mean((-2, -1))
        keep["hr"] = torch.ones(emb["hr"].shape[0], dtype=torch.bool, device=emb["hr"].device)
    for m in SERIES:
        if f"{m}_aligned" not in out:
            continue
        x = out[f"{m}_aligned"].mean((-2, -1))  # (B, T, C)
        pad = sample.get(f"{m}_mask")
        w = (~pad).to(x.dtype) if pad is not None else x.new_ones(x.shape[:2])  # (B, T)
        emb[m] = (x * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
        keep[m] = w.sum(1) > 0
    return emb, keep


def _heads(model: Student, stream: str) -> Callable[[str, Tensor], Tensor]:
    return lambda g, x: model.heads(stream, g, x)


def local_image_losses(
    student: Student,
    teacher: Student,
    centers: Centers,
    t_out: list[dict[str, Any]],
    views: tuple[View, View],
    batch: dict[str, Any],
    cfg: PretrainConfig,
    gen: torch.Generator | None,
) -> dict[str, Tensor]:
    """DINO multi-crop at image level: per stream, L_img of every local crop (student) against both
    global views (teacher), averaged over the pairs. Dates pair as in MGCL (local crops keep u's)."""
    crops = local_views(batch, views[0], cfg.views, gen)
    outs = [student(w.sample) for w in crops]
    losses = {}
    for stream in (s for s in cfg.loss.streams if cfg.loss.for_stream(s).img):
        teachers = [stream_map(o, w.sample, stream) for o, w in zip(t_out, views)]
        terms = []
        for o, w in zip(outs, crops):
            got = stream_map(o, w.sample, stream)
            for t in teachers:
                if got is None or t is None:
                    continue
                keep = ~got[1] & ~t[1]  # (B, T)
                s_tok, t_tok = tokens(got[0])[keep], tokens(t[0]).detach()[keep]  # (M, N, D)
                head_s = lambda x, st=stream: student.heads(st, "img", x)  # noqa: E731
                head_t = lambda x, st=stream: teacher.heads(st, "img", x)  # noqa: E731
                center = centers.get(stream)["img"]
                terms.append(image_loss(s_tok, t_tok, head_s, head_t, center, cfg.loss)[0])
        if terms:
            losses[stream] = torch.stack(terms).mean()
    return losses


def gcpl_step_(
    student: Student, teacher: Student, t_out: list[dict[str, Any]], lc: LossConfig
) -> dict[str, float]:
    """GCPL (Eq. 8-9), in place: the student's prototypes of the regions in the batch move towards the
    teacher's ``F_fus_mm`` of both views (projected by the teacher's geo query); returns its monitors."""
    geo = student.backbone.geo
    if not lc.gcpl or geo is None or teacher.backbone.geo is None:
        return {}
    query = teacher.backbone.geo.query
    q = torch.cat([query(o["fused_mm"].flatten(2).transpose(1, 2)) for o in t_out], dim=1)  # (B, 2N, d)
    region = t_out[0]["region"]
    seen = region[region >= 0].unique()
    before = geo.prototypes.data[seen].clone()
    gcpl_update_(geo.prototypes.data, q, region, lc.gcpl_momentum, lc.sinkhorn_iters, lc.sinkhorn_eps)
    shift = (geo.prototypes.data[seen] - before).norm() / before.norm().clamp_min(1e-12)
    return {"gcpl_regions": float(seen.numel()), "gcpl_shift": float(shift)}


def mgcl_terms(
    student: Student,
    teacher: Student,
    centers: Centers,
    views: tuple[View, View],
    outs: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    lc: LossConfig,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """MGCL (Eq. 5-7) of every stream across the two views: ``<granularity>/<stream>`` terms (unweighted)
    and the teacher logits ``<stream>_<granularity>`` that move the centres. ``outs``: (student, teacher)."""
    terms: dict[str, Tensor] = {}
    new_logits: dict[str, Tensor] = {}
    for stream in lc.streams:
        slc = lc.for_stream(stream)
        if not (slc.pix or slc.obj or slc.img):
            continue
        got = [stream_map(o, w.sample, stream) for o, w in zip(outs[0], views)]
        got_t = [stream_map(o, w.sample, stream) for o, w in zip(outs[1], views)]
        if got[0] is None or got[1] is None or got_t[0] is None or got_t[1] is None:
            continue
        (su, pu), (sv, pv) = got[0], got[1]
        grid_u, grid_v = (su.shape[-2], su.shape[-1]), (sv.shape[-2], sv.shape[-1])
        (iu, ku), (iv, kv) = (
            correspondence(views[0].geom, views[1].geom, grid_u, grid_v),
            correspondence(views[1].geom, views[0].geom, grid_v, grid_u),
        )
        corr = ((iu.to(su.device), ku.to(su.device)), (iv.to(su.device), kv.to(su.device)))
        heads = (_heads(student, stream), _heads(teacher, stream))
        found, logits = fgcl(
            (su, sv), (got_t[0][0], got_t[1][0]), (pu, pv), corr, *heads, centers.get(stream), slc
        )
        terms.update({f"{g}/{stream}": value for g, value in found.items()})
        new_logits.update({f"{stream}_{g}": x for g, x in logits.items()})
    return terms, new_logits


def pretrain_step(
    student: Student,
    teacher: Student,
    centers: Centers,
    batch: dict[str, Any],
    cfg: PretrainConfig,
    gen: torch.Generator | None = None,
    update_centers: bool = True,
) -> StepOutput:
    """Two views of ``batch`` (batched sample dict), all enabled losses; updates GCPL prototypes and
    centres in place (see module doc). ``gen`` drives the augmentations."""
    lc = cfg.loss
    teacher.eval()
    views: tuple[View, View] = make_views(batch, cfg.views, gen)
    with torch.no_grad():
        t_out = [teacher(w.sample) for w in views]
    gcpl_monitors = gcpl_step_(student, teacher, t_out, lc)  # before the student forward (module doc)
    s_out = [student(w.sample) for w in views]

    losses, new_logits = mgcl_terms(student, teacher, centers, views, (s_out, t_out), lc)
    mgcl = [lc.weight(k.split("/")[0]) * v for k, v in losses.items()]
    if cfg.views.local_crops and lc.img:
        for stream, value in local_image_losses(
            student, teacher, centers, t_out, views, batch, cfg, gen
        ).items():
            losses[f"img_local/{stream}"] = value
            mgcl.append(lc.weight("img") * value)
    zero = s_out[0]["fused"].sum() * 0.0
    losses["mgcl"] = torch.stack(mgcl).sum() if mgcl else zero
    total = losses["mgcl"]
    if lc.cma:
        cma = []
        for o, w in zip(s_out, views):
            emb, keep = cma_embeddings(o, w.sample)
            cma.append(cma_loss({m: student.heads.cma(e) for m, e in emb.items()}, keep, lc.cma_temp))
        losses["cma"] = 0.5 * (cma[0] + cma[1])
        total = total + lc.cma_weight * losses["cma"]
    losses["loss"] = total

    # Monitors on the image-level fused (else first available) teacher outputs, before the centres move.
    monitors: dict[str, float] = {}
    key = next((k for k in ("fused_img", *new_logits) if k in new_logits), None)
    if key is not None:
        feats = t_out[0]["fused"].mean((-2, -1))  # (B, D)
        monitors = collapse_monitors(new_logits[key], getattr(centers, key), lc.teacher_temp, feats)
    monitors.update(gcpl_monitors)
    if update_centers:
        for k, x in new_logits.items():
            update_center_(getattr(centers, k), x, lc.center_momentum)
    return StepOutput(losses, monitors)
