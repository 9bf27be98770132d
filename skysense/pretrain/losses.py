"""Pre-training losses of SkySense (paper Sec. 3.2): L_CL, MGCL (Eq. 5-8), CMA and the GCPL update (Eq. 9).

Conventions:

- ``sinkhorn_knopp`` returns an assignment Q (..., N, K) whose **rows sum to 1** (each of the N items
  is a distribution over the K prototypes) and whose **columns sum to N / K** (equipartition); this is
  N times the transport plan with marginals 1/N, 1/K. Rows are exact after any number of iterations
  (the last step normalises rows); columns converge with ``n_iters``.
- ``L_CL`` (DINO): ``-sum_k softmax((t - c) / tau_t)_k log softmax(s / tau_s)_k``, teacher side detached,
  averaged over the pairs. The centre c is updated by :func:`update_center_`, separately.
  ``centering="sinkhorn"`` (DINOv2's Sinkhorn-Knopp centring, not in the paper) replaces the centred
  softmax by ``sinkhorn_knopp(t, sinkhorn_iters, eps=tau_t)`` over the pairs of that call: targets use
  every prototype equally within the batch whatever the initial prototypes are. It balances each rank's
  pairs (DINOv2 all-reduces the column sums over ranks; we do not). The centres still move and feed
  the collapse monitors.
- Every MGCL term is symmetric: student(u) vs teacher(v) and student(v) vs teacher(u), averaged.
  Date t of view u pairs with date t of view v (same acquisition when the views share dates); pairs
  where either date is padding are dropped. Means run over all kept pairs of the batch, which is
  Eq. 6-8's 1/(N_S T_i) normalisation pooled over samples.
  When no pair survives (no overlap, no cluster heavy enough, no shared date) the heads still run, on
  zero rows, and the term is a zero in the graph: under FSDP every rank must call every sharded head
  in the same order, and a call skipped on one rank only is a collective mismatch (gloo aborts).
- Object level [open]: the teacher features of **both views** of one (sample, date) are clustered
  together (Sinkhorn-Knopp k-means on cosine similarity, N_C centres initialised at evenly spaced
  cells of u), so cluster k means the same thing in u and v. Object feature = assignment-weighted
  mean of a view's pixel features; student centre k of u is contrasted with teacher centre k of v.
  Clusters with under ``obj_min_mass`` pixels in either view are skipped.
- CMA [open]: symmetric InfoNCE between the pooled (space, valid dates) aligned features of each pair
  of modalities of the same view; the other samples of the batch are the negatives.
- GCPL [open normalisation]: M = cos(q, P_r) on l2-normalised rows, S = Sinkhorn-Knopp(M),
  ``P_r_bar = S^T q`` with S's columns normalised to sum 1 (an assignment-weighted mean, so P_r stays in
  the scale of the raw queries the geo attention uses), ``P_r <- m P_r + (1 - m) P_r_bar`` in place.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from skysense.config import check_ranges
from skysense.pretrain.heads import GRANULARITIES

Head = Callable[[Tensor], Tensor]  # features (n, D) -> logits (n, K)


@dataclass
class LossConfig:
    """Which terms run (one flag each, for ablations) and their hyper-parameters [open]."""

    pix: bool = True
    obj: bool = True
    img: bool = True
    streams: tuple[str, ...] = ("hr", "s2", "s1", "fused")  # MGCL streams; hr1 ... hr4: one hr stage
    # [ours] per stream, the granularities it runs, e.g. {hr: [img], hr3: [pix, obj]}; absent = all.
    # pix/obj/img above still switch a granularity off for every stream (ablations stay one flag).
    levels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # [ours] granularity -> weight in L_MGCL, e.g. {pix: 0.25, obj: 0.25}; absent = 1 (Eq. 5's plain sum).
    # "img" also weighs the multi-crop image terms.
    weights: dict[str, float] = field(default_factory=dict)
    cma: bool = True
    gcpl: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # DINO warms it up to 0.07; a trainer may schedule it
    center_momentum: float = 0.9
    centering: str = "ema"  # teacher targets: "ema" (DINO centre) or "sinkhorn" (DINOv2 Sinkhorn-Knopp)
    num_clusters: int = 8  # N_C
    cluster_iters: int = 3  # Sinkhorn k-means rounds
    obj_min_mass: float = 0.5  # pixels a cluster needs in each view
    sinkhorn_iters: int = 3
    sinkhorn_eps: float = 0.05
    cma_temp: float = 0.1
    cma_weight: float = 1.0
    gcpl_momentum: float = 0.99
    max_pixels: int = 0  # L_pix on at most this many random (cell, date) pairs per direction; 0 = all

    def __post_init__(self) -> None:
        check_ranges(
            "pretrain.loss.",
            self,
            at_least={"num_clusters": 1, "cluster_iters": 0, "sinkhorn_iters": 1, "obj_min_mass": 0}
            | {"cma_weight": 0, "max_pixels": 0},
            above=dict.fromkeys(("student_temp", "teacher_temp", "sinkhorn_eps", "cma_temp"), 0),
            within={"center_momentum": (0, 1), "gcpl_momentum": (0, 1)},
        )
        if self.centering not in ("ema", "sinkhorn"):
            raise ValueError(f"pretrain.loss.centering={self.centering!r}: use 'ema' or 'sinkhorn'")
        for stream, names in self.levels.items():
            bad = [g for g in names if g not in GRANULARITIES]
            if bad or stream not in self.streams:
                raise ValueError(
                    f"pretrain.loss.levels[{stream!r}]={list(names)}: keys must be among streams "
                    f"{list(self.streams)} and values among pix, obj, img"
                )
        for g, w in self.weights.items():  # configs from YAML arrive as floats (trainer.from_dict)
            number = isinstance(w, (int, float)) and not isinstance(w, bool)
            if g not in GRANULARITIES or not (number and math.isfinite(w) and w >= 0):
                raise ValueError(
                    f"pretrain.loss.weights[{g!r}]={w!r}: keys must be among pix, obj, img and weights "
                    "finite numbers >= 0"
                )
        self.weights = {g: float(w) for g, w in self.weights.items()}  # once, not per step

    def weight(self, granularity: str) -> float:
        """The weight of a granularity in L_MGCL (1 unless ``weights`` names it)."""
        return self.weights.get(granularity, 1.0)

    def for_stream(self, stream: str) -> LossConfig:
        """This config with the granularities that ``levels`` leaves out of ``stream`` switched off."""
        if stream not in self.levels:
            return self
        keep = self.levels[stream]
        return replace(
            self,
            pix=self.pix and "pix" in keep,
            obj=self.obj and "obj" in keep,
            img=self.img and "img" in keep,
        )


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, n_iters: int = 3, eps: float = 0.05) -> Tensor:
    """scores (..., N, K) -> assignment (..., N, K): rows sum to 1, columns to N / K (module doc).

    Log-domain iterations on ``scores / eps``, so small eps cannot overflow.
    """
    n, k = scores.shape[-2:]
    log_q = scores.float() / eps
    for _ in range(n_iters):
        log_q = log_q - torch.logsumexp(log_q, dim=-2, keepdim=True) + math.log(n / k)
        log_q = log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)
    log_q = log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)
    return log_q.exp().to(scores.dtype)


def dino_ce(
    student: Tensor,
    teacher: Tensor,
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
    sinkhorn_iters: int = 0,
) -> Tensor:
    """L_CL: student (n, K), teacher (n, K) logits, center (K,) or (1, K) -> mean cross-entropy.
    ``sinkhorn_iters`` > 0: Sinkhorn-Knopp targets instead of the centred softmax (module doc)."""
    if sinkhorn_iters > 0:
        target = sinkhorn_knopp(teacher.detach(), sinkhorn_iters, teacher_temp)
    else:
        target = F.softmax((teacher.detach() - center) / teacher_temp, dim=-1)
    return -(target * F.log_softmax(student / student_temp, dim=-1)).sum(-1).mean()


def contrast(student: Tensor, teacher: Tensor, center: Tensor, cfg: LossConfig) -> Tensor:
    """:func:`dino_ce` with the temperatures and the centring of ``cfg``; no rows (no pair survived) -> a
    zero that keeps the student head in the graph."""
    if student.shape[0] == 0:
        return _zero(student)
    iters = cfg.sinkhorn_iters if cfg.centering == "sinkhorn" else 0
    return dino_ce(student, teacher, center, cfg.student_temp, cfg.teacher_temp, iters)


@torch.no_grad()
def update_center_(center: Tensor, teacher: Tensor, momentum: float) -> None:
    """In place: c <- m c + (1 - m) mean of the teacher logits (n, K). (All-reduce the mean under DDP.)"""
    if teacher.numel():
        center.mul_(momentum).add_(teacher.mean(0).reshape(center.shape), alpha=1 - momentum)


def _zero(x: Tensor) -> Tensor:
    return x.sum() * 0.0  # keeps the graph when no pair survives


def tokens(fmap: Tensor) -> Tensor:
    """(B, T, D, h, w) -> (B, T, h*w, D) row-major cells."""
    return fmap.flatten(3).transpose(2, 3)


def pixel_loss(
    s: Tensor,
    t: Tensor,
    keep_t: Tensor,
    index: Tensor,
    valid: Tensor,
    head_s: Head,
    head_t: Head,
    center: Tensor,
    cfg: LossConfig,
) -> tuple[Tensor, Tensor]:
    """L_pix (Eq. 6), one direction: student cells s (B, T, N_u, D) of u vs their partners in teacher
    cells t (B, T, N_v, D) of v. keep_t (B, T) bool date pairs; index, valid (B, N_u) from
    ``views.correspondence``. Returns (loss, teacher logits (n, K))."""
    partner = t.gather(2, index[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[-1]))  # (B, T, N_u, D)
    keep = keep_t[:, :, None] & valid[:, None, :]  # (B, T, N_u)
    s_k, t_k = s[keep], partner[keep]  # (n, D)
    if 0 < cfg.max_pixels < s_k.shape[0]:
        # Large inputs (s2 series x 64x64 cells) give millions of pairs: an unbiased random subset bounds
        # the head's cost. The global generator draws it, so checkpoints (which save it) resume exactly.
        pick = torch.randperm(s_k.shape[0], device=s_k.device)[: cfg.max_pixels]
        s_k, t_k = s_k[pick], t_k[pick]
    lt = head_t(t_k)
    return contrast(head_s(s_k), lt, center, cfg), lt


@torch.no_grad()
def cluster_views(t_u: Tensor, t_v: Tensor, cfg: LossConfig) -> tuple[Tensor, Tensor]:
    """Joint Sinkhorn k-means of both views' teacher cells: (M, N_u, D), (M, N_v, D) ->
    assignments S_u (M, N_u, N_C), S_v (M, N_v, N_C), rows sum to 1 (module doc)."""
    n_u = t_u.shape[1]
    f = F.normalize(torch.cat([t_u, t_v], dim=1).float(), dim=-1)  # (M, N, D)
    start = torch.linspace(0, n_u - 1, cfg.num_clusters).round().long().to(f.device)
    centres = f[:, start]  # (M, N_C, D)
    for _ in range(cfg.cluster_iters):
        s = sinkhorn_knopp(f @ centres.transpose(1, 2), cfg.sinkhorn_iters, cfg.sinkhorn_eps)
        centres = F.normalize(s.transpose(1, 2) @ f, dim=-1)
    s = sinkhorn_knopp(f @ centres.transpose(1, 2), cfg.sinkhorn_iters, cfg.sinkhorn_eps)
    return s[:, :n_u].to(t_u.dtype), s[:, n_u:].to(t_u.dtype)


def object_loss(
    s: Tensor,
    t: Tensor,
    a_s: Tensor,
    a_t: Tensor,
    head_s: Head,
    head_t: Head,
    center: Tensor,
    cfg: LossConfig,
) -> tuple[Tensor, Tensor]:
    """L_obj (Eq. 7), one direction: student cells s (M, N_u, D) of u with assignment a_s (M, N_u, N_C),
    teacher cells t (M, N_v, D) of v with a_t (M, N_v, N_C). Returns (loss, teacher logits)."""
    mass_s, mass_t = a_s.sum(1), a_t.sum(1)  # (M, N_C)
    c_s = a_s.transpose(1, 2) @ s / mass_s[..., None].clamp_min(1e-6)  # (M, N_C, D)
    c_t = a_t.transpose(1, 2) @ t.detach() / mass_t[..., None].clamp_min(1e-6)
    keep = (mass_s >= cfg.obj_min_mass) & (mass_t >= cfg.obj_min_mass)
    lt = head_t(c_t[keep])
    return contrast(head_s(c_s[keep]), lt, center, cfg), lt


def image_loss(
    s: Tensor, t: Tensor, head_s: Head, head_t: Head, center: Tensor, cfg: LossConfig
) -> tuple[Tensor, Tensor]:
    """L_img (Eq. 8), one direction: average-pooled student cells s (M, N_u, D) vs teacher t (M, N_v, D)."""
    lt = head_t(t.mean(1))
    return contrast(head_s(s.mean(1)), lt, center, cfg), lt


def fgcl(
    student: tuple[Tensor, Tensor],
    teacher: tuple[Tensor, Tensor],
    pads: tuple[Tensor, Tensor],
    corr: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]],
    head_s: Callable[[str, Tensor], Tensor],
    head_t: Callable[[str, Tensor], Tensor],
    centers: dict[str, Tensor],
    cfg: LossConfig,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """L_FGCL = L_pix + L_obj + L_img of one stream, symmetric over the two views.

    student, teacher: maps of views (u, v), each (B, T, D, h, w) (T = 1 for hr and fused); pads (B, T)
    bool per view; corr: ``views.correspondence`` (index, valid) for u -> v and v -> u; head_*(granularity,
    x) -> logits; centers: granularity -> (1, K) teacher centre. Returns the enabled terms and, per
    granularity, the teacher logits of this step (for :func:`update_center_`).
    """
    su, sv = (tokens(x) for x in student)  # (B, T, N, D)
    tu, tv = (tokens(x).detach() for x in teacher)
    keep_t = ~pads[0] & ~pads[1]  # (B, T): date t valid in both views
    losses: dict[str, Tensor] = {}
    logits: dict[str, Tensor] = {}

    def both(fn: Callable[..., tuple[Tensor, Tensor]], g: str, args_uv: tuple, args_vu: tuple) -> None:
        hs, ht = (lambda x: head_s(g, x)), (lambda x: head_t(g, x))
        l1, t1 = fn(*args_uv, hs, ht, centers[g], cfg)
        l2, t2 = fn(*args_vu, hs, ht, centers[g], cfg)
        losses[g] = 0.5 * (l1 + l2)
        logits[g] = torch.cat([t1, t2])

    if cfg.pix:
        both(pixel_loss, "pix", (su, tv, keep_t, *corr[0]), (sv, tu, keep_t, *corr[1]))
    if cfg.obj or cfg.img:
        su_m, sv_m, tu_m, tv_m = su[keep_t], sv[keep_t], tu[keep_t], tv[keep_t]  # (M, N, D)
        if cfg.obj:
            a_u, a_v = cluster_views(tu_m, tv_m, cfg)
            both(object_loss, "obj", (su_m, tv_m, a_u, a_v), (sv_m, tu_m, a_v, a_u))
        if cfg.img:
            both(image_loss, "img", (su_m, tv_m), (sv_m, tu_m))
    return losses, logits


def info_nce(a: Tensor, b: Tensor, temp: float, keep: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE: a, b (B, E) embeddings of the same B places (row i of a matches row i of b);
    keep (B,) bool drops rows. Mean of CE(a -> b) and CE(b -> a) on cosine / temp logits."""
    if keep is not None:
        a, b = a[keep], b[keep]
    if a.shape[0] < 2:
        return _zero(a) + _zero(b)  # no negatives
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() / temp  # (B, B)
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def cma_loss(emb: dict[str, Tensor], keep: dict[str, Tensor], temp: float) -> Tensor:
    """L_CMA: mean of :func:`info_nce` over every pair of modalities; emb[m] (B, E), keep[m] (B,) bool."""
    pairs = list(itertools.combinations(sorted(emb), 2))
    if not pairs:
        return next(iter(emb.values())).sum() * 0.0 if emb else torch.zeros(())
    return torch.stack([info_nce(emb[a], emb[b], temp, keep[a] & keep[b]) for a, b in pairs]).mean()


