"""``load_pretrained``: any SkySense weights into a ready encoder with its input contract.

One entry point for the three sources of weights: our ``.safetensors`` files (written by
``skysense convert``, ``skysense export`` or :func:`skysense.checkpoint.save_pretrained`) and the
official ``.pth`` files (spec Sec. 5, converted on the fly by :mod:`skysense.convert`). It builds
the model from the stored config, checks every tensor's key, shape and dtype, loads with
``strict=True`` semantics (a tensor the model lacks is an error; a model tensor the file lacks is
an error unless ``allow_missing`` names it) and attaches the :class:`InputContract` that checks
every sample fed to the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from torch import nn

from skysense.checkpoint import (
    CheckpointMeta,
    LoadReport,
    attach_contract,
    load_state_checked,
    read_meta,
)

if TYPE_CHECKING:
    from skysense.convert import ModelConfig

OFFICIAL_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class Pretrained(NamedTuple):
    """What :func:`load_pretrained` returns: ``model, meta, report = load_pretrained(path)``."""

    model: nn.Module
    meta: CheckpointMeta
    report: LoadReport


def _is_official(path: Path) -> bool:
    return path.is_dir() or path.suffix in OFFICIAL_SUFFIXES


def load_pretrained(
    path: str | Path | Sequence[str | Path],
    *,
    strict: bool = True,
    allow_missing: Iterable[str] = (),
    check_inputs: bool = True,
    preset: str | None = None,
    config: ModelConfig | None = None,
    hr_bands: int | None = None,
    geo: bool = True,
) -> Pretrained:
    """Load our ``.safetensors`` checkpoint, or official SkySense ``.pth`` files (one or several
    paths, or a directory holding them), into a ready model in eval mode.

    ``strict``: refuse when model tensors are missing from the checkpoint, unless ``allow_missing``
    names them (key prefixes: ``"geo"``, ``"fusion"``, ``"align.s1"``, ...); the official release
    has no geo-context prototypes, so official files need ``allow_missing=("geo",)`` or
    ``geo=False`` (a config without geo-context). ``check_inputs``: check every sample fed to the
    model against the checkpoint's input contract. ``preset``/``config``/``hr_bands``/``geo`` apply to
    official files only (see :func:`skysense.convert.convert_official`). A pre-training run's ``last.ckpt``
    is exported first: ``skysense export RUN/last.ckpt --out encoder.safetensors``.
    """
    from skysense.models.skysense import SkySense

    paths = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    if not paths:
        raise ValueError("no checkpoint path given")
    if len(paths) == 1 and paths[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        meta = read_meta(paths[0])
        state = load_file(str(paths[0]))
        report = LoadReport(loaded={k: f"{paths[0].name}:{k}" for k in state}, sources=list(meta.sources))
    elif all(_is_official(p) or "=" in str(p) for p in paths):
        from skysense.convert import convert_official

        conv = convert_official(
            [str(p) for p in paths], preset=preset, config=config, hr_bands=hr_bands, geo=geo
        )
        meta, state, report = conv.meta, conv.state, conv.report
    else:
        raise ValueError(
            f"{[str(p) for p in paths]}: expected one skysense '.safetensors' file or official SkySense "
            "'.pth' files (or a directory of them)"
        )
    model = SkySense(meta.config)
    load_state_checked(model, state, report, strict=strict, allow_missing=allow_missing)
    model.eval()
    if check_inputs:
        attach_contract(model, meta.contract)
    return Pretrained(model, meta, report)


__all__ = ["Pretrained", "load_pretrained"]
