"""``skysense pretrain``: the pre-training loop (paper Sec. 3.2 training) from a YAML config.

skysense pretrain --config configs/pretrain/tiny_cpu.yaml steps=20 lr=1e-4 data.tile=32
torchrun --nproc_per_node 2 -m skysense.pretrain.cli --config configs/pretrain/tiny_cpu.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> object:
    """A :class:`~skysense.pretrain.trainer.TrainConfig` from a YAML file and ``key=value`` overrides."""
    import yaml

    from skysense.pretrain.trainer import TrainConfig, apply_overrides, from_dict

    d: dict = {}
    if path is not None:
        with open(path) as f:
            d = yaml.safe_load(f) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields")
    return from_dict(TrainConfig, apply_overrides(d, overrides))


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from skysense.pretrain.trainer import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume)  # type: ignore[arg-type]
    if dist.is_initialized():  # a gloo rank can abort in interpreter shutdown: leave without it
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    print(f"pretrain: {result['step']} steps, outputs in {cfg.out_dir}")  # type: ignore[attr-defined]
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="YAML file of TrainConfig fields (configs/pretrain/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.ckpt if present")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. steps=20 data.tile=32"
    )
    p.set_defaults(func=run)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pre-training (MGCL + CMA + GCPL, EMA teacher)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="skysense-pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
