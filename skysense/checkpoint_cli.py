"""``skysense convert``: official SkySense ``.pth`` weights -> one skysense ``.safetensors`` file;
``skysense export``: a pre-training run's checkpoint -> the same format (:mod:`skysense.export`).

Registered by ``skysense.cli`` through :func:`add_commands`.
"""

from __future__ import annotations

import argparse
import json

from skysense import export
from skysense.config import PRESETS


def _run(args: argparse.Namespace) -> int:
    from skysense.checkpoint import save_state
    from skysense.convert import convert_official

    conv = convert_official(
        args.sources, preset=args.preset, config=args.config, hr_bands=args.hr_bands, geo=not args.no_geo
    )
    out = save_state(args.out, conv.state, conv.meta)
    if args.json:
        print(
            json.dumps({"out": str(out), "config": conv.config.to_dict(), **conv.report.to_dict()}, indent=2)
        )
    else:
        print(conv.report.summary())
        print(f"wrote {out} (config {conv.config.name}, modalities {list(conv.config.modalities)})")
        print(_missing_note(conv.report.initialised))
    return 0


def _missing_note(initialised: list[str]) -> str:
    """How to load a file that lacks whole parts: the geo-context (not in the release) or a part whose
    file was not given."""
    if not initialised:
        return "every model tensor is in the file: load it with skysense.load_pretrained(path)"
    roots = sorted(
        {".".join(k.split(".")[: 2 if k.startswith(("encoders.", "align.")) else 1]) for k in initialised}
    )
    fix = " or convert with --no-geo" if roots == ["geo"] else ""
    return (
        f"note: the parts {roots} are not in the file (initialised on load); load it with "
        f"skysense.load_pretrained(path, allow_missing={tuple(roots)!r}){fix}"
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert the official SkySense weights (.pth) into a skysense .safetensors checkpoint",
        description=(
            "Convert the six released files (skysense_model_backbone_hr/_s2/_s1.pth, _head_s2/_s1.pth, "
            "_fusion.pth) and/or a full checkpoint into one .safetensors file with JSON metadata. Files are "
            "read with weights_only=True: a pickle holding code is refused. Every source tensor is "
            "loaded or listed as ignored with its reason; the config is read from the tensor shapes and must "
            "match a preset, --preset or --config; an incomplete file or NaN/inf values are refused."
        ),
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="official .pth files or directories holding them; PART=PATH names the part explicitly "
        "(hr, s2, s1, head_s2, head_s1, fusion)",
    )
    p.add_argument("--out", required=True, help="output file, *.safetensors (written atomically)")
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--preset", choices=sorted(PRESETS), help="check the weights against this preset")
    arch.add_argument(
        "--config",
        metavar="MODEL_YAML",
        help="the architecture as a YAML of SkySenseConfig fields (hr, s2, s1, fusion, geo), for sizes no "
        "preset has, e.g. other attention head counts; the weights must match it",
    )
    p.add_argument("--hr-bands", type=int, choices=(3, 4), help="4: RGB-NIR, NIR initialised from red")
    p.add_argument(
        "--no-geo", action="store_true", help="config without geo-context (the release has no prototypes)"
    )
    p.add_argument("--json", action="store_true", help="print the load report as JSON")
    p.set_defaults(func=_run)
    export.add_command(sub)
