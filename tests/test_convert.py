"""Import of official-format SkySense checkpoints (spec Sec. 5): mapping, config inference, errors,
RGB-NIR expansion, the huge key list on the meta device, and independent references (spec Sec. 6)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skysense
from skysense.checkpoint import LoadReport, UnsafeCheckpointError, load_state_checked
from skysense.checkpoint_cli import add_commands
from skysense.config import SkySenseConfig, get_preset
from skysense.convert import convert_official, convert_state_dicts, expand_hr_bands
from skysense.dates import to_days
from skysense.models.skysense import SkySense
from skysense.pretrained import load_pretrained
from tests.conftest import randomise

REPO = Path(__file__).resolve().parents[1]
FILES = {  # released file name -> (our key prefix, official full-checkpoint prefix)
    "skysense_model_backbone_hr.pth": ("encoders.hr.", "backbone_gep."),
    "skysense_model_backbone_s2.pth": ("encoders.s2.", "backbone_s2."),
    "skysense_model_backbone_s1.pth": ("encoders.s1.", "backbone_s1."),
    "skysense_model_head_s2.pth": ("align.s2.", "head_s2."),
    "skysense_model_head_s1.pth": ("align.s1.", "head_s1."),
    "skysense_model_fusion.pth": ("fusion.", "fusion."),
}
HR_PX, S_PX = 128, 4  # tiny: hr stage 4 -> 4x4; s2/s1 patch 2 -> 2x2 tokens -> 4x4 aligned (no resampling)


def source_model(cfg: SkySenseConfig | None = None, seed: int = 0) -> SkySense:
    """A model with every parameter randomised (a wrong mapping shows); DTPE on s2 by day of year."""
    torch.manual_seed(seed)
    cfg = cfg if cfg is not None else get_preset("tiny")
    cfg.fusion.dtpe_modalities = ("s2",)
    cfg.fusion.dtpe_calendar = "doy"
    model = SkySense(cfg).eval()
    randomise(model)
    return model


def official_files(model: SkySense, buffers: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """Our model's tensors named as the six released files name them (module-local keys)."""
    sd = model.state_dict()
    out = {}
    for name, (ours, _) in FILES.items():
        part = {k[len(ours) :]: v.clone() for k, v in sd.items() if k.startswith(ours) and k != "fusion.dtpe"}
        out[name] = part
    hr = out["skysense_model_backbone_hr.pth"]
    hr["mask_token"] = torch.zeros(1, 1, model.cfg.hr.embed_dim)
    if buffers:
        for n, b in model.encoders["hr"].named_buffers():
            if n.endswith(("relative_coords_table", "relative_position_index")):
                hr[n] = b.clone()
    for m in ("hr", "s2", "s1"):  # the official converter keeps ctpe in every backbone file
        out[f"skysense_model_backbone_{m}.pth"]["ctpe"] = sd["fusion.dtpe"].clone()
    return out


def full_checkpoint(files: dict[str, dict[str, torch.Tensor]]) -> dict:
    model = {}
    for name, part in files.items():
        prefix = FILES[name][1]
        model.update({(k if k == "ctpe" else prefix + k): v for k, v in part.items()})
    model["head_gep.proj.weight"] = torch.zeros(4, 4)  # another head of the full checkpoint
    return {"model": model, "meta": {"epoch": 3, "note": "pre-training"}}


def layout(name: str, part: dict[str, torch.Tensor], how: str) -> dict:
    """One file as the release might hold it: bare, prefixed, wrapped, mmseg or DDP style."""
    prefix = next(p for n, (_, p) in FILES.items() if n == name)
    if how == "prefixed":
        return {(k if k == "ctpe" else prefix + k): v for k, v in part.items()}
    if how == "state_dict":
        return {"state_dict": part, "meta": {"mmcv_version": "1.7.0"}}
    if how == "model":
        return {"model": part}
    if how == "mmseg" and "backbone" in name:
        return {"state_dict": {(k if k == "ctpe" else "backbone." + k): v for k, v in part.items()}}
    if how == "ddp":
        return {"module." + k: v for k, v in part.items()}
    return part


