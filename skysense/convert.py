"""Import of the official SkySense weights (spec Sec. 5) into our modules, with a full report.

Sources: the six released files (``skysense_model_backbone_hr.pth``, ``..._backbone_s2.pth``,
``..._backbone_s1.pth``, ``..._head_s2.pth``, ``..._head_s1.pth``, ``..._fusion.pth``) and/or a full
checkpoint (``torch.load(p)["model"]`` with ``backbone_gep.*``, ``backbone_s2.*``, ...). A file may
hold a bare state dict or one wrapped in ``state_dict``/``model``, with or without the module
prefix (or mmseg's ``backbone.``, or DDP's ``module.``). The part a file holds is read from its
name (``backbone_hr``, ``head_s1``, ...) and from its keys, and both must agree; ``PART=PATH``
(``hr=``, ``s2=``, ``s1=``, ``head_s2=``, ``head_s1=``, ``fusion=``) names it explicitly.

Mapping (official -> ours; our parameter names equal the official module-local names)::

    backbone_gep.* / backbone_hr.*  -> encoders.hr.*
    backbone_s2.*, backbone_s1.*    -> encoders.s2.*, encoders.s1.*
    head_s2.decoder.0.*             -> align.s2.decoder.0.*   (head_s1 likewise)
    fusion.*                        -> fusion.*
    ctpe                            -> fusion.dtpe            (the DTPE table)

Ignored, each listed in the report with its reason: ``mask_token`` (pre-training only), the
SwinV2 ``relative_coords_table``/``relative_position_index`` buffers (recomputed from the window
size), other ``head*`` modules of the full checkpoint and mmseg/mmdet task heads (not part of the
encoder), and non-weight checkpoint entries (``meta``, ``optimizer``, ...). Any other key is an
error that lists it.

The config is read from the tensors' shapes: widths, depths, SwinV2 heads (``logit_scale``),
position-bias MLP width, extra-norm interval (``norm3``), band counts, patch sizes, the ViT
position grid, the alignment factor, the DTPE table. The window size is read from the recomputed
buffers when a file carries them. What no shape reveals (ViT/fusion head counts, LayerNorm eps,
cls-token use, the window without buffers) comes from ``preset`` (default: ``huge``'s values;
ViT/fusion heads default to width / 64, the release's head width) and is listed in
``report.assumed``. With ``preset``, every inferred value must equal the preset's.

Semantics: the reference pipeline added DTPE to the ``s2`` tokens only, so converted configs set
``fusion.dtpe_modalities = ("s2",)`` and compute the official function. The release has no
geo-context: with ``geo=True`` the config keeps the preset's geo-context and its prototypes are
reported as initialised (``load_pretrained`` then needs ``allow_missing=("geo",)``); with
``geo=False`` the config has ``geo=None``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from skysense.checkpoint import OFFICIAL_LICENSE, CheckpointMeta, LoadReport, default_meta
from skysense.config import (
    MODALITIES,
    SERIES,
    FusionConfig,
    SkySenseConfig,
    SwinConfig,
    ViTConfig,
    get_preset,
)
from skysense.files import safe_torch_load, sha256_file

PARTS: tuple[str, ...] = ("hr", "s2", "s1", "head_s2", "head_s1", "fusion")
# official module prefix -> part
PREFIXES: dict[str, str] = {
    "backbone_gep.": "hr",
    "backbone_hr.": "hr",
    "backbone_s2.": "s2",
    "backbone_s1.": "s1",
    "head_s2.": "head_s2",
    "head_s1.": "head_s1",
    "fusion.": "fusion",
}
# part -> our key prefix
TARGET: dict[str, str] = {
    "hr": "encoders.hr.",
    "s2": "encoders.s2.",
    "s1": "encoders.s1.",
    "head_s2": "align.s2.",
    "head_s1": "align.s1.",
    "fusion": "fusion.",
}
KIND: dict[str, str] = {
    "hr": "swin",
    "s2": "vit",
    "s1": "vit",
    "head_s2": "head",
    "head_s1": "head",
    "fusion": "fusion",
}
_FILE_PART = re.compile(
    r"(backbone_hr|backbone_gep|backbone_s2|backbone_s1|head_s2|head_s1|fusion)(?![a-z0-9])"
)
_FILE_NAMES = {"backbone_hr": "hr", "backbone_gep": "hr", "backbone_s2": "s2", "backbone_s1": "s1"}
TASK_HEADS = ("decode_head.", "auxiliary_head.", "neck.", "rpn_head.", "roi_head.")
IGNORE_LOCAL = {
    "mask_token": "mask token of masked pre-training, unused by the encoder",
    "relative_coords_table": "fixed SwinV2 buffer, recomputed from the window size",
    "relative_position_index": "fixed SwinV2 buffer, recomputed from the window size",
}
UNKNOWN = "unknown: the width is no multiple of 64 (the release's head width)"
SKIP_HEAD = "a head of the pre-training/downstream stack, not part of the released encoder"
SKIP_TASK = "a downstream task head (mmseg/mmdet), not part of the encoder"


@dataclass
class Converted:
    """A converted checkpoint: config, our-keyed tensors, metadata and the report."""

    config: SkySenseConfig
    state: dict[str, Tensor]
    meta: CheckpointMeta
    report: LoadReport


# ---------------------------------------------------------------------------------- reading sources
def _unwrap(obj: Any, where: str, report: LoadReport) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint: bare, or under ``state_dict``/``model``."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            raise ValueError(
                f"{where}: expected a state dict (a dict of tensors), found {type(obj).__name__}"
            )
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        if {"student", "teacher", "config"} <= set(obj):
            raise ValueError(
                f"{where}: a skysense pre-training checkpoint, not official weights: export its encoder "
                f"first (skysense export {where} --out encoder.safetensors), then load that file"
            )
        inner = next((k for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))[:10]
            raise ValueError(f"{where}: no state dict found: entries {bad} are not tensors")
        for k in obj:
            if k != inner:
                report.ignored[f"{where}:{k}"] = "checkpoint entry that is not part of the weights"
        obj = obj[inner]
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _file_part(name: str) -> str | None:
    found = {_FILE_NAMES.get(m, m) for m in _FILE_PART.findall(Path(name).stem.lower())}
    return found.pop() if len(found) == 1 else None


def _kind(keys: Sequence[str]) -> str | None:
    """swin / vit / fusion / head from module-local key names."""
    ks = set(keys)
    if any(k.startswith("stages.") for k in ks):
        return "swin"
    if "porj_linear.weight" in ks:
        return "fusion"
    if "pos_embed" in ks or (
        "patch_embed.projection.weight" in ks and any(k.startswith("layers.") for k in ks)
    ):
        return "vit"
    if ks and all(k.startswith("decoder.") for k in ks):
        return "head"
    return None


def _bare_part(where: str, keys: list[str], named: str | None, state: Mapping[str, Tensor]) -> str:
    """The part of a file's unprefixed keys, from its name and its content; both must agree."""
    kind = _kind(keys)
    if named is not None:
        if kind is not None and KIND[named] != kind:
            raise ValueError(
                f"{where}: the file name says {named} ({KIND[named]} weights) but its keys are {kind} weights"
            )
        return named
    if kind == "swin":
        return "hr"
    if kind == "fusion":
        return "fusion"
    if kind == "vit":
        w = state.get("patch_embed.projection.weight", state.get("backbone.patch_embed.projection.weight"))
        chans = None if w is None else int(w.shape[1])
        if chans in (10, 2):
            return "s2" if chans == 10 else "s1"
        raise ValueError(
            f"{where}: ViT weights with {chans} input bands: cannot tell s2 from s1; name the file "
            "*_backbone_s2.pth / *_backbone_s1.pth or pass s2=PATH / s1=PATH"
        )
    hint = (
        "head_s2=PATH or head_s1=PATH"
        if kind == "head"
        else "PART=PATH (hr, s2, s1, head_s2, head_s1, fusion)"
    )
    raise ValueError(f"{where}: cannot tell which SkySense part keys like {keys[:3]} belong to; pass {hint}")


