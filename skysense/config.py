"""Configuration dataclasses and presets of the SkySense encoder (paper Sec. 3.1, spec Sec. 2).

One dataclass per component, one :class:`SkySenseConfig` that holds them, and five presets:
``tiny`` (seconds on a CPU, for tests), ``small``, ``base``, ``large`` and ``huge`` (the paper's
2.06B-parameter model: SwinV2-H for ``hr``, ViT-L for ``s2`` and ``s1``, a 24-layer fusion
transformer, 4096 x 100 geo-context prototypes).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The modalities of the encoder (paper Sec. 3.1) and, among them, the time series (ViT encoders, dated).
MODALITIES: tuple[str, ...] = ("hr", "s2", "s1")
SERIES: tuple[str, ...] = ("s2", "s1")


def check_ranges(
    where: str,
    cfg: Any,
    at_least: Mapping[str, float] | None = None,
    above: Mapping[str, float] | None = None,
    within: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """A ValueError naming the first field of ``cfg`` out of range (``where`` prefixes its name, e.g.
    ``pretrain.loss.``): ``at_least`` name -> least value, ``above`` name -> a strict bound, ``within``
    name -> closed interval."""
    for name, low in (at_least or {}).items():
        if not getattr(cfg, name) >= low:
            raise ValueError(f"{where}{name}={getattr(cfg, name)!r}: must be at least {low}")
    for name, low in (above or {}).items():
        if not getattr(cfg, name) > low:
            raise ValueError(f"{where}{name}={getattr(cfg, name)!r}: must be above {low}")
    for name, (low, high) in (within or {}).items():
        if not low <= getattr(cfg, name) <= high:
            raise ValueError(f"{where}{name}={getattr(cfg, name)!r}: must be in [{low}, {high}]")


def _as_float(value: Any) -> Any:
    """YAML reads 1e-4 as a string: a number or numeric string as float, anything else as it is (the
    caller's check names the field)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def _checked(where: str, value: Any, hint: Any) -> Any:
    """``value`` of an ``int``, ``int | None``, ``bool`` or ``str`` field, or a ValueError naming it."""
    if hint == int | None and value is None:
        return None
    if hint in (int, int | None):
        number = _as_float(value)  # YAML reads 1e3 as a string
        if isinstance(number, float) and number.is_integer():
            return int(number)
        raise ValueError(f"{where}={value!r}: expected a whole number")
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{where}={value!r}: expected true or false")
    if hint is str and not isinstance(value, str):
        raise ValueError(f"{where}={value!r}: expected a string")
    return value


def from_dict(cls: Any, d: Mapping[str, Any]) -> Any:
    """A config dataclass from a nested dict (YAML, JSON, ``dataclasses.asdict``): every config family
    of the library (model, pre-training, fine-tuning) is read by this one function.

    Fields missing from ``d`` keep their defaults; unknown keys are errors naming the known ones. Nested
    dicts become the field's dataclass, lists become tuples where the default is a tuple, numbers become
    floats where the field is a float or a ``dict[str, float]``; int, bool and str fields are checked."""
    default = cls()
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for key, value in d.items():
        if not hasattr(default, key):
            known = sorted(f.name for f in dataclasses.fields(cls))
            raise ValueError(f"unknown {cls.__name__} key {key!r}; known: {known}")
        cur, hint = getattr(default, key), hints.get(key)
        if dataclasses.is_dataclass(cur) and isinstance(value, Mapping):
            value = from_dict(type(cur), value)
        elif isinstance(cur, tuple) and isinstance(value, list):
            value = tuple(value)
        elif hint is float:
            value = _as_float(value)
            if isinstance(value, str):
                raise ValueError(f"{cls.__name__} {key}={value!r}: expected a number")
        elif isinstance(value, dict) and hint == dict[str, float]:
            value = {k: _as_float(v) for k, v in value.items()}
        else:
            value = _checked(f"{cls.__name__} {key}", value, hint)
        kw[key] = value
    return dataclasses.replace(default, **kw)


@dataclass
class SwinConfig:
    """Swin Transformer V2 spatial encoder of ``hr`` (mmcls 0.25 flavour, spec Sec. 2 and 6)."""

    in_chans: int = 3
    embed_dim: int = 352
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (8, 16, 32, 64)
    window_size: int = 8
    patch_size: int = 4
    mlp_ratio: float = 4.0
    cpb_hidden: int = 512  # hidden width of the continuous position-bias MLP
    extra_norm_every: int = 6  # extra LayerNorm after every n-th block of each stage (0 = off)
    drop_path: float = 0.0
    norm_eps: float = 1e-5

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


@dataclass
class ViTConfig:
    """ViT spatial encoder of ``s2``/``s1`` (mmseg flavour, spec Sec. 2 and 6)."""

    in_chans: int = 10
    img_size: int = 64  # the size the position embedding was learnt at; other sizes interpolate
    patch_size: int = 4
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-5  # official default; SkySense++ configs use 1e-6
    with_cls_token: bool = True  # SkySense++ configs drop it (same weights)
    out_indices: tuple[int, ...] = (5, 11, 17, 23)  # layers exposed for dense heads
    drop_path: float = 0.0

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size


@dataclass
class FusionConfig:
    """Temporal fusion transformer with DTPE and the extra token (paper Eq. 2-3)."""

    in_dim: int = 2816  # channels of the aligned features (= hr stage-4 width)
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_path: float = 0.3
    norm_eps: float = 1e-5
    use_dtpe: bool = True  # the released config switched it off; the paper uses it
    dtpe_days: int = 365  # rows of the day-of-year table; Feb 29 shares Feb 28's row
    # Modalities whose dated tokens get DTPE. The paper adds it to all; the released reference
    # pipeline to s2 only (set ("s2",) to reproduce it exactly).
    dtpe_modalities: tuple[str, ...] = ("hr", "s2", "s1")
    # Row of a date: "noleap" = same month/day of a common year (Feb 29 -> Feb 28's row);
    # "doy" = day of year - 1 as the released code (leap-year dates after Feb 28 shift by one,
    # Dec 31 of a leap year is clamped to the last row). Converted official weights use "doy".
    dtpe_calendar: str = "noleap"


@dataclass
class GeoContextConfig:
    """Attentive geo-context integration (paper Eq. 4): region prototypes on an equal-area grid.

    Regions are the cells of a cylindrical equal-area grid: ``lon_bands`` equal longitude
    sectors times ``lat_bands`` latitude bands of equal width in sin(latitude), so every region
    covers exactly the same area of the sphere. ``lat_bands * lon_bands`` = N_R.
    """

    lat_bands: int = 64
    lon_bands: int = 64
    num_prototypes: int = 100  # N_p per region
    dim: int = 512  # prototype width; F_fus_mm is projected to it when it differs

    @property
    def num_regions(self) -> int:
        return self.lat_bands * self.lon_bands


@dataclass
class SkySenseConfig:
    """The whole factorised multi-modal spatiotemporal encoder.

    A modality set to ``None`` is not built; any subset of the built modalities can be fed.
    """

    name: str = "custom"
    hr: SwinConfig | None = field(default_factory=SwinConfig)
    s2: ViTConfig | None = field(default_factory=ViTConfig)
    s1: ViTConfig | None = field(default_factory=lambda: ViTConfig(in_chans=2))
    fusion: FusionConfig = field(default_factory=FusionConfig)
    geo: GeoContextConfig | None = field(default_factory=GeoContextConfig)
    grad_checkpointing: bool = False

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)

    @property
    def aligned_dim(self) -> int:
        """Channels on the common fused grid: the hr stage-4 width (or the fusion input width)."""
        return self.hr.out_channels[-1] if self.hr is not None else self.fusion.in_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SkySenseConfig:
        return typing.cast(SkySenseConfig, from_dict(cls, d))