def make_sample(cfg: SkySenseConfig, b: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    days = to_days(["2021-01-05", "2020-03-01", "2021-07-14", "2020-12-30"])  # leap-year dates shift
    return {
        "hr": torch.randn(b, cfg.hr.in_chans, HR_PX, HR_PX, generator=g),
        "s2": torch.randn(b, 3, 10, S_PX, S_PX, generator=g),
        "s2_dates": days[torch.randint(0, 4, (b, 3), generator=g)],
        "s1": torch.randn(b, 2, 2, S_PX, S_PX, generator=g),
        "s1_dates": days[torch.randint(0, 4, (b, 2), generator=g)],
    }


def build(conv_state: dict, cfg: SkySenseConfig, allow=("geo",)) -> SkySense:
    model = SkySense(cfg).eval()
    load_state_checked(model, conv_state, LoadReport(), allow_missing=allow)
    return model


def assert_same_function(a: SkySense, b: SkySense, sample: dict) -> None:
    with torch.no_grad():
        oa, ob = a(sample), b(sample)
    for key in ("fused_mm", "s2_aligned", "s1_aligned"):
        assert torch.equal(oa[key], ob[key]), key
    for key in ("hr", "s2", "s1"):
        assert all(torch.equal(x, y) for x, y in zip(oa[key], ob[key])), key


def write_files(tmp_path: Path, files: dict, how: str = "bare") -> list[str]:
    paths = []
    for name, part in files.items():
        torch.save(layout(name, part, how), tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths


# ------------------------------------------------------------------------------------------ mapping
@pytest.mark.parametrize("how", ["bare", "prefixed", "state_dict", "model", "mmseg", "ddp"])
def test_six_files_convert_and_compute_the_same_function_bit_exactly(tmp_path, how):
    src = source_model()
    paths = write_files(tmp_path, official_files(src), how)
    conv = convert_official(paths, preset="tiny")
    rep = conv.report
    assert conv.config.fusion.dtpe_modalities == ("s2",) and conv.config.hr.window_size == 4
    assert set(rep.initialised) == {"geo.prototypes", "geo.query.weight", "geo.query.bias"}
    pre = {"prefixed": "backbone_gep.", "mmseg": "backbone."}.get(how, "")
    assert f"skysense_model_backbone_hr.pth:{pre}mask_token" in rep.ignored
    n_buffers = sum(1 for k in rep.ignored if "relative_" in k)
    assert n_buffers == 2 * sum(conv.config.hr.depths)
    assert rep.loaded["fusion.dtpe"].endswith(":ctpe")
    copies = {k for k, why in rep.ignored.items() if "equal copy" in why}
    assert {k.split(":")[0] for k in copies} == {f"skysense_model_backbone_{m}.pth" for m in ("s2", "s1")}
    expected = {k for k in src.state_dict() if not k.startswith("geo.")}
    assert set(conv.state) == expected == set(rep.loaded)
    assert [s["file"] for s in rep.sources] == list(FILES) and all(
        len(s["sha256"]) == 64 for s in rep.sources
    )
    ref = src.state_dict()
    assert all(torch.equal(conv.state[k], ref[k]) for k in expected)
    if how in ("bare", "prefixed"):  # the same tensors give the same function; run it twice, not six times
        assert_same_function(src, build(conv.state, conv.config), make_sample(src.cfg, b=1))


def test_full_checkpoint_converts_with_every_extra_key_reported(tmp_path):
    src = source_model()
    torch.save(full_checkpoint(official_files(src)), tmp_path / "skysense_full.pth")
    conv = convert_official([tmp_path / "skysense_full.pth"], preset="tiny")
    ignored = conv.report.ignored
    assert "skysense_full.pth:backbone_gep.mask_token" in ignored
    assert "not part of the released encoder" in ignored["skysense_full.pth:head_gep.proj.weight"]
    assert "skysense_full.pth:meta" in ignored
    model = build(conv.state, conv.config)
    assert_same_function(src, model, make_sample(src.cfg, b=1))
    # load_pretrained reads it too, but only when the missing geo-context is explicitly accepted
    with pytest.raises(ValueError, match=r"allow_missing=\('geo',\)"):
        load_pretrained(tmp_path / "skysense_full.pth", preset="tiny")
    model2, meta, report = load_pretrained(
        tmp_path / "skysense_full.pth", preset="tiny", allow_missing=("geo",)
    )
    assert meta.license and report.initialised == ["geo.prototypes", "geo.query.weight", "geo.query.bias"]
    model3, meta3, _ = load_pretrained(tmp_path / "skysense_full.pth", preset="tiny", geo=False)
    assert meta3.config.geo is None and model3.geo is None


def custom_config() -> SkySenseConfig:
    """A size no preset has, with head counts other than width / 64 (heads are not in the weights)."""
    cfg = get_preset("tiny")
    for vit in (cfg.s2, cfg.s1):
        vit.embed_dim, vit.num_heads, vit.depth, vit.out_indices = 64, 4, 3, (1, 2)
    cfg.fusion.embed_dim, cfg.fusion.num_heads, cfg.fusion.depth = 64, 2, 1
    return cfg


def test_preset_is_recognised_from_shapes_without_being_named():
    src = source_model()
    conv = convert_state_dicts(list(official_files(src).items()))
    assert conv.config.name == "official-tiny" and conv.config.s2.num_heads == 2
    assert conv.config.hr == src.cfg.hr and conv.config.s2 == src.cfg.s2
    # without the relative_* buffers the window size is not in the file: taken from the preset, reported
    conv = convert_state_dicts(list(official_files(src, buffers=False).items()))
    assert "hr.window_size" in conv.report.assumed and conv.config.hr.window_size == 4


def test_non_preset_sizes_convert_exactly_with_a_model_config(tmp_path):
    src = source_model(custom_config())
    items = list(official_files(src).items())
    with pytest.raises(ValueError, match=r"match no preset; closest 'tiny' differs in s2\.embed_dim"):
        convert_state_dicts(items)
    (tmp_path / "model.yaml").write_text(
        "s2: {embed_dim: 64, depth: 3, num_heads: 4, out_indices: [1, 2], img_size: 16, patch_size: 2}\n"
        "s1: {in_chans: 2, embed_dim: 64, depth: 3, num_heads: 4, out_indices: [1, 2], img_size: 16, "
        "patch_size: 2}\n"
        "hr: {embed_dim: 16, depths: [1, 1, 3, 1], num_heads: [1, 2, 2, 4], window_size: 4, "
        "extra_norm_every: 3}\n"
        "fusion: {in_dim: 128, embed_dim: 64, depth: 1, num_heads: 2}\n"
        "geo: null\n"
    )
    for config in (src.cfg, tmp_path / "model.yaml", str(tmp_path / "model.yaml")):
        conv = convert_state_dicts(items, config=config, geo=False)
        got = conv.config
        assert (got.s2.num_heads, got.s1.num_heads, got.fusion.num_heads) == (4, 4, 2)
        assert got.hr == src.cfg.hr and got.s2 == src.cfg.s2 and got.s1 == src.cfg.s1
    # exact: the converted model computes the source's function (heads of width 64 / 64 = 1 would not)
    assert_same_function(src, build(conv.state, conv.config, allow=()), make_sample(src.cfg, b=1))
    loaded = load_pretrained(write_files(tmp_path, official_files(src)), config=src.cfg, geo=False)
    assert loaded.model.cfg.fusion.num_heads == 2 and loaded.report.initialised == []
    # a config the weights do not fit is refused, naming the field
    wrong = custom_config()
    wrong.s2.depth = 4
    with pytest.raises(ValueError, match=r"do not match the config .*s2\.depth: config 4, source 3"):
        convert_state_dicts(items, config=wrong)
    with pytest.raises(ValueError, match="not both"):
        convert_state_dicts(items, config=wrong, preset="tiny")
    (tmp_path / "bad.yaml").write_text("s2: {widht: 64}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not a SkySense model config: unknown ViTConfig key"):
        convert_state_dicts(items, config=tmp_path / "bad.yaml")


def test_partial_sources_build_the_given_modalities(tmp_path):
    src = source_model()
    files = official_files(src)
    names = ["skysense_model_backbone_s2.pth", "skysense_model_head_s2.pth"]
    conv = convert_state_dicts([(n, files[n]) for n in names], preset="tiny")
    assert conv.config.modalities == ("s2",) and conv.config.fusion.use_dtpe
    assert any(k.startswith("fusion.layers") for k in conv.report.initialised)
    with pytest.raises(ValueError, match="fusion"):
        build(conv.state, conv.config, allow=("geo",))
    build(conv.state, conv.config, allow=("geo", "fusion"))


# ------------------------------------------------------------------------------------------ errors
def test_mismatches_are_clear_errors():
    src = source_model()
    files = official_files(src)
    items = list(files.items())
    with pytest.raises(ValueError, match=r"preset 'small'.*hr\.embed_dim: preset 96, source 16"):
        convert_state_dicts(items, preset="small")

    bad = {k: dict(v) for k, v in files.items()}
    bad["skysense_model_backbone_s1.pth"]["layers.1.ln1.weight"] = torch.zeros(31)
    with pytest.raises(ValueError, match=r"layers\.1\.ln1\.weight.*expected \[32\], found \[31\]"):
        convert_state_dicts(list(bad.items()), preset="tiny")

    bad = {k: dict(v) for k, v in files.items()}
    bad["skysense_model_fusion.pth"]["layers.0.attn.attn.bias_k"] = torch.zeros(32)
    with pytest.raises(ValueError, match=r"no place in the model.*fusion\.pth:layers\.0\.attn\.attn\.bias_k"):
        convert_state_dicts(list(bad.items()), preset="tiny")

    swapped = [("skysense_model_backbone_hr.pth", files["skysense_model_backbone_s2.pth"])]
    with pytest.raises(ValueError, match="file name says hr"):
        convert_state_dicts(swapped, preset="tiny")

    other = full_checkpoint(official_files(source_model(seed=1)))  # another model's weights
    with pytest.raises(
        ValueError, match=r"different values: skysense_model_backbone_hr\.pth:\S+ and full\.pth:"
    ):
        convert_state_dicts([*items, ("full.pth", other)], preset="tiny")

    head = [("my_head.pth", files["skysense_model_head_s1.pth"])]
    with pytest.raises(ValueError, match="head_s2=PATH"):
        convert_state_dicts(head, preset="tiny")

    with pytest.raises(ValueError, match="no backbone"):
        convert_state_dicts(
            [("skysense_model_fusion.pth", files["skysense_model_fusion.pth"])], preset="tiny"
        )

    with pytest.raises(ValueError, match="not tensors"):
        convert_state_dicts([("x_fusion.pth", {"epoch": 3})], preset="tiny")


def test_part_can_be_named_explicitly(tmp_path):
    src = source_model()
    files = official_files(src)
    torch.save(files["skysense_model_head_s1.pth"], tmp_path / "weights_a.pth")
    torch.save(files["skysense_model_backbone_s1.pth"], tmp_path / "weights_b.pth")
    conv = convert_official(
        [f"head_s1={tmp_path / 'weights_a.pth'}", tmp_path / "weights_b.pth"], preset="tiny"
    )
    assert conv.config.modalities == ("s1",) and "align.s1.decoder.0.weight" in conv.state


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_code_payload_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "skysense_model_backbone_hr.pth"
    torch.save({"patch_embed.projection.weight": torch.zeros(1), "x": Payload()}, evil)
    with pytest.raises(UnsafeCheckpointError, match="NOT loaded"):
        convert_official([evil])
    with pytest.raises(UnsafeCheckpointError):
        load_pretrained(evil)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ RGB-NIR
def test_rgb_nir_expansion_copies_the_red_band():
    src = source_model()
    conv = convert_state_dicts(list(official_files(src).items()), preset="tiny", hr_bands=4)
    w = conv.state["encoders.hr.patch_embed.projection.weight"]
    assert w.shape[1] == 4 and torch.equal(w[:, 3], w[:, 0]) and conv.config.hr.in_chans == 4
    assert conv.meta.modalities["hr"].bands == ("R", "G", "B", "NIR")
    model = build(conv.state, conv.config)
    x = make_sample(src.cfg)["hr"]
    with torch.no_grad():
        nir0 = model.encoders["hr"](torch.cat([x, torch.zeros_like(x[:, :1])], 1))
        nir_red = model.encoders["hr"](torch.cat([x[:, :1] * 0.5, x[:, 1:], x[:, :1] * 0.5], 1))
        ref = src.encoders["hr"](x)
    for a, b, r in zip(nir0, nir_red, ref):  # NIR = 0 changes nothing; NIR and R share the red weights
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b, r, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="3 \\(RGB\\) or 4"):
        expand_hr_bands(dict(conv.state), 5)
    with pytest.raises(ValueError, match="cannot shrink"):
        expand_hr_bands(dict(conv.state), 3)


# ------------------------------------------------------------------------------------------ huge key list
def official_keys_file() -> Path | None:
    for p in (
        REPO / "tests" / "data" / "official_keys.txt",
        REPO.parent / "shared" / "docs" / "official_keys.txt",
    ):
        if p.is_file():
            return p
    return None


@pytest.mark.data
@pytest.mark.skipif(official_keys_file() is None, reason="official_keys.txt not available")
def test_every_official_huge_key_is_mapped_or_ignored_on_the_meta_device():
    prefixes = {"hr_swinv2": "backbone_gep.", "s2_vit": "backbone_s2.", "s1_vit": "backbone_s1.",
                "fusion": "fusion.", "head_s2": "head_s2.", "head_s1": "head_s1.", "extra": ""}  # fmt: skip
    full = {}
    for line in official_keys_file().read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        part, key, shape, _, _ = line.split("\t")
        full[prefixes[part] + key] = torch.empty(json.loads(shape), device="meta")
    assert len(full) == 483 + 292 + 292 + 291 + 2 + 2 + 2
    conv = convert_state_dicts([("skysense_full.pth", {"model": full})])
    rep = conv.report
    assert len(rep.loaded) + len(rep.ignored) == len(full)
    assert {k.split(":", 1)[1] for k in rep.ignored} == {"backbone_gep.mask_token"} | {
        k for k in full if "relative_" in k
    }
    assert rep.initialised == ["geo.prototypes", "geo.query.weight", "geo.query.bias"]
    huge = get_preset("huge")
    for part in ("hr", "s2", "s1"):
        assert getattr(conv.config, part) == getattr(huge, part), part
    assert conv.config.fusion == type(huge.fusion)(
        **{**vars(huge.fusion), "dtpe_modalities": ("s2",), "dtpe_calendar": "doy"}
    )
    assert conv.config.hr.window_size == 8 and conv.config.hr.extra_norm_every == 6
    # and with --preset huge nothing disagrees
    convert_state_dicts([("skysense_full.pth", {"model": full})], preset="huge")


# ------------------------------------------------------------------------------------------ references
def mha_layer(x: torch.Tensor, sd: dict, p: str, heads: int) -> torch.Tensor:
    """One mmcv pre-norm layer with torch's own nn.MultiheadAttention (exact GELU, eps 1e-5)."""
    d = x.shape[-1]
    mha = nn.MultiheadAttention(d, heads, batch_first=True)
    mha.load_state_dict(
        {k[len(p + "attn.attn.") :]: v for k, v in sd.items() if k.startswith(p + "attn.attn.")}
    )
    y = F.layer_norm(x, (d,), sd[p + "ln1.weight"], sd[p + "ln1.bias"], 1e-5)
    x = x + mha(y, y, y, need_weights=False)[0]
    y = F.layer_norm(x, (d,), sd[p + "ln2.weight"], sd[p + "ln2.bias"], 1e-5)
    hidden = F.gelu(F.linear(y, sd[p + "ffn.layers.0.0.weight"], sd[p + "ffn.layers.0.0.bias"]))
    return x + F.linear(hidden, sd[p + "ffn.layers.1.weight"], sd[p + "ffn.layers.1.bias"])


def ref_vit(sd: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """mmseg ViT (spec Sec. 6) from the official keys: last layer's map without the cls token."""
    w = sd["patch_embed.projection.weight"]
    x = F.conv2d(x, w, sd["patch_embed.projection.bias"], stride=w.shape[-1])
    n, d, h, wd = x.shape
    x = torch.cat([sd["cls_token"].expand(n, -1, -1), x.flatten(2).transpose(1, 2)], 1)
    pos = sd["pos_embed"]
    g = round((pos.shape[1] - 1) ** 0.5)
    grid = pos[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, wd), mode="bicubic", align_corners=False)
    x = x + torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], 1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    for i in range(depth):
        x = mha_layer(x, sd, f"layers.{i}.", heads)
    return x[:, 1:].transpose(1, 2).reshape(n, d, h, wd)