def route(
    where: str, state: Mapping[str, Tensor], named: str | None, report: LoadReport, hints: dict[str, Tensor]
) -> dict[str, tuple[Tensor, str]]:
    """Map one source's keys to ours: {our key: (tensor, "file:key")}; ignored keys go to the report."""
    out: dict[str, tuple[Tensor, str]] = {}
    bare = [k for k in state if k != "ctpe" and not any(k.startswith(p) for p in PREFIXES)]
    bare_local = [k[len("backbone.") :] if k.startswith("backbone.") else k for k in bare]
    task = {
        k for k in bare if k.startswith(TASK_HEADS) or (k.startswith("head") and not k.startswith("head_s"))
    }
    local_keys = [lk for k, lk in zip(bare, bare_local) if k not in task]
    bare_part = _bare_part(where, local_keys, named, state) if local_keys else None
    unknown = []
    for key, value in state.items():
        src = f"{where}:{key}"
        if key == "ctpe":
            out["fusion.dtpe"] = (value, src)
            continue
        part = next((p for pre, p in PREFIXES.items() if key.startswith(pre)), None)
        if part is not None:
            local = key[next(len(pre) for pre in PREFIXES if key.startswith(pre)) :]
        elif key in task:
            report.ignored[src] = SKIP_TASK if key.startswith(TASK_HEADS) else SKIP_HEAD
            continue
        else:
            part, local = bare_part, key[len("backbone.") :] if key.startswith("backbone.") else key
        assert part is not None
        if local == "ctpe":
            out["fusion.dtpe"] = (value, src)
            continue
        leaf = local.rsplit(".", 1)[-1]
        if part == "hr" and leaf in IGNORE_LOCAL:
            report.ignored[src] = IGNORE_LOCAL[leaf]
            hints[f"hr.{local}"] = value
            continue
        if part.startswith("head_") and not local.startswith("decoder.0."):
            unknown.append(src)
            continue
        out[TARGET[part] + local] = (value, src)
    if unknown:
        raise ValueError(f"{where}: keys that are not part of the alignment heads: {unknown[:20]}")
    return out


