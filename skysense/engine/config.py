"""Run configs: the engine's fields, YAML files with ``key=value`` overrides, and config diffs.

Every config family is a dataclass read by :func:`skysense.config.from_dict`; a task's run config
subclasses :class:`EngineConfig`, so a YAML file stays one flat mapping of fields (nested sections for
the model, the data and the task).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from skysense.config import check_ranges, from_dict

C = TypeVar("C")
STRATEGIES = ("ddp", "fsdp")

# the least value of each numeric EngineConfig field that has one (checked when a config is built)
MINIMUM: dict[str, float] = {"steps": 1, "batch_size": 1, "log_every": 1}
MINIMUM |= dict.fromkeys(("warmup_steps", "ckpt_every", "stop_after", "eval_every"), 0)
MINIMUM |= dict.fromkeys(("lr", "min_lr", "clip_grad", "weight_decay", "weight_decay_end"), 0)


@dataclass
class EngineConfig:
    """What the loop needs of every run, whatever the task."""

    steps: int = 20
    batch_size: int = 4  # global, over all ranks
    lr: float = 5e-4  # peak, after warm-up
    min_lr: float = 1e-6
    warmup_steps: int = 2
    weight_decay: float = 0.04  # cosine from this ...
    weight_decay_end: float = 0.4  # ... to this
    clip_grad: float = 3.0  # max global gradient norm, 0 = off
    strategy: str = "ddp"  # under torchrun: ddp (replicas) or fsdp (FSDP2 fully_shard: sharded states)
    bf16: bool = True  # autocast of the forward (CPU and CUDA)
    grad_checkpointing: bool = False
    # torch.compile mode of the encoders and the fusion ("" = eager; "default", "reduce-overhead", ...):
    # on a GPU the tiny recipe waits on kernel dispatch (BENCHMARKS.md, GPU pre-training): compiling cuts it
    compile: str = ""
    seed: int = 0
    out_dir: str = "runs/run"
    log_every: int = 1  # progress-bar postfix and TensorBoard; metrics.csv gets every step
    ckpt_every: int = 10  # steps between checkpoints (and one at the end); 0 = none (benchmarks)
    stop_after: int = 0  # stop (checkpointed) after this many steps, as if killed; 0 = run to the end
    progress: bool = True
    eval_every: int = 0  # steps between validations of a task that validates (and one at the end)
    monitor: str = ""  # the validation metric whose best value keeps best.ckpt (higher is better)

    def __post_init__(self) -> None:
        check_ranges(f"{type(self).__name__} ", self, at_least=MINIMUM)


def apply_overrides(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``key.sub=value`` strings (values parsed as YAML) into a nested dict, in place."""
    import yaml

    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value, e.g. steps=20 or data.tile=32")
        *parents, last = key.split(".")
        node = d
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        try:
            node[last] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: not a YAML value ({_yaml_problem(e)})") from None
    return d


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping; a syntax error becomes one line naming the file, line, column and problem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: YAML syntax error: {_yaml_problem(e)}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(d).__name__}")
    return d


def _yaml_problem(e: Exception) -> str:
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if "\\t" in problem or "tab" in problem.lower():
        problem += " (YAML indents with spaces, never TABs)"
    return problem


def load_config(cls: type[C], path: str | Path | None, overrides: Sequence[str] = ()) -> C:
    """A ``cls`` config from a YAML file (or none: the defaults) and ``key=value`` overrides."""
    d = read_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(d, overrides))


def config_diff(old: Any, new: Any, where: str = "") -> list[str]:
    """Leaves that differ between two ``dataclasses.asdict`` configs, as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in config_diff(old.get(k), new.get(k), f"{where}{k}.")]
    plain = [list(x) if isinstance(x, tuple) else x for x in (old, new)]
    return [] if plain[0] == plain[1] else [f"{where[:-1]}: {old!r} -> {new!r}"]


def add_run_arguments(p: argparse.ArgumentParser, config_help: str) -> None:
    """The arguments of every training command: ``--config``, ``--resume``, ``--overwrite``, ``--threads``
    and ``key=value`` overrides."""
    from skysense.runtime import add_threads_argument

    p.add_argument("--config", metavar="PATH", required=True, help=config_help)
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.ckpt if present")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs in OUT_DIR")
    add_threads_argument(p)
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. steps=20 lr=1e-4"
    )