@torch.no_grad()
def gcpl_target(assign: Tensor, feats: Tensor) -> Tensor:
    """P_r_bar = S^T F with S's columns normalised to sum 1: assign (n, N_p), feats (n, d) -> (N_p, d)."""
    return (assign / assign.sum(0, keepdim=True).clamp_min(1e-12)).t() @ feats


@torch.no_grad()
def gcpl_update_(
    prototypes: Tensor, feats: Tensor, region: Tensor, momentum: float, n_iters: int = 3, eps: float = 0.05
) -> list[int]:
    """GCPL (Eq. 9), in place on ``prototypes`` (N_R, N_p, d): for every region r in the batch, the cells
    feats (B, N, d) of its samples (region (B,) int64, -1 = unknown, skipped) are assigned to P_r by
    Sinkhorn-Knopp on cosine similarity and ``P_r <- m P_r + (1 - m) P_r_bar``. Returns the regions done."""
    done = []
    for r in region.unique().tolist():
        if r < 0:
            continue
        f = feats[region == r].reshape(-1, feats.shape[-1]).to(prototypes.dtype)  # (n, d)
        p = prototypes[r]  # (N_p, d)
        sim = F.normalize(f, dim=-1) @ F.normalize(p, dim=-1).t()  # M, (n, N_p)
        target = gcpl_target(sinkhorn_knopp(sim, n_iters, eps), f)
        p.mul_(momentum).add_(target, alpha=1 - momentum)
        done.append(int(r))
    return done
