"""Band names per modality and sensor, S2 band-name aliases and the spec's normalisation constants.

Constants are those of ``SKYSENSE_SPEC.md`` Sec. 1 [code]: ``hr`` on 0-255 (ImageNet mean/std),
``s2`` on raw Sentinel-2 L2A DN for the 10 bands B2 B3 B4 B5 B6 B7 B8 B8A B11 B12, ``s1`` in dB
for VV, VH. Statistics of a user's own data come from ``skysense stats PATH`` (same structure).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

HR_BANDS: tuple[str, ...] = ("R", "G", "B")
HR_NIR_BANDS: tuple[str, ...] = ("R", "G", "B", "NIR")

# Sentinel-2 MSI: all 13 bands (L1C order) and their native ground sampling distance in metres.
S2_ALL_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12",
)  # fmt: skip
S2_RESOLUTION_M: dict[str, int] = {
    "B1": 60, "B2": 10, "B3": 10, "B4": 10, "B5": 20, "B6": 20, "B7": 20,
    "B8": 10, "B8A": 20, "B9": 60, "B10": 60, "B11": 20, "B12": 20,
}  # fmt: skip
# The 10 bands SkySense's s2 encoder takes, in its order (spec Sec. 1).
S2_BANDS: tuple[str, ...] = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
# L2A products have no cirrus band B10: 12 bands.
S2_L2A_BANDS: tuple[str, ...] = tuple(b for b in S2_ALL_BANDS if b != "B10")

S1_BANDS: tuple[str, ...] = ("VV", "VH")

# The bands of the paper's sensors per modality (spec Sec. 1), in the encoders' order.
DEFAULT_BANDS: dict[str, tuple[str, ...]] = {"hr": HR_BANDS, "s2": S2_BANDS, "s1": S1_BANDS}
# Image key -> the modality whose statistics normalise it (the bi-temporal hr pair counts as hr).
STATS_OF: dict[str, str] = {"hr": "hr", "hr_pre": "hr", "hr_post": "hr", "s2": "s2", "s1": "s1"}

_COMMON_S2_NAMES = {
    "COASTAL": "B1", "BLUE": "B2", "GREEN": "B3", "RED": "B4", "REDEDGE1": "B5", "REDEDGE2": "B6",
    "REDEDGE3": "B7", "NIR": "B8", "NIR08": "B8A", "NARROWNIR": "B8A", "WATERVAPOR": "B9",
    "CIRRUS": "B10", "SWIR1": "B11", "SWIR16": "B11", "SWIR2": "B12", "SWIR22": "B12",
}  # fmt: skip
_S2_RE = re.compile(r"^B0*(\d{1,2})(A?)$")


def s2_band_name(name: str) -> str:
    """Canonical Sentinel-2 band name: ``B02``/``b2``/``B08A``/``B8a``/``blue`` -> ``B2``/``B8A``/...

    Raises ``ValueError`` for a name that is no Sentinel-2 band.
    """
    key = name.strip().upper().replace("_", "").replace("-", "").replace(" ", "")
    if key in _COMMON_S2_NAMES:
        return _COMMON_S2_NAMES[key]
    m = _S2_RE.match(key)
    if m:
        canon = f"B{int(m.group(1))}{m.group(2)}"
        if canon in S2_RESOLUTION_M:
            return canon
    raise ValueError(f"{name!r} is not a Sentinel-2 band name (expected one of {', '.join(S2_ALL_BANDS)})")


def s1_band_name(name: str) -> str:
    """Canonical Sentinel-1 polarisation name (``vv`` -> ``VV``); ``ValueError`` if unknown."""
    key = name.strip().upper()
    for pol in ("VV", "VH", "HH", "HV"):
        if key == pol or key.endswith("_" + pol) or key.startswith(pol + "_"):
            return pol
    raise ValueError(f"{name!r} is not a Sentinel-1 polarisation (expected VV, VH, HH or HV)")


@dataclass(frozen=True)
class BandStats:
    """Per-channel mean and std of one modality, on the values datasets return (DN, dB, 0-255)."""

    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.bands) == len(self.mean) == len(self.std)):
            raise ValueError(
                f"stats need one mean and std per band: {len(self.bands)} bands, "
                f"{len(self.mean)} means, {len(self.std)} stds"
            )
        if any(not s > 0 for s in self.std):
            raise ValueError(f"std must be > 0 for every band, got {self.std} for bands {self.bands}")


NORM_STATS: dict[str, BandStats] = {
    "hr": BandStats(HR_BANDS, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "s2": BandStats(
        S2_BANDS,
        (884.30, 1144.16, 1297.47, 1624.91, 2194.64, 2422.21, 2517.76, 2581.65, 2368.51, 1805.07),
        (1155.15, 1183.63, 1368.11, 1370.27, 1355.55, 1416.51, 1474.79, 1439.31, 1455.52, 1343.48),
    ),
    "s1": BandStats(S1_BANDS, (-12.548, -20.192), (5.257, 5.912)),
}


def save_stats(stats: dict[str, BandStats], path: str | Path) -> None:
    """Write ``{modality: {bands, mean, std}}`` as JSON (the format ``skysense stats --out`` writes)."""
    Path(path).write_text(json.dumps({k: asdict(v) for k, v in stats.items()}, indent=2) + "\n")


def load_stats(path: str | Path) -> dict[str, BandStats]:
    """Read statistics written by :func:`save_stats` or ``skysense stats --out``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        return {
            mod: BandStats(tuple(v["bands"]), tuple(map(float, v["mean"])), tuple(map(float, v["std"])))
            for mod, v in raw.items()
        }
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: statistics file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a statistics file ({{modality: {{bands, mean, std}}}}): {e}") from None