def _part_of(key: str) -> str:
    """The official part an our-keyed tensor came from (for the report)."""
    if key == "fusion.dtpe":
        return "ctpe"
    top, sub = key.split(".")[:2]
    return sub if top == "encoders" else f"head_{sub}" if top == "align" else top


def _split_source(src: str | Path) -> tuple[str | None, Path]:
    text = str(src)
    head, sep, tail = text.partition("=")
    if sep and head in PARTS:
        return head, Path(tail)
    return None, Path(text)


def _expand_dirs(sources: Sequence[str | Path]) -> list[str | Path]:
    out: list[str | Path] = []
    for s in sources:
        part, p = _split_source(s)
        if part is None and p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix in (".pth", ".pt", ".bin", ".ckpt"))
            if not files:
                raise FileNotFoundError(f"{p}: directory holds no .pth/.pt/.bin/.ckpt file")
            out += files
        else:
            out.append(s)
    return out


# ---------------------------------------------------------------------------------- config inference
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
        assumed[field_name] = f"{base_heads} (the preset's value, huge without one; not in the weights)"
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
    window = base.window_size
    table = next((v for k, v in hints.items() if k.endswith("relative_coords_table")), None)
    index = next((v for k, v in hints.items() if k.endswith("relative_position_index")), None)
    if table is not None:
        window = (int(table.shape[1]) + 1) // 2
    elif index is not None:
        window = round(int(index.shape[0]) ** 0.5)
    else:
        assumed["hr.window_size"] = f"{window} (the preset's; no relative_* buffers in the file)"
    assumed["hr.norm_eps"] = f"{base.norm_eps} (official default)"
    return dataclasses.replace(
        base, in_chans=chans, embed_dim=embed, depths=depths, num_heads=heads, window_size=window,
        patch_size=patch, mlp_ratio=mlp, cpb_hidden=cpb, extra_norm_every=every,
    )  # fmt: skip


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
        _check_heads(assumed)
    return dataclasses.replace(
        base, hr=hr, s2=s2, s1=s1, fusion=fusion, geo=base.geo if geo else None, grad_checkpointing=False
    )


def _check_heads(assumed: Mapping[str, str]) -> None:
    unknown = [k for k, v in assumed.items() if v == UNKNOWN]
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: the weights do not hold the number of attention heads and the width is "
            "no multiple of 64 (the release's head width); pass preset=... (--preset) naming the architecture"
        )


def _check_preset(cfg: SkySenseConfig, preset: SkySenseConfig, name: str) -> None:
    """Every value read from the weights must equal the preset's (hr may have gained bands)."""
    skip = {"drop_path", "use_dtpe", "dtpe_modalities", "dtpe_calendar", "name"}
    bad = []
    for part in ("hr", "s2", "s1", "fusion"):
        ours, theirs = getattr(cfg, part), getattr(preset, part)
        if ours is None or theirs is None:
            continue
        for f in dataclasses.fields(ours):
            a, b = getattr(ours, f.name), getattr(theirs, f.name)
            if f.name not in skip and a != b and not (part == "hr" and f.name == "in_chans"):
                bad.append(f"{part}.{f.name}: preset {b}, source {a}")
    if bad:
        raise ValueError(f"the sources do not match preset {name!r}: " + "; ".join(bad))


# ---------------------------------------------------------------------------------- band expansion
def expand_hr_bands(state: dict[str, Tensor], n: int) -> dict[str, Tensor]:
    """RGB -> RGB-NIR: copy the red band's patch-embedding weights into new input channels (spec Sec. 5).

    Works on our keys (``encoders.hr.*``) or official ones (``backbone_gep.*``/bare); returns ``state``.
    """
    keys = ("encoders.hr.patch_embed.projection.weight", "backbone_gep.patch_embed.projection.weight",
            "patch_embed.projection.weight")  # fmt: skip
    key = next((k for k in keys if k in state), None)
    if key is None:
        raise ValueError("no hr patch embedding (patch_embed.projection.weight) in the state dict")
    w = state[key]
    if n not in (3, 4):
        raise ValueError(f"hr bands must be 3 (RGB) or 4 (RGB-NIR), got {n}")
    if w.shape[1] > n:
        raise ValueError(f"the hr patch embedding already takes {w.shape[1]} bands; cannot shrink it to {n}")
    if w.shape[1] < n:
        red = w[:, :1]
        state[key] = torch.cat([w, red.expand(-1, n - w.shape[1], -1, -1)], dim=1).contiguous()
    return state