def ref_fusion(sd: dict, ctpe: torch.Tensor, hr, s2, s1, s2_doy, heads: int) -> torch.Tensor:
    """The fusion of the reference pipeline: ctpe[doy - 1] on s2 tokens, porj_linear, cls, layers."""
    s2 = s2 + ctpe[0, s2_doy - 1][..., None, None]
    ft = torch.cat([hr[:, None], s2, s1], 1)  # (B, L, C, h, w)
    b, l, c, h, w = ft.shape
    x = F.linear(
        ft.permute(0, 3, 4, 1, 2).reshape(b * h * w, l, c), sd["porj_linear.weight"], sd["porj_linear.bias"]
    )
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], 1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    for i in range(depth):
        x = mha_layer(x, sd, f"layers.{i}.", heads)
    return x[:, 0].reshape(b, h, w, -1).permute(0, 3, 1, 2)


def align(sd: dict, x: torch.Tensor, r: int) -> torch.Tensor:
    return F.pixel_shuffle(F.conv2d(x, sd["decoder.0.weight"], sd["decoder.0.bias"]), r)


@torch.no_grad()
def test_converted_model_matches_independent_references_of_vit_and_fusion():
    src = source_model(seed=3)
    files = official_files(src)
    conv = convert_state_dicts(list(files.items()), preset="tiny")
    model = build(conv.state, conv.config)
    sample = make_sample(conv.config)
    out = model(sample)
    cfg = conv.config
    feats = {}
    for m in ("s2", "s1"):
        sd = files[f"skysense_model_backbone_{m}.pth"]
        x = sample[m]
        b, t = x.shape[:2]
        vit = ref_vit(sd, x.flatten(0, 1), getattr(cfg, m).num_heads)  # pos_embed 8x8 -> 2x2 (bicubic)
        torch.testing.assert_close(out[m][-1].flatten(0, 1), vit, atol=1e-5, rtol=1e-4)
        big = torch.randn(2, x.shape[2], 16, 16)  # the size the position embedding was learnt at
        torch.testing.assert_close(model.encoders[m](big)[-1], ref_vit(sd, big, 2), atol=1e-5, rtol=1e-4)
        feats[m] = align(files[f"skysense_model_head_{m}.pth"], vit, cfg.s2.patch_size).unflatten(0, (b, t))
    epoch = dt.date(1970, 1, 1)
    doy = torch.tensor(
        [[(epoch + dt.timedelta(int(v))).timetuple().tm_yday for v in row] for row in sample["s2_dates"]]
    )
    ref = ref_fusion(
        files["skysense_model_fusion.pth"], files["skysense_model_backbone_s2.pth"]["ctpe"],
        out["hr"][-1], feats["s2"], feats["s1"], doy, cfg.fusion.num_heads,
    )  # fmt: skip
    torch.testing.assert_close(out["fused_mm"], ref, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ CLI
def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="skysense")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_convert_writes_a_loadable_checkpoint(tmp_path, capsys):
    src = source_model()
    write_files(tmp_path, official_files(src), "prefixed")
    out = tmp_path / "out" / "skysense_tiny.safetensors"
    assert run_cli(["convert", str(tmp_path), "--out", str(out), "--preset", "tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["loaded"] == len(src.state_dict()) - 3 and report["counts"]["initialised"] == 3
    assert report["counts"]["ignored"] == 1 + 2 * sum(src.cfg.hr.depths) + 2  # + 2 equal ctpe copies
    model, meta, rep = load_pretrained(out, allow_missing=("geo",), check_inputs=False)
    assert [s["file"] for s in meta.sources] == sorted(FILES) and meta.config.fusion.dtpe_modalities == (
        "s2",
    )
    assert rep.initialised == ["geo.prototypes", "geo.query.weight", "geo.query.bias"]
    assert_same_function(src, model, make_sample(src.cfg, b=1))

    assert run_cli(["convert", str(tmp_path), "--out", str(tmp_path / "nogeo.safetensors"), "--no-geo",
                    "--preset", "tiny"]) == 0  # fmt: skip
    assert "loaded" in capsys.readouterr().out
    model, meta, rep = load_pretrained(tmp_path / "nogeo.safetensors")  # strict: nothing missing
    assert model.geo is None and rep.initialised == []
    nir = tmp_path / "nir.safetensors"
    assert run_cli(["convert", str(tmp_path), "--out", str(nir), "--hr-bands", "4", "--preset", "tiny"]) == 0
    capsys.readouterr()
    model, meta, _ = skysense.load_pretrained(nir, allow_missing=("geo",))
    assert meta.modalities["hr"].bands == ("R", "G", "B", "NIR") and model.cfg.hr.in_chans == 4
    with pytest.raises(FileNotFoundError):
        run_cli(["convert", str(tmp_path / "nope.pth"), "--out", str(out)])
