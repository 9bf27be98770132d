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

A key given by several sources must hold equal tensors (the official converter writes ``ctpe`` into
the hr, s2 and s1 files): the copies are listed as ignored, different values are an error naming both
files. NaN or inf values are refused.

The config is read from the tensors' shapes (:mod:`skysense.convert_infer`); what no shape reveals
(ViT/fusion head counts, LayerNorm eps, cls-token use, the window without buffers) comes from
``preset`` or ``config`` (a model config for sizes no preset has) and is listed in
``report.assumed``. Every value read from the weights must equal theirs; without either, the weights
must match one of the presets, as an incomplete file would otherwise read as another architecture
(a ViT without its last layer as a shallower ViT). A model tensor the sources lack is an error unless
its whole part is absent (a file not given; the geo-context, which the release does not have).

Semantics: the reference pipeline added DTPE to the ``s2`` tokens only, so converted configs set
``fusion.dtpe_modalities = ("s2",)`` and compute the official function. The release has no
geo-context: with ``geo=True`` the config keeps the preset's geo-context and its prototypes are
reported as initialised (``load_pretrained`` then needs ``allow_missing=("geo",)``); with
``geo=False`` the config has ``geo=None``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from skysense.checkpoint import OFFICIAL_LICENSE, CheckpointMeta, LoadReport, default_meta
from skysense.config import SkySenseConfig, get_preset
from skysense.convert_infer import check_head_counts, infer_config, match_preset, mismatches, part_of
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
SKIP_HEAD = "a head of the pre-training/downstream stack, not part of the released encoder"
COPY = "an equal copy of a tensor loaded from another source (the release repeats ctpe per backbone)"
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
ModelConfig = SkySenseConfig | Mapping[str, Any] | str | Path


def read_model_config(config: ModelConfig) -> SkySenseConfig:
    """A model config from a :class:`SkySenseConfig`, a dict of its fields, or a YAML file of them."""
    if isinstance(config, SkySenseConfig):
        return SkySenseConfig.from_dict(config.to_dict())
    if isinstance(config, (str, Path)):
        from skysense.engine.config import read_yaml

        where = str(config)
        config = read_yaml(config)
    else:
        where = "config"
    try:
        return SkySenseConfig.from_dict(config)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: not a SkySense model config: {e}") from None


def _merge(
    merged: dict[str, tuple[Tensor, str]], routed: Mapping[str, tuple[Tensor, str]], report: LoadReport
) -> None:
    """Add one source's tensors; a key given again must hold an equal tensor (the official converter
    writes ``ctpe`` into each backbone file): the copy is listed as ignored, a different one refused."""
    for key, (value, src) in routed.items():
        if key not in merged:
            merged[key] = (value, src)
            continue
        first, first_src = merged[key]
        if not _equal(first, value):
            raise ValueError(
                f"{key} is given twice with different values: {first_src} and {src}. The files come from "
                "different models; pass the files of one release (or the full checkpoint alone)"
            )
        report.ignored[src] = COPY


