"""Config inference for :mod:`skysense.convert`: the SkySense architecture read from the shapes of
official tensors (spec Sec. 5), checked against a preset or a given config.

Shapes give widths, depths, SwinV2 heads (``logit_scale``), the position-bias MLP width, the extra-norm
interval (``norm3``), band counts, patch sizes, the ViT position grid, the alignment factor and the DTPE
table; the window size comes from the ``relative_*`` buffers when a file carries them. What no shape
reveals (ViT/fusion head counts, LayerNorm eps, cls-token use, the window without buffers) comes from
the preset or config and is listed in ``report.assumed``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import torch
from torch import Tensor

from skysense.config import (
    MODALITIES,
    PRESETS,
    SERIES,
    FusionConfig,
    SkySenseConfig,
    SwinConfig,
    ViTConfig,
    get_preset,
)

UNKNOWN = "unknown: the width is no multiple of 64 (the release's head width)"


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(
            f"the source lacks {key} (official name: see spec Sec. 5), needed to read the config"
        )
    return tuple(int(s) for s in state[key].shape)


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    idx = [int(m.group(1)) for k in state if (m := rx.match(k))]
    return max(idx) + 1 if idx else 0


def _heads(
    width: int, base_width: int | None, base_heads: int | None, field_name: str, assumed: dict[str, str]
) -> int:
    if base_width == width and base_heads is not None:
        assumed[field_name] = f"{base_heads} (the preset's or config's value; not in the weights)"
        return base_heads
    if width % 64:
        assumed[field_name] = UNKNOWN  # an error unless a preset check reports the width first
        return 1
    assumed[field_name] = f"{width // 64} (width / 64, the release's head width; not in the weights)"
    return width // 64


def _infer_swin(
    sd: Mapping[str, Tensor], base: SwinConfig, hints: Mapping[str, Tensor], assumed: dict[str, str]
) -> SwinConfig:
    p = "encoders.hr."
    embed, chans, patch, _ = _shape(sd, p + "patch_embed.projection.weight")
    n_stages = _count(sd, re.escape(p) + r"stages\.(\d+)\.")
    depths = tuple(_count(sd, re.escape(p) + rf"stages\.{s}\.blocks\.(\d+)\.") for s in range(n_stages))
    heads = tuple(_shape(sd, f"{p}stages.{s}.blocks.0.attn.w_msa.logit_scale")[0] for s in range(n_stages))
    blk = f"{p}stages.0.blocks.0."
    cpb = _shape(sd, blk + "attn.w_msa.cpb_mlp.0.weight")[0]
    mlp = _shape(sd, blk + "ffn.layers.0.0.weight")[0] / embed
    extra = sorted(
        int(m.group(1))
        for k in sd
        if (m := re.match(re.escape(p) + r"stages\.\d+\.blocks\.(\d+)\.norm3\.weight$", k))
    )
    if extra:
        every = extra[0] + 1
    elif all(d < base.extra_norm_every for d in depths) or base.extra_norm_every == 0:
        every = base.extra_norm_every
    else:
        every = 0
    window = _buffer_window(hints)
    if window is None:
        window = base.window_size
        assumed["hr.window_size"] = f"{window} (the preset's or config's; no relative_* buffers in the file)"
    assumed["hr.norm_eps"] = f"{base.norm_eps} (official default)"
    return dataclasses.replace(
        base, in_chans=chans, embed_dim=embed, depths=depths, num_heads=heads, window_size=window,
        patch_size=patch, mlp_ratio=mlp, cpb_hidden=cpb, extra_norm_every=every,
    )  # fmt: skip


def _buffer_window(hints: Mapping[str, Tensor]) -> int | None:
    """The window size the SwinV2 ``relative_*`` buffers were made for; every buffer must agree."""
    windows: dict[str, int] = {}
    for k, v in hints.items():
        if k.endswith("relative_coords_table"):  # (1, 2w - 1, 2w - 1, 2)
            windows[k] = (int(v.shape[1]) + 1) // 2 if v.dim() == 4 and v.shape[1] == v.shape[2] else -1
        elif k.endswith("relative_position_index"):  # (w * w, w * w)
            w = round(int(v.shape[0]) ** 0.5) if v.dim() == 2 else -1
            windows[k] = w if w * w == v.shape[0] == v.shape[-1] else -1
    if len(set(windows.values())) > 1 or -1 in windows.values():
        shapes = {k: list(hints[k].shape) for k in list(windows)[:6]}
        raise ValueError(
            f"the hr relative_* buffers do not describe one window size ({sorted(set(windows.values()))}); "
            f"shapes: {shapes}: the file is damaged or mixes models"
        )
    return next(iter(windows.values()), None)


def _infer_vit(
    sd: Mapping[str, Tensor], m: str, base: ViTConfig | None, assumed: dict[str, str]
) -> ViTConfig:
    p = f"encoders.{m}."
    base = base if base is not None else ViTConfig(in_chans=10 if m == "s2" else 2)
    width, chans, patch, _ = _shape(sd, p + "patch_embed.projection.weight")
    tokens = _shape(sd, p + "pos_embed")[1] - 1
    grid = round(tokens**0.5)
    if grid * grid != tokens:
        raise ValueError(f"{p}pos_embed has {tokens} grid tokens (+1 cls): not a square grid")
    depth = _count(sd, re.escape(p) + r"layers\.(\d+)\.")
    mlp = _shape(sd, f"{p}layers.0.ffn.layers.0.0.weight")[0] / width
    heads = _heads(width, base.embed_dim, base.num_heads, f"{m}.num_heads", assumed)
    outs = base.out_indices if depth - 1 in base.out_indices and max(base.out_indices) < depth else ()
    if not outs:
        outs = tuple(sorted({max(0, (i + 1) * depth // 4 - 1) for i in range(4)}))
    assumed[f"{m}.out_indices"] = (
        f"{outs} (layers exposed to dense heads: a usage choice, not in the weights)"
    )
    assumed[f"{m}.norm_eps"] = f"{base.norm_eps} (official default; SkySense++ configs use 1e-6)"
    assumed[f"{m}.with_cls_token"] = f"{base.with_cls_token} (official; SkySense++ configs drop it)"
    return dataclasses.replace(
        base, in_chans=chans, img_size=grid * patch, patch_size=patch, embed_dim=width, depth=depth,
        num_heads=heads, mlp_ratio=mlp, qkv_bias=f"{p}layers.0.attn.attn.in_proj_bias" in sd,
        out_indices=outs,
    )  # fmt: skip


def _infer_fusion(
    sd: Mapping[str, Tensor], base: FusionConfig, in_dim: int, assumed: dict[str, str]
) -> FusionConfig:
    cfg = dataclasses.replace(base, in_dim=in_dim, dtpe_modalities=("s2",), dtpe_calendar="doy")
    if "fusion.dtpe" in sd:
        days, dim = _shape(sd, "fusion.dtpe")[1:]
        cfg = dataclasses.replace(cfg, use_dtpe=True, dtpe_days=days, in_dim=dim)
    else:
        cfg = dataclasses.replace(cfg, use_dtpe=False)
    if "fusion.porj_linear.weight" not in sd:
        return cfg
    width, dim = _shape(sd, "fusion.porj_linear.weight")
    depth = _count(sd, r"fusion\.layers\.(\d+)\.")
    mlp = _shape(sd, "fusion.layers.0.ffn.layers.0.0.weight")[0] / width if depth else base.mlp_ratio
    heads = _heads(width, base.embed_dim, base.num_heads, "fusion.num_heads", assumed)
    return dataclasses.replace(cfg, in_dim=dim, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp)


def infer_config(
    state: Mapping[str, Tensor],
    base: SkySenseConfig,
    hints: Mapping[str, Tensor] | None = None,
    assumed: dict[str, str] | None = None,
    geo: bool = True,
    check_heads: bool = True,
) -> SkySenseConfig:
    """The SkySense config of our-keyed ``state``; what the shapes do not fix comes from ``base``.

    ``check_heads``: raise when a head count can be neither taken from ``base`` (same width) nor
    derived as width / 64.
    """
    assumed = assumed if assumed is not None else {}
    hints = hints or {}
    has = {m: any(k.startswith(f"encoders.{m}.") for k in state) for m in MODALITIES}
    if not any(has.values()):
        raise ValueError("the sources hold no backbone (hr, s2 or s1): nothing to build an encoder from")
    hr = _infer_swin(state, base.hr or SwinConfig(), hints, assumed) if has["hr"] else None
    s2 = _infer_vit(state, "s2", base.s2, assumed) if has["s2"] else None
    s1 = _infer_vit(state, "s1", base.s1, assumed) if has["s1"] else None
    in_dim = hr.out_channels[-1] if hr is not None else base.fusion.in_dim
    fusion = _infer_fusion(state, base.fusion, in_dim, assumed)
    if not has["hr"]:  # the fused grid width then comes from the fusion or the alignment heads
        for m in SERIES:
            key = f"align.{m}.decoder.0.weight"
            vit = s2 if m == "s2" else s1
            if key in state and vit is not None and "fusion.porj_linear.weight" not in state:
                fusion = dataclasses.replace(fusion, in_dim=_shape(state, key)[0] // vit.patch_size**2)
    if check_heads:
        check_head_counts(assumed)
    return dataclasses.replace(
        base, hr=hr, s2=s2, s1=s1, fusion=fusion, geo=base.geo if geo else None, grad_checkpointing=False
    )


def check_head_counts(assumed: Mapping[str, str]) -> None:
    unknown = [k for k, v in assumed.items() if v == UNKNOWN]
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: the weights do not hold the number of attention heads and the width is "
            "no multiple of 64 (the release's head width); give the architecture with --config model.yaml "
            "(config=...) or --preset"
        )


ARCH_SKIP = {"drop_path", "use_dtpe", "dtpe_modalities", "dtpe_calendar", "name"}


def mismatches(cfg: SkySenseConfig, ref: SkySenseConfig, label: str = "preset") -> list[str]:
    """The architecture fields where ``cfg`` (read from the weights) differs from ``ref``; only the parts
    both build are compared, and hr may have gained bands."""
    bad = []
    for part in ("hr", "s2", "s1", "fusion"):
        ours, theirs = getattr(cfg, part), getattr(ref, part)
        if ours is None or theirs is None:
            continue
        for f in dataclasses.fields(ours):
            a, b = getattr(ours, f.name), getattr(theirs, f.name)
            if f.name not in ARCH_SKIP and a != b and not (part == "hr" and f.name == "in_chans"):
                bad.append(f"{part}.{f.name}: {label} {b}, source {a}")
    return bad


def match_preset(
    state: Mapping[str, Tensor], hints: Mapping[str, Tensor], assumed: dict[str, str], geo: bool
) -> tuple[str, SkySenseConfig]:
    """The preset whose architecture the tensors have; none matching is an error that names the closest
    preset, what differs and the tensors of that preset the sources lack (an incomplete file)."""
    tried = []
    for name in PRESETS:
        base = get_preset(name)
        trial: dict[str, str] = {}
        cfg = infer_config(state, base, hints, trial, geo=geo, check_heads=False)
        bad = mismatches(cfg, base)
        if not bad:
            assumed.update(trial)
            return name, cfg
        tried.append((len(bad), name, bad, cfg))
    _, name, bad, cfg = min(tried, key=lambda t: t[0])
    closest = get_preset(name)  # with the parts the sources hold
    closest.hr, closest.s2, closest.s1 = (
        getattr(closest, m) if getattr(cfg, m) else None for m in MODALITIES
    )
    closest.fusion.use_dtpe = cfg.fusion.use_dtpe
    held = {part_of(k) for k in state}
    lacking = [k for k in missing_keys(closest, state) if part_of(k) in held]
    raise ValueError(
        f"the weights match no preset; closest {name!r} differs in {'; '.join(bad[:6])}. Tensors of "
        f"{name!r} the sources lack ({len(lacking)}): {lacking[:12]}{' ...' if len(lacking) > 12 else ''}. "
        "An incomplete file reads as another architecture: if the files are complete and the size is "
        "intended, describe it with --config model.yaml (config=...), or name it with --preset"
    )


def part_of(key: str) -> str:
    """The official part an our-keyed tensor came from (for the report)."""
    if key == "fusion.dtpe":
        return "ctpe"
    top, sub = key.split(".")[:2]
    return sub if top == "encoders" else f"head_{sub}" if top == "align" else top


def missing_keys(cfg: SkySenseConfig, state: Mapping[str, Tensor]) -> list[str]:
    """Keys of the model built from ``cfg`` (on the meta device) that ``state`` lacks."""
    from skysense.models.skysense import SkySense

    with torch.device("meta"):
        keys = list(SkySense(cfg).state_dict())
    return [k for k in keys if k not in state]
