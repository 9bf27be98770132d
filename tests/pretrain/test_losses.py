"""Losses on hand-computed cases: Sinkhorn-Knopp marginals, DINO CE, MGCL terms, InfoNCE, GCPL."""

import math
from dataclasses import replace

import pytest
import torch

from skysense.pretrain.losses import (
    LossConfig,
    cluster_views,
    dino_ce,
    fgcl,
    gcpl_target,
    gcpl_update_,
    image_loss,
    info_nce,
    object_loss,
    pixel_loss,
    sinkhorn_knopp,
    update_center_,
)

D64 = torch.float64


def ident(x: torch.Tensor) -> torch.Tensor:
    return x


@pytest.mark.parametrize("shape", [(12, 4), (3, 10, 5)])
def test_sinkhorn_marginals(shape):
    scores = torch.randn(*shape, dtype=D64)
    q = sinkhorn_knopp(scores, n_iters=100, eps=1.0)
    n, k = shape[-2:]
    torch.testing.assert_close(q.sum(-1), torch.ones(shape[:-1], dtype=D64))
    torch.testing.assert_close(q.sum(-2), torch.full((*shape[:-2], k), n / k, dtype=D64))
    assert (q >= 0).all()


def test_sinkhorn_rows_exact_after_few_iterations_and_no_overflow():
    scores = torch.randn(64, 8) * 50  # scores / eps ~ 1e3: exp would overflow outside the log domain
    q = sinkhorn_knopp(scores, n_iters=3, eps=0.05)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(64))


def test_sinkhorn_balances_a_biased_assignment():
    # every item prefers prototype 0; equipartition splits them evenly anyway
    scores = torch.tensor([[1.0, 0.0]] * 4, dtype=D64)
    q = sinkhorn_knopp(scores, n_iters=500, eps=1.0)
    torch.testing.assert_close(q.sum(0), torch.tensor([2.0, 2.0], dtype=D64))


def test_dino_ce_two_classes_by_hand():
    s = torch.tensor([[1.0, 0.0]], dtype=D64)
    t = torch.tensor([[0.5, 0.0]], dtype=D64)
    c = torch.tensor([[0.1, -0.1]], dtype=D64)
    got = dino_ce(s, t, c, student_temp=0.5, teacher_temp=0.25)
    # teacher: (0.4, 0.1) / 0.25 = (1.6, 0.4) -> p1 = 1 / (1 + e^-1.2); student: (2, 0) -> log p = (2, 0) - L
    p1 = 1 / (1 + math.exp(-1.2))
    lse = math.log(1 + math.exp(2))
    want = -(p1 * (2 - lse) + (1 - p1) * (0 - lse))
    assert abs(float(got) - want) < 1e-12
    # the teacher side carries no gradient
    s.requires_grad_(True)
    t.requires_grad_(True)
    dino_ce(s, t, c, 0.5, 0.25).backward()
    assert t.grad is None and s.grad is not None