def _equal(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_meta or b.is_meta:  # no values to compare (key lists read on the meta device)
        return a.is_meta and b.is_meta
    return torch.equal(a, b)


def _check_finite(state: Mapping[str, Tensor], report: LoadReport) -> None:
    bad = [
        report.loaded.get(k, k)
        for k, v in state.items()
        if v.is_floating_point() and not v.is_meta and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise ValueError(
            f"{len(bad)} source tensor(s) hold NaN or inf values: {bad[:10]}. The file is damaged or comes "
            "from a diverged run; re-download it"
        )


def convert_state_dicts(
    sources: Sequence[tuple[str, Any]],
    *,
    preset: str | None = None,
    config: ModelConfig | None = None,
    hr_bands: int | None = None,
    geo: bool = True,
    parts: Sequence[str | None] | None = None,
    file_info: Sequence[dict[str, Any]] | None = None,
) -> Converted:
    """Convert loaded official checkpoints ``[(file name, object), ...]`` (works on meta tensors too).

    ``parts`` optionally names each source's part; otherwise it comes from the file name and keys.
    ``preset`` or ``config`` (a :class:`SkySenseConfig`, a dict of its fields or a YAML file) names the
    architecture the weights must have; without either, they must match one of the presets.
    """
    if preset is not None and config is not None:
        raise ValueError("give a preset or a model config, not both")
    report = LoadReport(sources=[dict(i) for i in file_info] if file_info else [])
    hints: dict[str, Tensor] = {}
    merged: dict[str, tuple[Tensor, str]] = {}
    for i, (name, obj) in enumerate(sources):
        where = Path(name).name
        named = parts[i] if parts is not None and parts[i] is not None else _file_part(name)
        routed = route(where, _unwrap(obj, where, report), named, report, hints)
        _merge(merged, routed, report)
        if i < len(report.sources):
            report.sources[i]["parts"] = sorted({part_of(k) for k in routed})
    state = {k: v for k, (v, _) in merged.items()}
    report.loaded = {k: src for k, (_, src) in merged.items()}
    _check_finite(state, report)

    if preset is None and config is None:
        preset, cfg = match_preset(state, hints, report.assumed, geo)
    else:
        base = get_preset(preset) if preset is not None else read_model_config(config)  # type: ignore[arg-type]
        label = "preset" if preset is not None else "config"
        cfg = infer_config(state, base, hints, report.assumed, geo=geo, check_heads=False)
        bad = mismatches(cfg, base, label)
        if bad:
            what = f"preset {preset!r}" if preset is not None else f"the {label} ({config})"
            raise ValueError(f"the sources do not match {what}: " + "; ".join(bad))
        check_head_counts(report.assumed)
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
    """Every tensor has a place in the model built from ``cfg`` (on the meta device) and its shape; a
    model tensor the sources lack is refused unless its whole part is absent (a file not given, or the
    geo-context the release does not have)."""
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
    missing = [k for k in expected if k not in state]
    given = {part_of(k) for k in state}
    lacking = [k for k in missing if not k.startswith("geo.") and part_of(k) in given]
    if lacking:
        raise ValueError(
            f"the sources lack {len(lacking)} tensor(s) of parts they hold: {lacking[:20]}"
            f"{' ...' if len(lacking) > 20 else ''}. The file is incomplete (truncated or filtered); "
            "re-download it. Only whole parts may be left out (a file not given, the geo-context)"
        )
    report.initialised = missing
    report.loaded_numel = sum(int(v.numel()) for v in state.values())


def _load_source(path: Path) -> Any:
    """A ``.pth`` file read with ``weights_only=True``; a safetensors file gets an answer instead."""
    with open(path, "rb") as f:
        head = f.read(9)  # safetensors: an 8-byte header length, then the JSON header
    if path.suffix == ".safetensors" or (head[8:] == b"{" and not head.startswith(b"PK")):
        from skysense.checkpoint import read_meta

        try:
            meta = read_meta(path)
        except ValueError as e:
            raise ValueError(f"{e}. skysense convert reads the official .pth files") from None
        raise ValueError(
            f"{path}: already a skysense checkpoint in safetensors form (config {meta.config.name!r}), "
            f"nothing to convert: load it with skysense.load_pretrained({str(path)!r})"
        )
    return safe_torch_load(path)


def convert_official(
    sources: Sequence[str | Path],
    *,
    preset: str | None = None,
    config: ModelConfig | None = None,
    hr_bands: int | None = None,
    geo: bool = True,
) -> Converted:
    """Read official ``.pth`` files safely (``weights_only=True``) and convert them; see the module doc.

    ``config``: the architecture (a :class:`SkySenseConfig`, a dict of its fields or a YAML file of
    them) for sizes no preset has; the weights must match it exactly."""
    items = _expand_dirs(sources)
    if not items:
        raise ValueError("no source files given")
    loaded, parts, info = [], [], []
    for item in items:
        part, path = _split_source(item)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: source file not found")
        loaded.append((path.name, _load_source(path)))
        parts.append(part)
        info.append({"file": path.name, "sha256": sha256_file(path)})
    return convert_state_dicts(
        loaded, preset=preset, config=config, hr_bands=hr_bands, geo=geo, parts=parts, file_info=info
    )


__all__ = [
    "Converted",
    "convert_official",
    "convert_state_dicts",
    "expand_hr_bands",
    "infer_config",
    "read_model_config",
    "route",
]
