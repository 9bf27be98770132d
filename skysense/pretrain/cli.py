"""``skysense pretrain``: the pre-training loop (paper Sec. 3.2 training) from a YAML config.

skysense pretrain --config configs/pretrain/tiny_cpu.yaml steps=20 lr=1e-4 data.tile=32
torchrun --nproc_per_node 2 -m skysense.pretrain.cli --config configs/pretrain/tiny_cpu.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skysense.engine.config import add_run_arguments


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Any:
    """A :class:`~skysense.pretrain.trainer.TrainConfig` from a YAML file and ``key=value`` overrides."""
    from skysense.engine.config import load_config as load
    from skysense.pretrain.trainer import TrainConfig

    return load(TrainConfig, path, overrides)


def banner(cfg: Any) -> str:
    """One line of what runs: the model, the data, the budget and where the outputs go."""
    d = cfg.data
    return (
        f"pretrain: {cfg.preset} encoder ({', '.join(d.modalities)}) on {'+'.join(d.sources)}, "
        f"{cfg.steps} steps of {cfg.batch_size} samples, outputs in {cfg.out_dir}"
    )


def run(args: argparse.Namespace) -> int:
    from skysense.engine.distributed import exit_distributed
    from skysense.pretrain.trainer import train
    from skysense.runtime import apply_threads

    cfg = load_config(args.config, args.overrides)
    threads = apply_threads(args.threads)
    print(f"{banner(cfg)}; {threads} CPU thread(s)", flush=True)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    exit_distributed()  # under torchrun: leaves here
    print(f"pretrain: {result['step']} steps, outputs in {cfg.out_dir}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, "YAML file of TrainConfig fields, e.g. configs/pretrain/tiny_cpu.yaml")
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
    """``python -m skysense.pretrain.cli ...`` (what torchrun starts): ``skysense pretrain ...``."""
    from skysense.cli import main as skysense_main

    return skysense_main(["pretrain", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
