"""The ``skysense`` command line: one console script, one subcommand per job, ``--help`` everywhere.

Only the module of the command being run is imported: ``skysense --help`` lists the others by name and
help line without importing torch, so the command line starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]

# Command -> (the module whose add_commands(sub) registers it, its line in `skysense --help`).
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("skysense.info", "architecture and parameter counts of a preset (instant, meta device)"),
    "data": ("skysense.data.cli", "inspect a data folder or file: layout, bands, dates, CRS, problems"),
    "stats": (
        "skysense.data.cli",
        "per-band mean/std of the valid pixels of a dataset or rasters (for Normalize)",
    ),
    "convert": (
        "skysense.checkpoint_cli",
        "convert the official SkySense weights (.pth) into a skysense .safetensors checkpoint",
    ),
    "export": (
        "skysense.checkpoint_cli",
        "a pre-training run's checkpoint -> a skysense .safetensors encoder (load_pretrained reads it)",
    ),
    "pretrain": ("skysense.pretrain.cli", "self-supervised pre-training (MGCL + CMA + GCPL, EMA teacher)"),
    "finetune": (
        "skysense.tasks.cli",
        "fine-tune on a downstream task (classification, segmentation, change, detection)",
    ),
    "evaluate": (
        "skysense.tasks.cli",
        "score a fine-tuned checkpoint on a split; confusion and prediction PNGs",
    ),
    "demo": (
        "skysense.demo",
        "pre-train briefly on AID, linear-probe it, run real S1+S2 through the encoder; plots",
    ),
    "embed": ("skysense.inference_cli", "encoder features of a GeoTIFF scene of any size, tiled (resumable)"),
    "predict": ("skysense.inference_cli", "a fine-tuned checkpoint over GeoTIFF scenes: maps, scores, PNG"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``command``, only that command's module is imported (the others
    are listed by name and help line). An unknown ``command`` builds the full parser."""
    from skysense import __version__

    parser = argparse.ArgumentParser(
        prog="skysense",
        description="SkySense multi-modal remote-sensing foundation model (Guo et al., CVPR 2024).",
    )
    parser.add_argument("--version", action="version", version=f"skysense {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if command is None or (command and command not in COMMANDS):
        modules = [m for m, _ in COMMANDS.values()]
    else:
        modules = [COMMANDS[command][0]] if command else []
    for module in dict.fromkeys(modules):  # a failed import raises: never hide a broken subcommand
        importlib.import_module(module).add_commands(sub)
    for name, (_, help_line) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_line)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Each subcommand sets ``func``: a handler that returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as e:
        print(f"skysense {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