# ---------------------------------------------------------------------------------- conversion
def convert_state_dicts(
    sources: Sequence[tuple[str, Any]],
    *,
    preset: str | None = None,
    hr_bands: int | None = None,
    geo: bool = True,
    parts: Sequence[str | None] | None = None,
    file_info: Sequence[dict[str, Any]] | None = None,
) -> Converted:
    """Convert loaded official checkpoints ``[(file name, object), ...]`` (works on meta tensors too).

    ``parts`` optionally names each source's part; otherwise it comes from the file name and keys.
    """
    report = LoadReport(sources=[dict(i) for i in file_info] if file_info else [])
    hints: dict[str, Tensor] = {}
    merged: dict[str, tuple[Tensor, str]] = {}
    for i, (name, obj) in enumerate(sources):
        where = Path(name).name
        named = parts[i] if parts is not None and parts[i] is not None else _file_part(name)
        routed = route(where, _unwrap(obj, where, report), named, report, hints)
        for key, (value, src) in routed.items():
            if key in merged:
                raise ValueError(
                    f"{key} is given twice: {merged[key][1]} and {src}; pass either the six released files "
                    "or the full checkpoint, not both"
                )
            merged[key] = (value, src)
        if i < len(report.sources):
            report.sources[i]["parts"] = sorted({_part_of(k) for k in routed})
    state = {k: v for k, (v, _) in merged.items()}
    report.loaded = {k: src for k, (_, src) in merged.items()}

    base = get_preset(preset or "huge")
    cfg = infer_config(state, base, hints, report.assumed, geo=geo, check_heads=preset is None)
    if preset is not None:
        _check_preset(cfg, base, preset)
        _check_heads(report.assumed)
    if hr_bands is not None:
        if cfg.hr is None:
            raise ValueError("hr_bands was given but the sources hold no hr backbone")
        expand_hr_bands(state, hr_bands)
        cfg.hr.in_chans = hr_bands
    cfg.name = f"official-{preset}" if preset else "official"
    _check_shapes(cfg, state, report)
    notes = [
        "converted from the official SkySense release; fusion.dtpe_modalities=('s2',) as in the reference "
        "pipeline (DTPE added to s2 tokens only)",
    ]
    if hr_bands == 4:
        notes.append("hr RGB-NIR: NIR patch-embedding weights and statistics copied from the red band")
    meta = default_meta(cfg, sources=report.sources, license=OFFICIAL_LICENSE, notes=notes)
    return Converted(cfg, state, meta, report)


def _check_shapes(cfg: SkySenseConfig, state: Mapping[str, Tensor], report: LoadReport) -> None:
    """Every tensor has a place in the model built from ``cfg`` (on the meta device) and its shape."""
    from skysense.models.skysense import SkySense

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in SkySense(cfg).state_dict().items()}
    unexpected = sorted(k for k in state if k not in expected)
    if unexpected:
        srcs = [report.loaded.get(k, k) for k in unexpected]
        raise ValueError(f"{len(srcs)} source tensor(s) have no place in the model: {srcs[:20]}")
    for k, v in state.items():
        if tuple(v.shape) != expected[k]:
            raise ValueError(
                f"shape mismatch for {report.loaded.get(k, k)} (-> {k}): expected {list(expected[k])}, "
                f"found {list(v.shape)}"
            )
    report.initialised = [k for k in expected if k not in state]
    report.loaded_numel = sum(int(v.numel()) for v in state.values())


def convert_official(
    sources: Sequence[str | Path],
    *,
    preset: str | None = None,
    hr_bands: int | None = None,
    geo: bool = True,
) -> Converted:
    """Read official ``.pth`` files safely (``weights_only=True``) and convert them; see the module doc."""
    items = _expand_dirs(sources)
    if not items:
        raise ValueError("no source files given")
    loaded, parts, info = [], [], []
    for item in items:
        part, path = _split_source(item)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: source file not found")
        loaded.append((path.name, safe_torch_load(path)))
        parts.append(part)
        info.append({"file": path.name, "sha256": sha256_file(path)})
    return convert_state_dicts(loaded, preset=preset, hr_bands=hr_bands, geo=geo, parts=parts, file_info=info)


__all__ = [
    "Converted",
    "convert_official",
    "convert_state_dicts",
    "expand_hr_bands",
    "infer_config",
    "route",
]