def _preset(
    name: str,
    swin: tuple[int, tuple[int, ...], tuple[int, ...], int],
    vit: tuple[int, int, int, int, int],
    fusion: tuple[int, int, int],
    geo: tuple[int, int, int, int],
    extra_norm_every: int = 6,
) -> SkySenseConfig:
    embed, depths, heads, window = swin
    width, depth, vheads, patch, img = vit
    fwidth, fdepth, fheads = fusion
    lat, lon, n_p, pdim = geo
    out = [max(0, (i + 1) * depth // 4 - 1) for i in range(4)]  # e.g. 5, 11, 17, 23 for depth 24
    hr = SwinConfig(
        embed_dim=embed, depths=depths, num_heads=heads, window_size=window, extra_norm_every=extra_norm_every
    )
    vit_cfg = {
        "embed_dim": width,
        "depth": depth,
        "num_heads": vheads,
        "patch_size": patch,
        "img_size": img,
        "out_indices": tuple(sorted(set(out))),
    }
    return SkySenseConfig(
        name=name,
        hr=hr,
        s2=ViTConfig(in_chans=10, **vit_cfg),  # type: ignore[arg-type]
        s1=ViTConfig(in_chans=2, **vit_cfg),  # type: ignore[arg-type]
        fusion=FusionConfig(
            in_dim=hr.out_channels[-1],
            embed_dim=fwidth,
            depth=fdepth,
            num_heads=fheads,
            drop_path=0.3 if fdepth >= 12 else 0.1,
        ),
        geo=GeoContextConfig(lat_bands=lat, lon_bands=lon, num_prototypes=n_p, dim=pdim),
    )


# name -> (swin embed, depths, heads, window), (vit width, depth, heads, patch, img),
#         (fusion width, depth, heads), (lat bands, lon bands, prototypes, prototype dim)
# fmt: off
PRESETS: dict[str, SkySenseConfig] = {
    # tiny: ~0.6M parameters; patch 2 keeps the s2/s1 grids non-trivial at 8-16 px.
    "tiny": _preset("tiny", (16, (1, 1, 3, 1), (1, 2, 2, 4), 4), (32, 2, 2, 2, 16), (32, 2, 2),
                    (4, 4, 8, 16), extra_norm_every=3),
    "small": _preset("small", (96, (2, 2, 6, 2), (3, 6, 12, 24), 8), (384, 12, 6, 4, 64), (384, 6, 6),
                     (16, 16, 50, 256)),
    "base": _preset("base", (128, (2, 2, 18, 2), (4, 8, 16, 32), 8), (768, 12, 12, 4, 64), (768, 12, 12),
                    (32, 32, 100, 384)),
    "large": _preset("large", (192, (2, 2, 18, 2), (6, 12, 24, 48), 8), (1024, 24, 16, 4, 64),
                     (1024, 24, 16), (64, 64, 100, 512)),
    # huge: the paper's model (spec Sec. 2).
    "huge": _preset("huge", (352, (2, 2, 18, 2), (8, 16, 32, 64), 8), (1024, 24, 16, 4, 64),
                    (1024, 24, 16), (64, 64, 100, 512)),
}
# fmt: on


def get_preset(name: str) -> SkySenseConfig:
    """A fresh copy of a preset, so callers may edit it."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return SkySenseConfig.from_dict(PRESETS[name].to_dict())


def preset_with(name: str, overrides: Mapping[str, Any]) -> SkySenseConfig:
    """A preset with ``overrides`` merged in one level deep (a run config's ``model:`` section), e.g.
    ``{s2: {in_chans: 1}, hr: null}``."""
    d = get_preset(name).to_dict()
    for key, value in overrides.items():
        if key not in d:
            raise ValueError(f"model.{key}: not a SkySenseConfig field; known: {sorted(d)}")
        d[key] = {**d[key], **value} if isinstance(value, dict) and isinstance(d[key], dict) else value
    return SkySenseConfig.from_dict(d)
