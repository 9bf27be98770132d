"""Checkpoints: our safetensors format, its metadata, the input contract, and safe ``.pth`` loading.

Our format is ONE ``.safetensors`` file. The tensors are the model's state dict (our key names);
the metadata is a JSON document stored as the string value ``"skysense"`` of the safetensors
header's ``__metadata__`` (safetensors allows only string values there). It holds::

    format_version   int (this code writes and reads 1)
    config           SkySenseConfig.to_dict()
    modalities       {hr|s2|s1: {bands, units, mean, std, gsd_m, sensor, description}}
    task             "encoder" (a pre-trained encoder) or a downstream task name
    class_names      list of str or null
    sources          [{file, sha256, parts}] the files a conversion read
    license, notes   free text

Files are written atomically (:func:`skysense.files.atomic_write`), so a crash never leaves a
half-written checkpoint under the final name.

Here: the metadata, the :class:`InputContract` that checks every sample fed to a loaded model
(band count, dtype, and whether values look normalised, so a mismatched input is a clear error
rather than silent garbage), the checked load of a state dict (:func:`load_state_checked`: a
tensor the model lacks, a shape or dtype mismatch, a model tensor the file lacks are errors) and
the writer/reader of the file. :mod:`skysense.convert` imports official ``.pth`` files (spec Sec. 5)
into this format, :mod:`skysense.export` a pre-training run's checkpoint, and
:func:`skysense.pretrained.load_pretrained` loads any of them into a ready model.

Security: ``.pth`` files are read by :func:`skysense.files.safe_torch_load` only
(``weights_only=True``); a pickle that holds code or objects other than tensors and plain
containers is refused (:class:`UnsafeCheckpointError`) and nothing in it is executed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from skysense.bands import DEFAULT_BANDS, HR_NIR_BANDS, NORM_STATS
from skysense.config import SkySenseConfig
from skysense.files import (
    DamagedCheckpointError,
    UnsafeCheckpointError,
    atomic_write,
    safe_torch_load,
    sha256_file,
)
from skysense.validate import Takes, check_modalities

FORMAT_VERSION = 1
META_KEY = "skysense"
UNITS: tuple[str, ...] = ("DN", "reflectance", "dB", "linear")
OFFICIAL_LICENSE = "SkySense official weights: non-commercial research use only (terms of the authors)"

# Facts of the paper's sensors (spec Sec. 1); band names and statistics come from skysense.bands.
_SENSORS: dict[str, dict[str, Any]] = {
    "hr": {
        "units": "DN",
        "gsd_m": 0.3,
        "sensor": "WorldView-3/4",
        "description": "8-bit digital numbers 0-255; normalised with the ImageNet mean/std on 0-255",
    },
    "s2": {
        "units": "DN",
        "gsd_m": 10.0,
        "sensor": "Sentinel-2 L2A",
        "description": "raw L2A digital numbers (surface reflectance x 10000)",
    },
    "s1": {
        "units": "dB",
        "gsd_m": 10.0,
        "sensor": "Sentinel-1 IW GRD",
        "description": "backscatter in dB (10 log10 of linear sigma0)",
    },
}

# Values of a normalised input: no band's median farther than this from 0, no value beyond MAX_ABS.
MAX_ABS_MEDIAN = 6.0
MAX_ABS = 100.0


def _version() -> str:
    import skysense

    return str(getattr(skysense, "__version__", ""))


# ---------------------------------------------------------------------------------- metadata
@dataclass
class ModalitySpec:
    """What one modality's input must be: bands in order, units, normalisation, ground sampling."""

    bands: tuple[str, ...]
    units: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gsd_m: float
    sensor: str = ""
    description: str = ""

    def validate(self, name: str) -> None:
        n = len(self.bands)
        if n == 0 or len(self.mean) != n or len(self.std) != n:
            raise ValueError(
                f"modality {name}: {n} bands but {len(self.mean)} means and {len(self.std)} stds; "
                "give one mean and std per band"
            )
        if any(not s > 0 for s in self.std):
            raise ValueError(f"modality {name}: every std must be > 0, got {self.std}")
        if self.units not in UNITS:
            raise ValueError(f"modality {name}: units {self.units!r} unknown; use one of {UNITS}")
        if not self.gsd_m > 0:
            raise ValueError(f"modality {name}: gsd_m must be > 0 metres, got {self.gsd_m}")

    def normalise(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per band; bands on dim -3 ((C, H, W), (B, C, H, W) or (B, T, C, H, W))."""
        if x.dim() < 3 or x.shape[-3] != len(self.bands):
            raise ValueError(
                f"expected {len(self.bands)} bands {self.bands} on dim -3, got shape {tuple(x.shape)}"
            )
        dtype = x.dtype if x.is_floating_point() else torch.float32
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(-1, 1, 1)
        return (x.to(dtype) - mean) / std


def sensor_spec(modality: str, bands: int) -> ModalitySpec:
    """The spec's sensor facts (spec Sec. 1) for a modality with ``bands`` input channels.

    ``hr`` with 4 bands is RGB-NIR: NIR gets the red band's statistics, as its patch-embedding
    weights are the red band's copy (replace them with your data's, e.g. ``skysense stats``).
    """
    facts = _SENSORS[modality]
    stats = NORM_STATS[modality]
    if modality == "hr" and bands == len(HR_NIR_BANDS):
        mean, std = (*stats.mean, stats.mean[0]), (*stats.std, stats.std[0])
        return ModalitySpec(HR_NIR_BANDS, mean=mean, std=std, **facts)
    default = DEFAULT_BANDS[modality]
    if bands != len(default):
        raise ValueError(
            f"no default band description for {modality} with {bands} bands (the paper's sensor has "
            f"{len(default)}: {default}); pass modalities={{'{modality}': ModalitySpec(...)}} explicitly"
        )
    return ModalitySpec(default, mean=tuple(stats.mean), std=tuple(stats.std), **facts)


@dataclass
class CheckpointMeta:
    """The JSON metadata stored with the weights (see the module docstring)."""

    config: SkySenseConfig
    modalities: dict[str, ModalitySpec]
    task: str = "encoder"
    class_names: tuple[str, ...] | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    license: str = ""
    notes: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    skysense_version: str = field(default_factory=lambda: _version())

    def validate(self) -> None:
        cfg = self.config
        if set(self.modalities) != set(cfg.modalities):
            raise ValueError(
                f"metadata describes modalities {sorted(self.modalities)} but the config builds "
                f"{list(cfg.modalities)}; they must be the same"
            )
        for m, spec in self.modalities.items():
            spec.validate(m)
            in_chans = getattr(cfg, m).in_chans
            if len(spec.bands) != in_chans:
                raise ValueError(
                    f"metadata lists {len(spec.bands)} {m} bands {spec.bands} but the {m} encoder takes "
                    f"{in_chans} input channels"
                )
        if self.class_names is not None and not all(isinstance(c, str) for c in self.class_names):
            raise ValueError("class_names must be a list of strings")

    @property
    def contract(self) -> InputContract:
        f = self.config.fusion
        # hr_dates stay optional (the model adds DTPE to hr only when given); s2/s1 need their dates
        dated = (
            tuple(m for m in f.dtpe_modalities if m in self.modalities and m != "hr") if f.use_dtpe else ()
        )
        return InputContract(dict(self.modalities), dated=dated)

    def to_json(self) -> str:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "metadata") -> CheckpointMeta:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: metadata is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{where}: metadata must be a JSON object")
        version = d.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"{where}: metadata has no valid format_version")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{where}: format_version {version} was written by a newer skysense (this one reads up to "
                f"{FORMAT_VERSION}); upgrade skysense"
            )
        try:
            config = SkySenseConfig.from_dict(d["config"])
            mods = {m: _spec(s) for m, s in d["modalities"].items()}
            names = d.get("class_names")
            meta = cls(
                config=config,
                modalities=mods,
                task=str(d.get("task", "encoder")),
                class_names=tuple(names) if names is not None else None,
                sources=list(d.get("sources", [])),
                license=str(d.get("license", "")),
                notes=list(d.get("notes", [])),
                format_version=version,
                skysense_version=str(d.get("skysense_version", "")),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{where}: malformed metadata ({type(e).__name__}: {e})") from None
        try:
            meta.validate()
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        return meta


def _spec(d: Mapping[str, Any]) -> ModalitySpec:
    known = {f.name for f in fields(ModalitySpec)}
    if set(d) - known:
        raise ValueError(f"unknown modality fields {sorted(set(d) - known)}; known: {sorted(known)}")
    kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return ModalitySpec(**kw)


def default_meta(
    config: SkySenseConfig,
    *,
    task: str = "encoder",
    class_names: Sequence[str] | None = None,
    modalities: Mapping[str, ModalitySpec] | None = None,
    sources: Sequence[Mapping[str, Any]] = (),
    license: str = "",
    notes: Sequence[str] = (),
) -> CheckpointMeta:
    """Metadata for ``config`` with the paper's sensors (spec Sec. 1) unless ``modalities`` overrides."""
    given = dict(modalities or {})
    mods = {m: given.get(m) or sensor_spec(m, getattr(config, m).in_chans) for m in config.modalities}
    extra = sorted(set(given) - set(mods))
    if extra:
        raise ValueError(f"modalities {extra} are not built by the config ({list(config.modalities)})")
    meta = CheckpointMeta(
        config=config,
        modalities=mods,
        task=task,
        class_names=tuple(class_names) if class_names is not None else None,
        sources=[dict(s) for s in sources],
        license=license,
        notes=list(notes),
    )
    meta.validate()
    return meta


