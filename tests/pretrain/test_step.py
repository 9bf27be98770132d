"""The pre-training step end to end on the tiny model: losses, gradients, descent, padding, determinism."""

import copy

import pytest
import torch

from skysense.engine.config import apply_overrides
from skysense.models.skysense import build_model
from skysense.pretrain.heads import HeadConfig
from skysense.pretrain.losses import LossConfig
from skysense.pretrain.step import PretrainConfig, build_pretrain, pretrain_step
from skysense.pretrain.teacher import ema_update_
from skysense.pretrain.trainer import TrainConfig, from_dict
from skysense.pretrain.views import ViewConfig

B = 2
# Outputs of the hr pyramid levels 0-2 (their norms) feed no pre-training loss: only stage 4 does.
UNUSED = {f"backbone.encoders.hr.norm{i}.{w}" for i in range(3) for w in ("weight", "bias")}


def make_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    days = torch.tensor([18300, 18330, 18390, 18450])
    return {
        "hr": torch.randn(B, 3, 128, 128, generator=g),
        "s2": torch.randn(B, 4, 10, 16, 16, generator=g),
        "s2_dates": days.expand(B, -1).clone(),
        "s2_mask": torch.tensor([[False] * 4, [False, False, True, True]]),  # sample 1: 2 padded dates
        "s1": torch.randn(B, 3, 2, 16, 16, generator=g),
        "s1_dates": days[:3].expand(B, -1).clone(),
        "lat": torch.tensor([45.0, -12.5]),
        "lon": torch.tensor([7.0, 130.0]),
    }


def make_cfg(**loss) -> PretrainConfig:
    return PretrainConfig(
        views=ViewConfig(num_dates={"s2": 3, "s1": 2}, date_jitter=5, hr_jitter=0.1),
        heads=HeadConfig(hidden_dim=64, bottleneck_dim=32, out_dim=64),
        loss=LossConfig(num_clusters=4, **loss),
    )


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    cfg = make_cfg()
    return (*build_pretrain(build_model("tiny"), cfg), cfg)


def run(state, batch, seed=1, cfg=None):
    student, teacher, centers, default = copy.deepcopy(state)
    torch.manual_seed(seed)  # drop-path of the student
    out = pretrain_step(student, teacher, centers, batch, cfg or default, torch.Generator().manual_seed(seed))
    return out, student, teacher, centers


def test_step_all_losses_and_gradients(state):
    out, student, _, _ = run(state, make_batch())
    streams = ("hr", "s2", "s1", "fused")
    want = {f"{g}/{s}" for g in ("pix", "obj", "img") for s in streams} | {"mgcl", "cma", "loss"}
    assert set(out.losses) == want
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert {"teacher_entropy", "feature_std"} <= set(out.monitors)
    out.losses["loss"].backward()
    trainable = {n: p for n, p in student.named_parameters() if p.requires_grad}
    assert "backbone.geo.prototypes" not in trainable  # moved by GCPL only
    no_grad = {n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0}
    assert no_grad == UNUSED & set(trainable), sorted(no_grad)
    assert all(torch.isfinite(p.grad).all() for p in trainable.values() if p.grad is not None)


def test_gcpl_moves_only_the_batch_regions(state):
    before = state[0].backbone.geo.prototypes.detach().clone()
    _, student, _, _ = run(state, make_batch())
    after = student.backbone.geo.prototypes.detach()
    regions = student.backbone.geo.regions(make_batch()["lat"], make_batch()["lon"]).tolist()
    changed = [r for r in range(after.shape[0]) if not torch.equal(after[r], before[r])]
    assert sorted(changed) == sorted(set(regions))


def test_few_adamw_steps_lower_the_loss(state):
    student, teacher, centers, cfg = copy.deepcopy(state)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-3)
    batch, losses = make_batch(), []
    for _ in range(5):
        torch.manual_seed(0)
        out = pretrain_step(student, teacher, centers, batch, cfg, torch.Generator().manual_seed(0))
        loss = out.losses["loss"]
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update_(teacher, student, 0.996)
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


def test_padded_dates_change_no_loss_and_seed_is_deterministic(state):
    batch = make_batch()
    ref = run(state, batch)[0].losses
    again = run(state, make_batch())[0].losses
    other = make_batch()
    pad = other["s2_mask"]
    other["s2"][pad] = 1e3 * torch.randn_like(other["s2"][pad])
    other["s2_dates"][pad] = 0
    changed = run(state, other)[0].losses
    for k, v in ref.items():
        assert torch.equal(v, again[k]), k
        assert torch.equal(v, changed[k]), k


