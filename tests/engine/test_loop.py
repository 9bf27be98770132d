"""The engine on a task of its own (least squares): what fine-tuning tasks will rely on."""

import csv
from collections.abc import Mapping

import pytest
import torch
from torch import nn

from skysense.engine import EngineConfig, fit
from skysense.engine.distributed import Ranks
from skysense.engine.loop import batch_indices, set_hyperparameters
from skysense.engine.state import load_checkpoint


class _Step(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch, scale):
        err = self.model(batch["x"]).squeeze(-1) - batch["y"]
        return {"loss": scale * err.pow(2).mean(), "mae": err.abs().mean()}, {"batch": float(len(err))}


class LeastSquares:
    """y = x @ w + b with noise; the loss scale is a 'schedule' passed explicitly each step."""

    name = "least-squares"

    def __init__(self, poison_at: int = -1, validates: bool = False) -> None:
        self.poison_at, self.updates, self.validates, self.validations = poison_at, 0, validates, 0

    def setup(self, ranks: Ranks, fresh: bool) -> None:
        torch.manual_seed(1)
        self.model = nn.Linear(3, 1).to(ranks.device)
        self.trained, self.step_module = self.model, _Step(self.model)

    def modules(self) -> Mapping[str, nn.Module]:
        return {"model": self.model}

    def param_groups(self):
        return [
            {"params": [self.model.weight], "name": "decay"},
            {"params": [self.model.bias], "name": "no_decay", "lr_scale": 0.5, "weight_decay": 0.0},
        ]

    def compiled(self):
        return [self.model]

    def dataset(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(24, 3, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.01 * torch.randn(24, generator=g)
        return [{"x": x[i], "y": y[i]} for i in range(24)]

    def step_args(self, step, gen):
        scale = float("nan") if step == self.poison_at else 1.0
        return {"scale": scale}, {"scale": scale}

    def after_forward(self, ranks):
        pass

    def grad_monitors(self):
        return {"grad/model": float(self.model.weight.grad.norm())}

    def after_update(self, step):
        self.updates += 1

    def meta(self):
        return {"task": "least squares"}

    def validate(self):
        if not self.validates:
            return None
        self.validations += 1
        with torch.no_grad():  # a fixed score sequence: best at the second validation
            return {"score": [1.0, 3.0, 2.0, 2.5][self.validations - 1], "mse": 0.0}


def config(out, **kw):
    base = dict(
        steps=60,
        batch_size=8,
        lr=0.2,
        min_lr=0.0,
        warmup_steps=3,
        weight_decay=0.0,
        weight_decay_end=0.0,
        bf16=False,
        out_dir=str(out),
        ckpt_every=5,
        progress=False,
    )
    return EngineConfig(**{**base, **kw})


def test_fit_trains_a_task_of_its_own_and_logs_every_step(tmp_path):
    task = LeastSquares()
    got = fit(task, config(tmp_path / "run"))
    assert got["step"] == 60 and got["samples"] == 24 and task.updates == 60
    assert got["losses"][-1] < 0.01 * got["losses"][0]  # it learns
    w = task.model.weight.detach().flatten()
    torch.testing.assert_close(w, torch.tensor([1.0, -2.0, 0.5]), atol=0.1, rtol=0)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    assert {"lr", "wd", "scale", "loss", "mae", "grad_norm", "grad/model", "batch", "time"} <= set(rows[0])
    assert float(rows[0]["lr"]) == pytest.approx(0.2 / 3) and float(rows[-1]["batch"]) == 8
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_fit_resumes_a_task_exactly(tmp_path):
    full = fit(LeastSquares(), config(tmp_path / "full"))
    part = fit(LeastSquares(), config(tmp_path / "cut", stop_after=10))
    rest = fit(LeastSquares(), config(tmp_path / "cut"), resume=True)
    assert part["losses"] + rest["losses"] == full["losses"]  # bit for bit
    a, b = (load_checkpoint(tmp_path / d / "last.ckpt") for d in ("full", "cut"))
    assert torch.equal(a["model"]["weight"], b["model"]["weight"])
    assert set(a["optimizer"]["state"]) == {"weight", "bias"}  # keyed by parameter name
    assert a["meta"] == {"task": "least squares"}


def test_group_lr_scale_and_no_decay():
    p, q = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW(
        [
            {"params": [p], "name": "decay"},
            {"params": [q], "name": "no_decay", "lr_scale": 0.9, "weight_decay": 0.0},
        ]
    )
    lr, wd = set_hyperparameters(opt, 0, EngineConfig(steps=10, lr=1.0, warmup_steps=0, weight_decay=0.1))
    assert (lr, wd) == pytest.approx((1.0, 0.1))
    assert opt.param_groups[0]["lr"] == 1.0 and opt.param_groups[0]["weight_decay"] == wd
    assert opt.param_groups[1]["lr"] == 0.9 and opt.param_groups[1]["weight_decay"] == 0.0


def test_a_nan_step_stops_before_the_update(tmp_path):
    task = LeastSquares(poison_at=7)
    with pytest.raises(
        FloatingPointError, match=r"step 8: the gradient norm is nan .*\(step 5\), is untouched"
    ):
        fit(task, config(tmp_path / "run"))
    assert task.updates == 7 and torch.isfinite(task.model.weight).all()
    assert load_checkpoint(tmp_path / "run" / "last.ckpt")["step"] == 5


def test_batch_order_is_a_function_of_seed_and_epoch_and_splits_over_ranks():
    a = [batch_indices(s, 5, 2, seed=3) for s in range(5)]
    flat = sum(a, [])
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    ranks = [batch_indices(1, 5, 4, 3, r, 2) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(batch_indices(1, 5, 4, 3))


def test_validation_keeps_the_best_checkpoint(tmp_path):
    import json

    task = LeastSquares(validates=True)
    fit(task, config(tmp_path / "run", steps=40, eval_every=10, monitor="score"))
    assert task.validations == 4  # steps 10, 20, 30, 40 (the end)
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert (best["metric"], best["value"], best["step"]) == ("score", 3.0, 20)
    assert load_checkpoint(tmp_path / "run" / "best.ckpt")["step"] == 20
    rows = list(csv.DictReader((tmp_path / "run" / "validation.csv").open()))
    assert [(r["step"], r["score"]) for r in rows] == [
        ("10", "1.0"),
        ("20", "3.0"),
        ("30", "2.0"),
        ("40", "2.5"),
    ]
    with pytest.raises(ValueError, match=r"monitor='oa': the task reports \['mse', 'score'\]"):
        fit(LeastSquares(validates=True), config(tmp_path / "bad", steps=10, monitor="oa"))


def test_overwrite_starts_the_best_score_afresh(tmp_path):
    """A run that overwrites an earlier one keeps its own best.ckpt, not the earlier run's best score."""
    import json

    fit(LeastSquares(validates=True), config(tmp_path / "run", steps=20, eval_every=10, monitor="score"))
    assert json.loads((tmp_path / "run" / "best.json").read_text())["value"] == 3.0
    with pytest.raises(FileExistsError, match="holds an earlier run"):
        fit(LeastSquares(validates=True), config(tmp_path / "run", steps=10, monitor="score"))
    again = fit(
        LeastSquares(validates=True), config(tmp_path / "run", steps=10, monitor="score"), overwrite=True
    )
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert (best["value"], best["step"]) == (1.0, 10) and again["step"] == 10
    rows = list(csv.DictReader((tmp_path / "run" / "validation.csv").open()))
    assert [r["step"] for r in rows] == ["10"]  # the earlier run's rows are gone