# ---------------------------------------------------------------------------------- input contract
@dataclass
class InputContract:
    """What a sample fed to the model must look like: the bands, and normalised values.

    ``check_sample`` raises ValueError/TypeError with the fix;
    :func:`~skysense.pretrained.load_pretrained` runs it before every forward (a forward pre-hook).
    """

    modalities: dict[str, ModalitySpec]
    dated: tuple[str, ...] = ()

    def normalise(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``sample`` with each modality normalised by the checkpoint's mean/std."""
        out = dict(sample)
        for m, spec in self.modalities.items():
            if m in out:
                out[m] = spec.normalise(out[m])
        return out

    def check_sample(self, sample: Mapping[str, Any], check_values: bool = True) -> None:
        """The checks of :func:`skysense.validate.check_modalities` against this checkpoint's bands,
        then (``check_values``) whether the values look normalised."""
        takes = {m: Takes(len(s.bands), s.bands, s.units) for m, s in self.modalities.items()}
        fix = "normalise it: contract.normalise(sample) or meta.modalities['{m}'].normalise(x)"
        present, _ = check_modalities(sample, takes, owner="the checkpoint", dated=self.dated, fix=fix)
        if not check_values:
            return
        for m in present:
            x, pad = sample[m], sample.get(f"{m}_mask")
            if pad is not None:
                x = x[~pad]  # padded steps may hold anything
            self._check_values(m, self.modalities[m], x, fix.format(m=m))

    @staticmethod
    def _check_values(m: str, spec: ModalitySpec, x: Tensor, fix: str) -> None:
        """Raw DN / dB / 0-255 values where normalised ones are expected (on a subsample)."""
        if x.numel() == 0:
            return
        x = x.detach().reshape(-1, *x.shape[-3:])  # (N, C, H, W)
        n, _, h, w = x.shape
        step = max(1, int((n * h * w / 16384) ** 0.5))
        v = x[:, :, ::step, ::step].transpose(0, 1).reshape(x.shape[1], -1).float()  # (C, samples)
        v = torch.where(torch.isfinite(v), v, torch.zeros(()))
        medians = v.median(dim=1).values
        worst = int(medians.abs().argmax())
        peak = float(v.abs().max())
        if peak > MAX_ABS or float(medians[worst].abs()) > MAX_ABS_MEDIAN:
            raise ValueError(
                f"{m} does not look normalised: band {spec.bands[worst]} has median "
                f"{float(medians[worst]):.4g} "
                f"and |values| reach {peak:.4g}, expected values around 0 with unit spread. The checkpoint "
                f"expects {spec.units} ({spec.description}) normalised with mean {list(spec.mean)} and std "
                f"{list(spec.std)}; {fix}. (Pass check_inputs=False to load_pretrained to skip this check.)"
            )


def attach_contract(model: nn.Module, contract: InputContract, check_values: bool = True) -> Any:
    """Check each sample dict fed to ``model`` against ``contract`` (forward pre-hook); returns the handle."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Mapping):
            contract.check_sample(args[0], check_values=check_values)

    return model.register_forward_pre_hook(hook)


# ---------------------------------------------------------------------------------- load report
@dataclass
class LoadReport:
    """What a load did: every source tensor is loaded or ignored (with a reason); the rest initialised."""

    loaded: dict[str, str] = field(default_factory=dict)  # our key -> source ("file:key")
    ignored: dict[str, str] = field(default_factory=dict)  # source "file:key" -> reason
    initialised: list[str] = field(default_factory=list)  # model keys not in the source (fresh init)
    assumed: dict[str, str] = field(default_factory=dict)  # config field -> why it is not in the weights
    sources: list[dict[str, Any]] = field(default_factory=list)
    loaded_numel: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["counts"] = {
            "loaded": len(self.loaded),
            "loaded_parameters": self.loaded_numel,
            "ignored": len(self.ignored),
            "initialised": len(self.initialised),
        }
        return d

    def summary(self) -> str:
        lines = [f"loaded      {len(self.loaded)} tensors ({self.loaded_numel / 1e6:.2f}M values)"]
        for s in self.sources:
            parts = f"  parts={s['parts']}" if "parts" in s else ""
            lines.append(f"  from {s.get('file')}{parts}  sha256={str(s.get('sha256'))[:16]}...")
        lines.append(f"ignored     {len(self.ignored)} tensors")
        reasons: dict[str, int] = {}
        for reason in self.ignored.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"  {n} x {reason}" for reason, n in sorted(reasons.items())]
        lines.append(f"initialised {len(self.initialised)} tensors (not in the source, fresh init)")
        lines += [f"  {k}" for k in self.initialised[:20]]
        if len(self.initialised) > 20:
            lines.append(f"  ... and {len(self.initialised) - 20} more")
        if self.assumed:
            lines.append("assumed (not recoverable from the weights):")
            lines += [f"  {k}: {v}" for k, v in self.assumed.items()]
        return "\n".join(lines)


def _covered(key: str, allow: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p.rstrip(".") + ".") for p in allow)


def load_state_checked(
    model: nn.Module,
    state: Mapping[str, Tensor],
    report: LoadReport,
    *,
    strict: bool = True,
    allow_missing: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``model``: unknown keys and shape mismatches are errors; model keys missing
    from ``state`` are recorded in ``report.initialised`` and, with ``strict``, refused unless covered
    by ``allow_missing`` (key prefixes such as ``"geo"`` or ``"align.s1"``)."""
    allow = tuple(allow_missing)
    full = model.state_dict()
    unexpected = sorted(k for k in state if k not in full)
    if unexpected:
        raise ValueError(f"{len(unexpected)} tensor(s) have no place in the model: {unexpected[:20]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(full[k].shape):
            raise ValueError(
                f"shape mismatch for {k} (source {report.loaded.get(k, k)}): the model expects "
                f"{list(full[k].shape)}, found {list(v.shape)}"
            )
        if v.is_floating_point() != full[k].is_floating_point():
            raise ValueError(
                f"{k} (source {report.loaded.get(k, k)}) is {v.dtype}; the model holds {full[k].dtype}"
            )
    missing = [k for k in full if k not in state]
    report.initialised = missing
    refused = [k for k in missing if not _covered(k, allow)]
    if strict and refused:
        roots = sorted(
            {".".join(k.split(".")[: 2 if k.startswith(("encoders.", "align.")) else 1]) for k in refused}
        )
        raise ValueError(
            f"{len(refused)} model tensor(s) are not in the checkpoint and would stay at their random "
            f"initialisation: {refused[:10]}{' ...' if len(refused) > 10 else ''}. Pass "
            f"allow_missing={tuple(roots)!r} to accept that (e.g. the official release has no geo-context "
            "prototypes), or build a config without those parts."
        )
    full.update(state)
    model.load_state_dict(full, strict=True)
    report.loaded_numel = sum(int(state[k].numel()) for k in state)


# ---------------------------------------------------------------------------------- our format
def _unshare(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors; a tensor sharing storage with an earlier one is cloned."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for k, v in state.items():
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def save_state(path: str | Path, state: Mapping[str, Tensor], meta: CheckpointMeta) -> Path:
    """Write ``state`` (our key names) and ``meta`` as one ``.safetensors`` file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: our checkpoint format is a single '.safetensors' file; use that suffix")
    meta.validate()
    header = {"format": "pt", META_KEY: meta.to_json(), "skysense_format_version": str(meta.format_version)}
    tensors = _unshare(state)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def save_pretrained(model: nn.Module, path: str | Path, meta: CheckpointMeta | None = None) -> Path:
    """Save a :class:`~skysense.models.skysense.SkySense` model with its metadata (default: the
    paper's sensors and statistics for the model's config, task ``encoder``)."""
    cfg: SkySenseConfig = model.cfg  # type: ignore[assignment]
    meta = meta if meta is not None else default_meta(cfg)
    if meta.config.to_dict() != cfg.to_dict():
        raise ValueError("meta.config differs from the model's config; build the metadata from model.cfg")
    return save_state(path, model.state_dict(), meta)


def read_meta(path: str | Path) -> CheckpointMeta:
    """The metadata of one of our ``.safetensors`` files, without reading the tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f"{path}: not a readable safetensors file: {e}") from None
    if META_KEY not in header:
        raise ValueError(
            f"{path}: a safetensors file without skysense metadata; it was not written by "
            "skysense.save_pretrained / skysense convert"
        )
    return CheckpointMeta.from_json(header[META_KEY], where=str(path))


__all__ = [
    "FORMAT_VERSION",
    "CheckpointMeta",
    "InputContract",
    "LoadReport",
    "ModalitySpec",
    "DamagedCheckpointError",
    "UnsafeCheckpointError",
    "attach_contract",
    "default_meta",
    "load_state_checked",
    "read_meta",
    "safe_torch_load",
    "save_pretrained",
    "save_state",
    "sensor_spec",
    "sha256_file",
]