def test_flags_switch_terms_off(state):
    cfg = make_cfg(pix=False, cma=False, gcpl=False, streams=("s2", "fused"))
    out, student, _, _ = run(state, make_batch(), cfg=cfg)
    assert set(out.losses) == {"obj/s2", "img/s2", "obj/fused", "img/fused", "mgcl", "loss"}
    assert torch.equal(student.backbone.geo.prototypes, state[0].backbone.geo.prototypes)
    cfg = make_cfg(pix=False, obj=False, img=False, gcpl=False)
    out, _, _, _ = run(state, make_batch(), cfg=cfg)
    assert set(out.losses) == {"mgcl", "cma", "loss"} and float(out.losses["mgcl"].detach()) == 0


def test_multi_crop_adds_local_image_terms_by_a_second_formulation(state):
    """With local crops, ``img_local/<stream>`` = mean over (crop, global view) of L_img recomputed here
    from the crops' own student outputs; the global terms are those of the run without crops."""
    from skysense.pretrain.losses import image_loss, tokens
    from skysense.pretrain.step import stream_map
    from skysense.pretrain.views import local_views, make_views

    base = make_cfg()
    cfg = PretrainConfig(
        views=ViewConfig(**{**base.views.__dict__, "local_crops": 2}), heads=base.heads, loss=base.loss
    )
    batch = make_batch()
    without, *_ = run(state, batch, seed=3)
    with_crops, student, teacher, centers = run(state, batch, seed=3, cfg=cfg)
    for k, v in without.losses.items():  # the same global views: crops are drawn after them
        if "/" in k:
            torch.testing.assert_close(with_crops.losses[k], v)
    streams = ("hr", "s2", "s1", "fused")
    assert {f"img_local/{s}" for s in streams} <= set(with_crops.losses)

    # Second formulation: replay the generator and the student (weights as before the step, drop-path
    # seed as in run) on the same views and crops.
    s0, t0, c0, _ = copy.deepcopy(state)
    gen = torch.Generator().manual_seed(3)
    u, v = make_views(batch, cfg.views, gen)
    crops = local_views(batch, u, cfg.views, gen)
    assert crops[0].sample["hr"].shape[-1] == u.sample["hr"].shape[-1] // 2
    assert torch.equal(crops[0].sample["s2_dates"], batch["s2_dates"].gather(1, u.geom.dates["s2"]))
    t0.eval()
    with torch.no_grad():
        t_out = [t0(w.sample) for w in (u, v)]
    s0.eval()  # no drop-path in tiny
    want = []
    for crop in crops:
        o = s0(crop.sample)
        for tv, w in zip(t_out, (u, v)):
            s_map, s_pad = stream_map(o, crop.sample, "hr")
            t_map, t_pad = stream_map(tv, w.sample, "hr")
            keep = ~s_pad & ~t_pad
            want.append(
                image_loss(
                    tokens(s_map)[keep],
                    tokens(t_map)[keep],
                    lambda x: s0.heads("hr", "img", x),
                    lambda x: t0.heads("hr", "img", x),
                    c0.get("hr")["img"],
                    cfg.loss,
                )[0]
            )
    torch.testing.assert_close(
        with_crops.losses["img_local/hr"], torch.stack(want).mean(), rtol=1e-4, atol=1e-5
    )


def test_hr_stage_streams_reach_the_earlier_stages():
    """``hr3`` runs MGCL on the stage-3 map with a head of its own: its terms appear, its map is the
    pyramid's third output, and the stage-3 norm (unused with ``hr`` alone) now gets a gradient."""
    from skysense.pretrain.step import stream_map

    torch.manual_seed(0)
    cfg = make_cfg(streams=("hr", "hr3"), cma=False, gcpl=False)
    student, teacher, centers = build_pretrain(build_model("tiny"), cfg)
    assert student.heads.heads["hr3"].mlp[0].in_features == student.backbone.cfg.hr.out_channels[2]
    batch = {"hr": make_batch()["hr"]}
    out = pretrain_step(student, teacher, centers, batch, cfg, torch.Generator().manual_seed(0))
    assert {f"{g}/hr3" for g in ("pix", "obj", "img")} <= set(out.losses)
    out.losses["loss"].backward()
    grads = dict(student.named_parameters())
    assert grads["backbone.encoders.hr.norm2.weight"].grad.abs().sum() > 0
    assert grads["heads.heads.hr3.prototypes.weight"].grad.abs().sum() > 0
    feats = student.backbone({"hr": batch["hr"]})
    got, pad = stream_map(feats, batch, "hr3")
    assert torch.equal(got[:, 0], feats["hr"][2]) and not pad.any()
    assert torch.count_nonzero(centers.hr3_img) > 0  # its own teacher centre moved