def test_sinkhorn_centering_by_a_second_formulation():
    """DINOv2 targets: exp(t / tau_t), then columns to n / K and rows to 1 in turn, in the probability
    domain and float64 (ours iterate in the log domain); the centre plays no part."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g, dtype=D64), torch.randn(6, 4, generator=g, dtype=D64)
    t[:, 0] += 2.0  # every pair prefers prototype 0
    q = torch.exp(t / 0.25)
    for _ in range(3):
        q = q / q.sum(0, keepdim=True) * (6 / 4)
        q = q / q.sum(1, keepdim=True)
    want = -(q * torch.log_softmax(s / 0.5, dim=-1)).sum(-1).mean()
    centre = torch.randn(1, 4, generator=g, dtype=D64)
    torch.testing.assert_close(dino_ce(s, t, centre, 0.5, 0.25, sinkhorn_iters=3), want)
    # the softmax targets pile onto prototype 0; the Sinkhorn ones nearly balance the prototypes
    soft = torch.softmax(t / 0.25, dim=-1).sum(0)
    assert soft[0] > 5.0 and (q.sum(0) - 1.5).abs().max() < 0.2


def test_centering_switch_reaches_every_granularity():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 3, 8, generator=g, dtype=D64), torch.randn(5, 3, 8, generator=g, dtype=D64)
    zero = torch.zeros(1, 8, dtype=D64)
    cfg = LossConfig(centering="sinkhorn", student_temp=0.5, teacher_temp=0.25)
    loss, _ = image_loss(s, t, ident, ident, zero, cfg)
    torch.testing.assert_close(loss, dino_ce(s.mean(1), t.mean(1), zero, 0.5, 0.25, sinkhorn_iters=3))
    assert not torch.allclose(
        loss, image_loss(s, t, ident, ident, zero, LossConfig(student_temp=0.5, teacher_temp=0.25))[0]
    )
    with pytest.raises(ValueError, match="centering"):
        image_loss(s, t, ident, ident, zero, LossConfig(centering="mean"))


def test_center_ema():
    c = torch.zeros(1, 2, dtype=D64)
    update_center_(c, torch.tensor([[1.0, 3.0], [3.0, 5.0]], dtype=D64), momentum=0.9)
    torch.testing.assert_close(c, torch.tensor([[0.2, 0.4]], dtype=D64))


CFG = LossConfig(student_temp=0.5, teacher_temp=0.25, obj_min_mass=0.5, num_clusters=2)
ZERO = torch.zeros(1, 2, dtype=D64)


def test_pixel_loss_uses_the_partner_cell_only():
    s = torch.tensor([[[[1.0, 0.0], [5.0, 5.0]]]], dtype=D64)  # (B=1, T=1, N_u=2, D=2)
    t = torch.tensor([[[[9.0, -9.0], [0.5, 0.0]]]], dtype=D64)  # (1, 1, N_v=2, 2)
    index, valid = torch.tensor([[1, 0]]), torch.tensor([[True, False]])
    loss, lt = pixel_loss(s, t, torch.tensor([[True]]), index, valid, ident, ident, ZERO, CFG)
    want = dino_ce(s[0, 0, :1], t[0, 0, 1:], ZERO, 0.5, 0.25)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(lt, t[0, 0, 1:])
    loss, lt = pixel_loss(s, t, torch.tensor([[False]]), index, valid, ident, ident, ZERO, CFG)
    assert float(loss) == 0 and lt.numel() == 0


def test_object_loss_contrasts_matched_cluster_means():
    s = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]], dtype=D64)  # (M=1, N_u=3, D=2)
    t = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]], dtype=D64)  # (1, N_v=2, 2)
    a_s = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], dtype=D64)  # cells 0, 1 -> cluster 0
    a_t = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], dtype=D64)
    loss, _ = object_loss(s, t, a_s, a_t, ident, ident, ZERO, CFG)
    want = dino_ce(
        torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=D64),
        torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=D64),
        ZERO,
        0.5,
        0.25,
    )
    torch.testing.assert_close(loss, want)
    # a cluster empty in v is skipped
    a_t = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], dtype=D64)
    loss, lt = object_loss(s, t, a_s, a_t, ident, ident, ZERO, CFG)
    want = dino_ce(
        torch.tensor([[2.0, 0.0]], dtype=D64), torch.tensor([[1.0, 0.5]], dtype=D64), ZERO, 0.5, 0.25
    )
    torch.testing.assert_close(loss, want)
    assert lt.shape == (1, 2)


@pytest.mark.parametrize("centering", ["ema", "sinkhorn"])
def test_terms_with_no_surviving_pair_still_run_both_heads(centering):
    """No overlap / no heavy cluster / no shared date: both heads run once, on zero rows, and the term is
    an exact zero with the student head in the graph (FSDP needs every rank to call every head)."""
    cfg = LossConfig(
        student_temp=0.5, teacher_temp=0.25, obj_min_mass=0.5, num_clusters=2, centering=centering
    )
    calls: list[tuple[str, tuple[int, ...]]] = []

    def head(name: str, lin: torch.nn.Linear):
        return lambda x: calls.append((name, tuple(x.shape))) or lin(x)

    g = torch.Generator().manual_seed(0)
    s, t = (torch.randn(1, 1, 3, 2, generator=g, dtype=D64) for _ in range(2))  # (B, T, N, D)
    nothing = torch.zeros(1, 3, dtype=torch.bool)
    a = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]], dtype=D64)  # masses 3 and 0, both under 5 below
    cases = {
        "pix": lambda hs, ht: pixel_loss(
            s, t, torch.tensor([[True]]), torch.zeros(1, 3, dtype=torch.long), nothing, hs, ht, ZERO, cfg
        ),
        "obj": lambda hs, ht: object_loss(s[0], t[0], a, a, hs, ht, ZERO, replace(cfg, obj_min_mass=5.0)),
        "img": lambda hs, ht: image_loss(s[0, :0], t[0, :0], hs, ht, ZERO, cfg),
    }
    for name, term in cases.items():
        calls.clear()
        lin_s, lin_t = torch.nn.Linear(2, 2, dtype=D64), torch.nn.Linear(2, 2, dtype=D64)
        loss, lt = term(head("student", lin_s), head("teacher", lin_t))
        assert sorted(calls) == [("student", (0, 2)), ("teacher", (0, 2))], name
        assert lt.shape == (0, 2) and float(loss) == 0.0, name
        loss.backward()
        assert lin_s.weight.grad is not None and not lin_s.weight.grad.any(), name


def test_cluster_views_match_clusters_across_views():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    t_u = torch.tensor([[e1, e1, e2, e2]])
    t_v = torch.tensor([[e2, e1, e2, e1, e1]])
    a_u, a_v = cluster_views(t_u, t_v, LossConfig(num_clusters=2))
    lu, lv = a_u.argmax(-1)[0], a_v.argmax(-1)[0]
    assert lu[0] == lu[1] != lu[2] == lu[3]
    assert lv.tolist() == [lu[2], lu[0], lu[2], lu[0], lu[0]]
    torch.testing.assert_close(a_u.sum(-1), torch.ones(1, 4))


def test_image_loss_pools_each_view():
    s = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]], dtype=D64)
    t = torch.tensor([[[0.0, 1.0]]], dtype=D64)
    loss, _ = image_loss(s, t, ident, ident, ZERO, CFG)
    torch.testing.assert_close(loss, dino_ce(torch.tensor([[2.0, 1.0]], dtype=D64), t[0], ZERO, 0.5, 0.25))


def test_fgcl_ignores_padded_dates():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 3, 4, 2, 2, generator=g, dtype=D64) for _ in range(4)]  # (B, T, D, h, w)
    pads = torch.tensor([[False, False, True], [False, True, True]])
    corr = ((torch.tensor([[0, 1, 2, 3]] * 2), torch.ones(2, 4, dtype=torch.bool)),) * 2
    centers = {k: torch.zeros(1, 4, dtype=D64) for k in ("pix", "obj", "img")}

    def run(ms, cfg=None):
        losses, _ = fgcl(
            (ms[0], ms[1]),
            (ms[2], ms[3]),
            (pads, pads),
            corr,
            lambda _, x: x,
            lambda _, x: x,
            centers,
            cfg or LossConfig(),
        )
        return losses

    ref = run(maps)
    assert set(ref) == {"pix", "obj", "img"}
    changed = [m.clone() for m in maps]
    for m in changed:
        m[pads] = 1e3 * torch.randn_like(m[pads])
    for k, v in run(changed).items():
        torch.testing.assert_close(v, ref[k])
    assert set(run(maps, LossConfig(pix=False, obj=False))) == {"img"}


def test_info_nce_orthogonal_embeddings():
    tau = 0.1
    a = torch.eye(3, dtype=D64)
    # logits = I / tau: each row -log(e^(1/tau) / (e^(1/tau) + 2)) = log(1 + 2 e^(-1/tau)), both directions
    want = math.log(1 + 2 * math.exp(-1 / tau))
    assert abs(float(info_nce(a, 2 * a, tau)) - want) < 1e-12
    # matching rows orthogonal, the others aligned: the loss is large
    b = torch.roll(a, 1, dims=0)
    want = math.log(math.exp(1 / tau) + 2)  # row i: logit 0 at its match, 1/tau once, 0 once
    assert abs(float(info_nce(a, b, tau)) - want) < 1e-9
    # dropped rows do not count; fewer than 2 rows give 0
    keep = torch.tensor([True, True, False])
    assert abs(float(info_nce(a, a, tau, keep)) - math.log(1 + math.exp(-1 / tau))) < 1e-12
    assert float(info_nce(a[:1], a[:1], tau)) == 0


def test_gcpl_update_with_known_assignment():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    protos = torch.tensor([[e1, e2], [e1, e2], [e1, e2]], dtype=D64)  # (N_R=3, N_p=2, d=2)
    # region 1: cells along e1 and e2, each exactly on one prototype -> S one-hot, means 3 e1, 3 e2
    f = torch.tensor(
        [[[3.0, 0.0], [3.0, 0.0]], [[0.0, 3.0], [0.0, 3.0]], [[7.0, 7.0], [7.0, 7.0]]], dtype=D64
    )
    region = torch.tensor([1, 1, -1])
    done = gcpl_update_(protos, f, region, momentum=0.9, n_iters=3, eps=0.05)
    assert done == [1]
    torch.testing.assert_close(protos[1], torch.tensor([[1.2, 0.0], [0.0, 1.2]], dtype=D64))
    torch.testing.assert_close(protos[0], torch.tensor([e1, e2], dtype=D64))  # absent region untouched
    torch.testing.assert_close(protos[2], torch.tensor([e1, e2], dtype=D64))


def test_gcpl_target_is_assignment_weighted_mean():
    # cells on the diagonal are equally close to both prototypes: S = 0.5 everywhere, P_bar = mean for both
    f = torch.tensor([[1.0, 1.0], [2.0, 2.0]], dtype=D64)
    s = sinkhorn_knopp(f @ torch.eye(2, dtype=D64) / f.norm(dim=1, keepdim=True), 3, 0.05)
    torch.testing.assert_close(s, torch.full((2, 2), 0.5, dtype=D64))
    torch.testing.assert_close(gcpl_target(s, f), torch.full((2, 2), 1.5, dtype=D64))
    s = torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=D64)
    torch.testing.assert_close(gcpl_target(s, f), torch.tensor([[1.2, 1.2], [2.0, 2.0]], dtype=D64))


def test_pixel_loss_subsamples_pairs_without_changing_them():
    """max_pixels keeps a random subset of the (cell, date) pairs: each kept pair is an exact pair."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 5, 4, generator=g, dtype=D64)  # (B, T, N_u, D)
    t = torch.randn(2, 3, 5, 4, generator=g, dtype=D64)
    index = torch.stack([torch.randperm(5, generator=g) for _ in range(2)])  # distinct partners
    valid, keep_t = torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)
    Z4 = torch.zeros(1, 4, dtype=D64)  # noqa: N806
    full, lt_full = pixel_loss(s, t, keep_t, index, valid, ident, ident, Z4, CFG)
    assert lt_full.shape[0] == 30
    sub_cfg = LossConfig(student_temp=CFG.student_temp, teacher_temp=CFG.teacher_temp, max_pixels=7)
    torch.manual_seed(1)
    sub, lt = pixel_loss(s, t, keep_t, index, valid, ident, ident, Z4, sub_cfg)
    assert lt.shape[0] == 7
    rows = [int((lt_full == row).all(1).nonzero()[0]) for row in lt]  # which pairs were drawn
    assert len(set(rows)) == 7
    s_rows = s.reshape(-1, 4)[rows]  # pairs are (b, t, i) in row-major order, like the mask
    torch.testing.assert_close(sub, dino_ce(s_rows, lt_full[rows], Z4, CFG.student_temp, CFG.teacher_temp))
    big = LossConfig(student_temp=CFG.student_temp, teacher_temp=CFG.teacher_temp, max_pixels=100)
    torch.testing.assert_close(pixel_loss(s, t, keep_t, index, valid, ident, ident, Z4, big)[0], full)
