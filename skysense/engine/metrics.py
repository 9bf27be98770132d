"""What a run writes as it goes: ``metrics.csv`` every step, TensorBoard, a progress bar, a loss curve.

Only rank 0 writes. On resume the rows after the checkpoint's step are dropped (they are redone), so
``metrics.csv`` of a killed and resumed run equals an uninterrupted one's, row for row.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from skysense.files import atomic_write


class MetricsLog:
    """Rows of ``{"step": n, name: float, ...}``: one per optimiser step."""

    def __init__(self, out_dir: Path, start: int, total: int, main: bool, progress: bool, desc: str) -> None:
        self.path, self.main = out_dir / "metrics.csv", main
        self.rows: list[dict[str, Any]] = []
        self.tb = None
        if main:
            self.rows = read_metrics(self.path, start) if start else []
            self.path.unlink(missing_ok=True)
            if self.rows:  # drop the steps after the checkpoint, they are redone
                write_metrics(self.path, list(self.rows[0]), self.rows)
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
        self.fields: list[str] = list(self.rows[0]) if self.rows else []
        self.bar = tqdm(total=total, initial=start, disable=not (main and progress), desc=desc)

    def log(self, row: dict[str, Any], postfix: bool) -> None:
        """Append ``row`` to the CSV (the first row fixes the columns); ``postfix``: also to the progress
        bar's text and TensorBoard."""
        if not self.main:
            return
        if not self.fields:
            self.fields = list(row)
        self.rows.append(row)
        if self.path.exists():
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.fields, restval="", extrasaction="ignore").writerow(row)
        else:
            write_metrics(self.path, self.fields, self.rows)
        if postfix:
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            if self.tb is not None:
                for k, v in row.items():
                    if k != "step":
                        self.tb.add_scalar(k, v, row["step"])
        self.bar.update(1)

    def log_validation(self, step: int, scores: dict[str, float]) -> None:
        """One row of ``validation.csv`` per validation (its columns fixed by the first), and TensorBoard."""
        if not self.main:
            return
        path = self.path.with_name("validation.csv")
        rows = read_metrics(path, step - 1) if path.exists() else []  # a resumed run redoes later ones
        write_metrics(path, ["step", *scores], [*rows, {"step": step, **scores}])
        self.bar.write(
            f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items() if "/" not in k)
        )
        if self.tb is not None:
            for k, v in scores.items():
                self.tb.add_scalar(f"val/{k}", v, step)

    def close(self, plot: Path | None = None, title: str = "") -> None:
        self.bar.close()
        if self.main and self.rows and plot is not None:
            plot_loss(self.rows, plot, title)
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def write_metrics(path: Path, fields: list[str], rows: Sequence[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fields, restval="", extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


# line styles that stay apart in greyscale and where curves overlap (the total often hides MGCL)
_STYLES = {"loss": ("k", "-", 2.2), "mgcl": ("tab:blue", "--", 1.4), "cma": ("tab:orange", ":", 1.6)}


def plot_loss(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """The total loss and its named parts against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    steps = [int(r["step"]) for r in rows]
    for key, (color, style, width) in _STYLES.items():
        if rows and rows[0].get(key, "") != "":
            label = {"loss": "total loss", "mgcl": "MGCL", "cma": "CMA"}[key]
            ax.plot(steps, [float(r[key]) for r in rows], color=color, ls=style, lw=width, label=label)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_title(title or "training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