@pytest.mark.parametrize("streams", [("hr", "hr9"), ("optical",)])
def test_unknown_streams_are_refused(streams):
    with pytest.raises(ValueError, match="loss.streams: unknown"):
        build_pretrain(build_model("tiny"), make_cfg(streams=streams))
    cfg = make_cfg()
    cfg.heads.standardise = streams
    with pytest.raises(ValueError, match="heads.standardise: unknown"):
        build_pretrain(build_model("tiny"), cfg)


def test_levels_pick_granularities_per_stream_and_leave_the_rest_unchanged(state):
    """``levels`` drops terms of one stream without touching the others: with hr at image level only,
    the hr and s2 terms that remain equal those of the run with every level; the global flags still
    win (an ablation stays one flag)."""
    base = dict(cma=False, gcpl=False, streams=("hr", "s2"))
    ref = run(state, make_batch(), cfg=make_cfg(**base))[0].losses
    out = run(state, make_batch(), cfg=make_cfg(levels={"hr": ("img",)}, **base))[0].losses
    assert set(out) == {"img/hr", "pix/s2", "obj/s2", "img/s2", "mgcl", "loss"}
    for k in set(out) - {"mgcl", "loss"}:
        assert torch.equal(out[k], ref[k]), k
    kept = sum(v for k, v in ref.items() if k in out and k not in ("mgcl", "loss"))
    torch.testing.assert_close(out["mgcl"], kept)
    out = run(state, make_batch(), cfg=make_cfg(pix=False, levels={"s2": ("pix", "img")}, **base))[0].losses
    assert set(out) == {"obj/hr", "img/hr", "img/s2", "mgcl", "loss"}
    out = run(state, make_batch(), cfg=make_cfg(levels={"s2": ()}, **base))[0].losses
    assert not any(k.endswith("/s2") for k in out)
    cfg = make_cfg(levels={"s2": ("pix",)}, **base)
    cfg.views.local_crops = 1
    out = run(state, make_batch(), cfg=cfg)[0].losses  # multi-crop terms are image level too
    assert "img_local/hr" in out and "img_local/s2" not in out


def test_weights_scale_each_granularity_in_the_total(state):
    """``weights`` leaves every logged term bit-equal and sums them as w_g * L_g (the multi-crop terms
    take the image weight); a zero weight keeps the term logged but out of the total."""
    base = dict(cma=False, gcpl=False, streams=("hr", "s2"))
    cfg = make_cfg(**base)
    cfg.views.local_crops = 1
    ref = run(state, make_batch(), cfg=cfg)[0].losses
    w = {"pix": 0.25, "obj": 0.0, "img": 2.0}
    cfg = make_cfg(weights=w, **base)
    cfg.views.local_crops = 1
    out = run(state, make_batch(), cfg=cfg)[0].losses
    assert set(out) == set(ref)
    terms = [k for k in ref if "/" in k]
    for k in terms:
        assert torch.equal(out[k], ref[k]), k
    expect = sum(w[k.split("/")[0].removesuffix("_local")] * ref[k].double() for k in terms)
    torch.testing.assert_close(out["mgcl"].double(), expect, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out["mgcl"], ref["mgcl"])


@pytest.mark.parametrize(
    "weights", [{"pixel": 1.0}, {"obj": -0.5}, {"img": float("nan")}, {"pix": "x"}, {"pix": True}]
)
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError, match="pretrain.loss.weights"):
        LossConfig(weights=weights)


def test_weights_from_yaml_strings():
    d = apply_overrides({}, ["pretrain.loss.weights={pix: 1e-1, obj: 2}", "lr=5e-4"])  # YAML: "1e-1"
    cfg = from_dict(TrainConfig, d)
    assert cfg.pretrain.loss.weights == {"pix": 0.1, "obj": 2.0} and cfg.lr == 5e-4
    assert cfg.pretrain.loss.weight("img") == 1.0
    with pytest.raises(ValueError, match=r"weights\['pix'\]='x'"):
        from_dict(TrainConfig, apply_overrides({}, ["pretrain.loss.weights={pix: x}"]))
    with pytest.raises(ValueError, match="lr='abc': expected a number"):
        from_dict(TrainConfig, apply_overrides({}, ["lr=abc"]))


@pytest.mark.parametrize("levels", [{"hr": ("pixel",)}, {"s1": ("img",)}])
def test_bad_levels_are_refused(levels):
    with pytest.raises(ValueError, match="pretrain.loss.levels"):
        LossConfig(streams=("hr", "s2"), levels=levels)
