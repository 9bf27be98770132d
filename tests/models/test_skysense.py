"""The assembled encoder: every modality subset, padding, gradients, precision, input contract."""

import itertools

import pytest
import torch

from skysense.config import get_preset
from skysense.dates import to_days
from skysense.models.skysense import SkySense, build_model

B, T2, T1 = 2, 3, 2
HR_PX, S_PX = 64, 8  # tiny: hr stage 4 -> 2x2; s2/s1 patch 2 -> 4x4 tokens -> 8x8 aligned -> pooled to 2x2


def make_sample(modalities=("hr", "s2", "s1"), b=B, t2=T2, t1=T1, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = {}
    if "hr" in modalities:
        s["hr"] = torch.randn(b, 3, HR_PX, HR_PX, generator=g).to(dtype)
    if "s2" in modalities:
        s["s2"] = torch.randn(b, t2, 10, S_PX, S_PX, generator=g).to(dtype)
        s["s2_dates"] = (to_days(["2020-01-01"]) + torch.randint(0, 700, (b, t2), generator=g)).sort(1).values
    if "s1" in modalities:
        s["s1"] = torch.randn(b, t1, 2, S_PX, S_PX, generator=g).to(dtype)
        s["s1_dates"] = (to_days(["2020-01-01"]) + torch.randint(0, 700, (b, t1), generator=g)).sort(1).values
    s["lat"] = torch.tensor([45.0, -12.5][:b], dtype=torch.float64)
    s["lon"] = torch.tensor([7.0, 130.0][:b], dtype=torch.float64)
    return s


@pytest.fixture(scope="module")
def model() -> SkySense:
    torch.manual_seed(0)
    m = build_model("tiny").eval()
    with torch.no_grad():
        m.fusion.dtpe.normal_()  # zero at init; random here so dates matter in the tests
    return m


SUBSETS = [c for r in (1, 2, 3) for c in itertools.combinations(("hr", "s2", "s1"), r)]


@pytest.mark.parametrize("mods", SUBSETS, ids=["+".join(m) for m in SUBSETS])
@torch.no_grad()
def test_shapes_for_every_modality_subset(model, mods):
    out = model(make_sample(mods))
    cfg = model.cfg
    grid = (2, 2) if "hr" in mods else (S_PX, S_PX)
    assert out["fused_mm"].shape == (B, cfg.fusion.embed_dim, *grid)
    assert out["fused"].shape == (B, cfg.fusion.embed_dim + cfg.geo.dim, *grid)
    if "hr" in mods:
        assert [tuple(p.shape) for p in out["hr"]] == [
            (B, c, HR_PX // 4 // 2**i, HR_PX // 4 // 2**i) for i, c in enumerate(cfg.hr.out_channels)
        ]
    for m, t in (("s2", T2), ("s1", T1)):
        if m in mods:
            vit = getattr(cfg, m)
            assert len(out[m]) == len(vit.out_indices)
            assert out[m][-1].shape == (B, t, vit.embed_dim, S_PX // vit.patch_size, S_PX // vit.patch_size)
            assert out[f"{m}_aligned"].shape == (B, t, cfg.aligned_dim, *grid)
        else:
            assert m not in out
    assert (
        out["region"].tolist()
        == model.geo.regions(torch.tensor([45.0, -12.5]), torch.tensor([7.0, 130.0])).tolist()
    )
    assert torch.isfinite(out["fused"]).all()


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    sample = make_sample()
    sample["hr_dates"] = to_days(["2020-06-01", "2021-06-01"])
    out = model(sample)
    loss = out["fused"].square().mean() + sum(f.square().mean() for f in out["s2"] + out["s1"] + out["hr"])
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


@torch.no_grad()
def test_padded_dates_change_nothing(model):
    sample = make_sample()
    sample["s2_mask"] = torch.tensor([[False, False, False], [False, True, True]])
    sample["s1_mask"] = torch.tensor([[False, False], [False, True]])
    out = model(sample)
    noisy = {k: v.clone() for k, v in sample.items()}
    noisy["s2"][1, 1:] = float("nan")  # padded content is never read, even NaN
    noisy["s1"][1, 1:] = 1e4
    noisy["s2_dates"][1, 1:] = 0
    out2 = model(noisy)
    for key in ("fused", "fused_mm", "s2_aligned", "s1_aligned"):
        assert torch.equal(out[key], out2[key]), key
    assert torch.equal(out["s2"][-1][1, 1:], torch.zeros_like(out["s2"][-1][1, 1:]))
    # The padded sample equals the same sample run alone without padding.
    alone = {k: v[1:2] for k, v in sample.items() if not k.endswith("_mask")}
    alone["s2"], alone["s2_dates"] = alone["s2"][:, :1], alone["s2_dates"][:, :1]
    alone["s1"], alone["s1_dates"] = alone["s1"][:, :1], alone["s1_dates"][:, :1]
    assert torch.allclose(model(alone)["fused"], out["fused"][1:2], atol=1e-5)


@torch.no_grad()
def test_dates_matter(model):
    sample = make_sample()
    shifted = dict(sample, s2_dates=sample["s2_dates"] + 100)
    assert not torch.allclose(model(sample)["fused_mm"], model(shifted)["fused_mm"])


def test_deterministic_under_a_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        m = build_model("tiny").eval()
        with torch.no_grad():
            outs.append(m(make_sample())["fused"])
    assert torch.equal(outs[0], outs[1])


@torch.no_grad()
def test_float64_agrees_with_float32(model):
    m64 = build_model("tiny").double().eval()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    out32 = model(make_sample())["fused"]
    out64 = m64(make_sample(dtype=torch.float64))["fused"]
    assert torch.allclose(out32.double(), out64, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_bf16_autocast_close_to_fp32(model):
    sample = make_sample()
    ref = model(sample)["fused"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(sample)["fused"].float()
    assert torch.isfinite(low).all()
    assert (low - ref).norm() / ref.norm() < 0.05


def test_grad_checkpointing_is_exact():
    torch.manual_seed(0)
    m = build_model("tiny").train()
    for module in m.modules():  # no stochastic depth, so both runs compute the same function
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    grads = []
    for enable in (False, True):
        m.zero_grad()
        m.set_grad_checkpointing(enable)
        m(make_sample())["fused"].square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


@pytest.mark.compile
@pytest.mark.slow
@torch.no_grad()
def test_torch_compile_matches_eager(model):
    sample = make_sample(("hr", "s2"))
    compiled = torch.compile(model)
    assert torch.allclose(compiled(sample)["fused"], model(sample)["fused"], atol=1e-4)


@torch.no_grad()
def test_no_location_gives_zero_geo_context(model):
    sample = make_sample(("s2",))
    del sample["lat"], sample["lon"]
    out = model(sample)
    assert out["region"].tolist() == [-1, -1]
    assert torch.equal(out["fused"][:, model.cfg.fusion.embed_dim :], torch.zeros_like(out["fused"][:, 32:]))


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda s: s.update(s2=s["s2"][:, :, :4]), ValueError, "s2 has 4 bands but the model expects 10"),
        (lambda s: s.update(hr=s["hr"][0]), ValueError, r"hr must have shape \(B, C, H, W\)"),
        (lambda s: s.update(s2=s["s2"][:, 0]), ValueError, r"s2 must have shape \(B, T, C, H, W\)"),
        (lambda s: s.update(s2_dates=s["s2_dates"][:, :2]), ValueError, r"s2_dates must have shape \(B, T\)"),
        (lambda s: s.pop("s1_dates"), ValueError, "s1_dates .* is required"),
        (lambda s: s["hr"].__setitem__((0, 0, 0, 0), float("nan")), ValueError, "hr contains 1 NaN/inf"),
        (lambda s: s.update(sar=s["s1"]), ValueError, "unknown input key"),
        (lambda s: s.update(s2_dates=s["s2_dates"].float()), TypeError, "integer tensor of days"),
        (lambda s: s.update(s2_dates=s["s2_dates"] - to_days(["2020-01-01"])), ValueError, "out of range"),
        (lambda s: s.update(hr=s["hr"].to(torch.uint8)), TypeError, "floating-point"),
        (lambda s: s.update(s1=s["s1"][:1], s1_dates=s["s1_dates"][:1]), ValueError, "batch sizes differ"),
        (lambda s: s.update(lat=torch.tensor([95.0, 0.0])), ValueError, "lat must be in"),
        (lambda s: s.pop("lon"), ValueError, "both 'lat' and 'lon'"),
        (lambda s: s.update(s2_mask=torch.zeros(B, T2)), ValueError, "s2_mask must be a bool tensor"),
        (lambda s: s.update(hr_dates=torch.tensor([200, 201])), ValueError, "hr_dates out of range"),
        (lambda s: s.update(hr_dates=to_days(["2020-01-01"])), ValueError, r"hr_dates must have shape"),
    ],
)
def test_bad_input_is_explained(model, edit, error, match):
    sample = make_sample()
    edit(sample)
    with pytest.raises(error, match=match):
        model(sample)


def test_modality_not_built_is_explained():
    m = build_model("tiny", s1=None)
    with pytest.raises(ValueError, match="has no s1 encoder"):
        m(make_sample())


def test_other_resolution_ratio_resamples_onto_hr_grid(model):
    sample = make_sample(("hr", "s2"))
    sample["hr"] = torch.randn(B, 3, 128, 128)  # stage 4: 4x4, s2 aligned 8x8 -> pooled to 4x4
    with torch.no_grad():
        out = model(sample)
    assert out["s2_aligned"].shape[-2:] == (4, 4) and out["fused"].shape[-2:] == (4, 4)


def test_presets_build_on_meta_and_huge_matches_paper():
    from skysense.info import describe

    report = describe("huge")
    cmp = report["paper_comparison"]
    for part in ("backbones", "fusion"):
        assert abs(cmp[part]["diff_pct"]) < 1.0, (part, cmp[part])
    assert abs(cmp["tokenizers"]["ours_M"] - 0.21) < 0.005  # the paper rounds to 0.01M
    # 4096 regions x 100 prototypes x 512 = 209.7M against the paper's 215M: documented -2.5%.
    assert report["parameters"]["prototypes"] == 4096 * 100 * 512
    for name in ("tiny", "small", "base", "large"):
        counts = describe(name)["parameters"]
        assert counts["total"] == sum(
            counts[k] for k in ("backbones", "fusion_with_alignment", "prototypes", "geo_query")
        )
    assert get_preset("tiny").hr.embed_dim == 16


def test_build_model_leaves_the_callers_config_alone():
    cfg = get_preset("tiny")
    before = cfg.to_dict()
    model = build_model(cfg, s1=None, grad_checkpointing=True)
    assert cfg.to_dict() == before and cfg.s1 is not None and not cfg.grad_checkpointing
    assert model.cfg.s1 is None and model.cfg.grad_checkpointing
    assert model.cfg.hr is not cfg.hr  # no shared sub-config either
    with pytest.raises(ValueError, match="unknown SkySenseConfig field 'depth'"):
        build_model(cfg, depth=3)
