"""The ``skysense`` command line: one console script, one subcommand per job, ``--help`` everywhere."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _register_model(sub: argparse._SubParsersAction) -> None:
    from skysense import info

    info.add_commands(sub)


def _register_data(sub: argparse._SubParsersAction) -> None:
    from skysense.data import cli as data_cli

    data_cli.add_commands(sub)


def _register_checkpoint(sub: argparse._SubParsersAction) -> None:
    from skysense import checkpoint_cli

    checkpoint_cli.add_commands(sub)


def _register_pretrain(sub: argparse._SubParsersAction) -> None:
    from skysense.pretrain import cli as pretrain_cli

    pretrain_cli.add_commands(sub)


def _register_demo(sub: argparse._SubParsersAction) -> None:
    from skysense import demo

    demo.add_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skysense",
        description="SkySense multi-modal remote-sensing foundation model (Guo et al., CVPR 2024).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in (
        _register_model,
        _register_data,
        _register_checkpoint,
        _register_pretrain,
        _register_demo,
    ):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Each subcommand sets ``func``: a handler that returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"skysense {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
