"""``skysense export``: a pre-training run's checkpoint -> one skysense ``.safetensors`` encoder.

A run's ``last.ckpt`` holds the student and the EMA teacher with their projection heads, the
optimiser state and the run's config. The export keeps one encoder (the teacher by default, as
DINO evaluates; or the student) and writes it in the format ``skysense convert`` writes
(:mod:`skysense.checkpoint`): the tensors under our key names, the model config, the input
contract of the paper's sensors for each modality, the source file's SHA-256 and a note naming
the network and the step. :func:`skysense.load_pretrained` then loads it like official weights.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skysense.checkpoint import ModalitySpec, default_meta, read_meta, save_state
from skysense.files import safe_torch_load, sha256_file

WHICH: tuple[str, ...] = ("teacher", "student")
# The entries every trainer checkpoint holds (skysense.pretrain.trainer).
RUN_KEYS: tuple[str, ...] = ("config", "step", "student", "teacher")


def _check_run(ck: Any, path: Path) -> None:
    """A trainer checkpoint, or a ValueError saying what the file is instead."""
    keys = sorted(str(k) for k in ck) if isinstance(ck, Mapping) else []
    missing = [k for k in RUN_KEYS if k not in keys]
    if not missing and isinstance(ck["config"], Mapping) and "preset" in ck["config"]:
        return
    what = (
        f"entries {keys[:8]}{' ...' if len(keys) > 8 else ''}"
        if isinstance(ck, Mapping)
        else f"a {type(ck).__name__}"
    )
    raise ValueError(
        f"{path}: not a skysense pre-training checkpoint (it holds {what}; a run's last.ckpt holds "
        f"{list(RUN_KEYS)}). Official SkySense .pth weights are converted with `skysense convert`."
    )


def export_run(
    ckpt: str | Path,
    out: str | Path,
    which: str = "teacher",
    *,
    modalities: Mapping[str, ModalitySpec] | None = None,
) -> Path:
    """Write the ``which`` encoder of a pre-training checkpoint to ``out`` (``.safetensors``).

    ``modalities``: the input contract of modalities whose bands are not the paper's sensors
    (e.g. a 1-band NDVI ``s2``); the others get :func:`skysense.checkpoint.sensor_spec`.
    Returns ``out``; :func:`skysense.load_pretrained` reads it.
    """
    ckpt, out = Path(ckpt), Path(out)
    if which not in WHICH:
        raise ValueError(f"which={which!r}: use one of {list(WHICH)}")
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: the export is one '.safetensors' file; use that suffix")
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"{ckpt}: checkpoint file not found (a pre-training run writes RUN_DIR/last.ckpt)"
        )
    if ckpt.suffix == ".safetensors":
        raise ValueError(f"{ckpt}: already a .safetensors file; skysense.load_pretrained reads it as it is")
    ck = safe_torch_load(ckpt)  # memory-mapped: a huge run's file is read, never copied whole
    _check_run(ck, ckpt)
    from skysense.pretrain.trainer import load_encoder

    try:
        model = load_encoder(ck, which)
    except (KeyError, TypeError, RuntimeError) as e:
        first = (str(e).splitlines() or [""])[0][:300]
        raise ValueError(
            f"{ckpt}: its {which} weights do not fit the run's own config ({type(e).__name__}: {first}); "
            "the file was written by another version of skysense or edited"
        ) from None
    step, config = int(ck["step"]), ck["config"]
    data = config.get("data", {}) if isinstance(config.get("data"), Mapping) else {}
    meta = default_meta(
        model.cfg,
        task="encoder",
        modalities=modalities,
        sources=[{"file": ckpt.name, "sha256": sha256_file(ckpt)}],
        notes=[
            f"the {which} network of a skysense pre-training run at step {step} of {config.get('steps')}",
            f"pre-training preset {config.get('preset')!r}, data sources {list(data.get('sources', []))}",
        ],
    )
    return save_state(out, model.state_dict(), meta)


# ---------------------------------------------------------------------------------- command line
def _run(args: argparse.Namespace) -> int:
    try:
        out = export_run(args.ckpt, args.out, args.which)
    except ValueError as e:
        if "no default band description" not in str(e):
            raise
        raise ValueError(
            f"{e}. From Python: skysense.export.export_run(ckpt, out, modalities={{...}})"
        ) from None
    meta = read_meta(out)
    if args.json:
        print(json.dumps({"out": str(out), "which": args.which, **json.loads(meta.to_json())}, indent=2))
    else:
        print(f"wrote {out}: {meta.notes[0]}")
        print(f"  config {meta.config.name}, modalities {list(meta.modalities)}")
        print(f"  load it with skysense.load_pretrained({str(out)!r})")
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="a pre-training run's checkpoint -> a skysense .safetensors encoder (load_pretrained reads it)",
        description=(
            "Write the teacher (default) or student encoder of a pre-training checkpoint (RUN_DIR/last.ckpt) "
            "as one .safetensors file with the metadata and input contract `skysense convert` writes. "
            "The checkpoint is read with weights_only=True."
        ),
    )
    p.add_argument("ckpt", metavar="CKPT", help="a pre-training checkpoint, e.g. runs/pretrain/last.ckpt")
    p.add_argument("--out", required=True, help="output file, *.safetensors (written atomically)")
    p.add_argument(
        "--which", choices=WHICH, default="teacher", help="the network to export (default: teacher)"
    )
    p.add_argument("--json", action="store_true", help="print the written metadata as JSON")
    p.set_defaults(func=_run)


__all__ = ["RUN_KEYS", "WHICH", "add_command", "export_run"]
