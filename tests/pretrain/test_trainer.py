"""The pre-training loop: schedules, exact resume, atomic checkpoints, outputs, CLI, 2-rank gloo DDP."""

import argparse
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from skysense.config import get_preset
from skysense.data.sources import MODEL_KEYS, DataConfig, build_dataset, data_root
from skysense.engine import state
from skysense.engine.loop import batch_indices
from skysense.engine.schedules import lr_at, wd_at
from skysense.engine.state import load_checkpoint
from skysense.pretrain import trainer
from skysense.pretrain.cli import add_commands, load_config
from skysense.pretrain.heads import HeadConfig
from skysense.pretrain.losses import LossConfig
from skysense.pretrain.step import PretrainConfig
from skysense.pretrain.trainer import (
    TrainConfig,
    dense_ramp_at,
    loss_at,
    param_groups,
    teacher_temp_at,
    train,
)

ROOT = Path(__file__).resolve().parents[2]


def tiny_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(
        preset="tiny",
        steps=4,
        batch_size=2,
        warmup_steps=2,
        out_dir=str(out),
        ckpt_every=100,
        progress=False,
        data=DataConfig(modalities=("hr", "s2", "s1"), tile=16, hr_tile=64, num_samples=5),
        pretrain=PretrainConfig(
            heads=HeadConfig(hidden_dim=32, bottleneck_dim=16, out_dim=32), loss=LossConfig(num_clusters=2)
        ),
    )
    base.update(kw)
    return TrainConfig(**base)


def test_lr_and_wd_schedules():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=4, steps=12, weight_decay=0.04, weight_decay_end=0.4)
    got = [lr_at(s, cfg) for s in (0, 1, 3, 4, 8, 12)]
    assert got == pytest.approx([0.25, 0.5, 1.0, 1.0, 0.5, 0.0], abs=1e-12)
    assert lr_at(6, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert [wd_at(s, cfg) for s in (0, 6, 12)] == pytest.approx([0.04, 0.22, 0.4])
    cfg.min_lr = 0.1
    assert lr_at(12, cfg) == pytest.approx(0.1) and lr_at(8, cfg) == pytest.approx(0.55)


def test_teacher_temperature_warm_up():
    cfg = TrainConfig(teacher_temp_start=0.04, teacher_temp_warmup_steps=4)
    cfg.pretrain.loss.teacher_temp = 0.08
    assert [teacher_temp_at(s, cfg) for s in (0, 1, 2, 4, 9)] == pytest.approx([0.04, 0.05, 0.06, 0.08, 0.08])
    cfg.teacher_temp_warmup_steps = 0
    assert teacher_temp_at(0, cfg) == 0.08


def test_dense_weights_ramp_in_linearly():
    cfg = TrainConfig(dense_warmup_steps=4, teacher_temp_warmup_steps=4)
    cfg.pretrain.loss.weights, cfg.pretrain.loss.teacher_temp = {"pix": 0.5, "img": 2.0}, 0.08
    got = [loss_at(s, cfg) for s in (0, 1, 2, 4, 9)]
    assert [lc.weight("pix") for lc in got] == pytest.approx([0.0, 0.125, 0.25, 0.5, 0.5])
    assert [lc.weight("obj") for lc in got] == pytest.approx([0.0, 0.25, 0.5, 1.0, 1.0])
    assert all(lc.weight("img") == 2.0 for lc in got)  # the image level is never ramped
    assert [lc.teacher_temp for lc in got] == pytest.approx([0.04, 0.05, 0.06, 0.08, 0.08])
    assert cfg.pretrain.loss.weights == {"pix": 0.5, "img": 2.0}  # the run's config is left alone
    cfg.dense_warmup_steps = 0
    assert dense_ramp_at(0, cfg) == 1.0 and loss_at(0, cfg).weights == {"pix": 0.5, "img": 2.0}


@pytest.mark.slow
def test_dense_ramp_weighs_the_logged_terms(tmp_path):
    """The total is sum_g ramp_g * L_g of the logged terms: step 1 image level only, step 2 half dense."""
    import csv

    train(
        tiny_cfg(
            tmp_path,
            steps=2,
            dense_warmup_steps=2,
            pretrain=PretrainConfig(
                heads=HeadConfig(hidden_dim=32, bottleneck_dim=16, out_dim=32),
                loss=LossConfig(num_clusters=2, cma=False),
            ),
        )
    )
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    for row, ramp in zip(rows, (0.0, 0.5)):
        terms = {k: float(v) for k, v in row.items() if k.split("/")[0] in ("pix", "obj", "img")}
        dense = sum(v for k, v in terms.items() if not k.startswith("img"))
        assert float(row["dense_ramp"]) == ramp and dense > 0
        want = sum(v for k, v in terms.items() if k.startswith("img")) + ramp * dense
        assert float(row["loss"]) == pytest.approx(want, rel=1e-5)


def test_param_groups_skip_norms_biases_tokens_prototypes():
    from skysense.models.skysense import build_model
    from skysense.pretrain.step import build_pretrain

    student, _, _ = build_pretrain(build_model("tiny"), PretrainConfig())
    names = {id(p): n for n, p in student.named_parameters()}
    decay, no_decay = (
        {names[id(p)] for p in g["params"]} for g in param_groups(student)
    )  # frozen GCPL prototypes are in neither
    assert "backbone.encoders.s2.cls_token" in no_decay and "backbone.encoders.s2.pos_embed" in no_decay
    assert "heads.heads.s2.prototypes.weight" in no_decay
    assert all(n.endswith("bias") for n in no_decay if ".qkv." in n or ".fc1." in n)
    assert "backbone.encoders.s2.patch_embed.projection.weight" in decay
    assert "backbone.geo.prototypes" not in decay | no_decay
    assert not any("norm" in n for n in decay)


def test_grad_norms_by_part_match_a_float64_sum_of_squares():
    from skysense.models.skysense import build_model
    from skysense.pretrain.step import build_pretrain

    student, _, _ = build_pretrain(build_model("tiny"), PretrainConfig())
    gen = torch.Generator().manual_seed(0)
    for i, p in enumerate(student.parameters()):  # every fifth tensor without a gradient
        # each tensor's norm ~ 1 to 3, so leaving one out moves a part's norm by far more than fp32's
        # error on a 2M-value tensor (~1e-4 relative)
        grad = torch.randn(p.shape, generator=gen) * (1 + i % 3) / p.numel() ** 0.5
        p.grad = None if i % 5 == 0 else grad
    got = trainer.grad_norms_by_part(student)
    bb = student.backbone
    parts = {**{f"enc_{m}": e for m, e in bb.encoders.items()}, "align": bb.align, "fusion": bb.fusion}
    parts.update(geo=bb.geo, heads=student.heads)
    for name, part in parts.items():
        squares = [p.grad.double().pow(2).sum() for p in part.parameters() if p.grad is not None]
        assert got[f"grad/{name}"] == pytest.approx(float(sum(squares)) ** 0.5, rel=3e-4), name


def test_data_order_is_a_function_of_seed_and_epoch():
    a = [batch_indices(s, 5, 2, seed=3) for s in range(5)]
    assert a == [batch_indices(s, 5, 2, seed=3) for s in range(5)]
    flat = sum(a, [])
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))  # every epoch
    ranks = [batch_indices(1, 5, 4, 3, r, 2) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(batch_indices(1, 5, 4, 3))


def initial_checkpoint(out: Path, **kw) -> dict:
    """The checkpoint of a one-step run at lr 0: it holds the run's initial weights."""
    cfg = tiny_cfg(out, steps=1, lr=0.0, min_lr=0.0, **kw)
    cfg.pretrain.loss.gcpl = False  # GCPL moves the prototypes whatever the lr
    train(cfg)
    return load_checkpoint(out / "last.ckpt")


@pytest.mark.slow
def test_init_seed_sets_the_weights_alone(tmp_path):
    def weights(name, **kw):
        return initial_checkpoint(tmp_path / name, **kw)["student"]

    a, b, c = weights("a", seed=2, init_seed=0), weights("b", seed=0), weights("c", seed=2)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the weights of seed 0 ...
    assert not all(torch.equal(a[k], c[k]) for k in a)  # ... not those of the run's own seed


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_a_checkpoints_weights(tmp_path):
    src = initial_checkpoint(tmp_path / "src", seed=0)
    new = initial_checkpoint(tmp_path / "new", seed=2, init_from=str(tmp_path / "src" / "last.ckpt"))
    own = initial_checkpoint(tmp_path / "own", seed=2)
    assert all(torch.equal(new["student"][k], src["student"][k]) for k in src["student"])
    # the teacher starts as their copy (one EMA step of equal weights: equal up to rounding)
    assert all(torch.allclose(new["teacher"][k], src["student"][k], atol=1e-6) for k in src["student"])
    assert not all(torch.equal(own["student"][k], src["student"][k]) for k in src["student"])

    other = tiny_cfg(tmp_path / "other", steps=1, init_from=str(tmp_path / "src" / "last.ckpt"))
    other.pretrain.heads.out_dim = 96
    with pytest.raises(ValueError, match="another model or heads config"):
        train(other)
    with pytest.raises(FileNotFoundError, match="no such file"):
        train(tiny_cfg(tmp_path / "none", steps=1, init_from=str(tmp_path / "missing.ckpt")))


@pytest.mark.slow
def test_resume_is_bit_exact_and_outputs(tmp_path):
    full = train(tiny_cfg(tmp_path / "full"))
    part = train(tiny_cfg(tmp_path / "cut", stop_after=2))
    assert len(part["losses"]) == 2 and part["step"] == 2
    rest = train(tiny_cfg(tmp_path / "cut"), resume=True)
    assert part["losses"] + rest["losses"] == full["losses"]  # bit for bit
    a, b = load_checkpoint(tmp_path / "full" / "last.ckpt"), load_checkpoint(tmp_path / "cut" / "last.ckpt")
    assert a["step"] == b["step"] == 4
    for key in ("student", "teacher", "centers"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key

    ck = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)
    assert {"student", "teacher", "centers", "optimizer", "step", "rng", "data"} <= set(ck)
    assert {"torch", "views", "python", "numpy"} <= set(ck["rng"][0])
    out = tmp_path / "cut"
    lines = (out / "metrics.csv").read_text().splitlines()
    cols = lines[0].split(",")
    assert {"step", "lr", "wd", "momentum", "loss", "mgcl", "cma", "grad_norm", "teacher_entropy"} <= set(
        cols
    )
    assert {"pix/hr", "img/fused", "feature_std"} <= set(cols)
    assert [int(r.split(",")[0]) for r in lines[1:]] == [1, 2, 3, 4]  # resumed rows not duplicated
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_resume_of_a_position_keyed_optimiser_state_is_exact(tmp_path):
    """Older checkpoints keyed AdamW's state by position (``opt.state_dict()``); they still resume
    exactly without FSDP. Built here from a name-keyed one, in the trainer's group order."""
    full = train(tiny_cfg(tmp_path / "full"))
    part = train(tiny_cfg(tmp_path / "old", stop_after=2))
    path = tmp_path / "old" / "last.ckpt"
    ck = torch.load(path, weights_only=True)
    assert ck["optimizer_format"] == "fqn"
    cfg = tiny_cfg(tmp_path / "old")
    student, _, _ = trainer.build_pretrain(trainer.initial_encoder(cfg), cfg.pretrain)
    names = {id(p): n for n, p in student.named_parameters()}
    order = [names[id(p)] for g in trainer.param_groups(student) for p in g["params"]]
    groups, start = [], 0
    for g in ck["optimizer"]["param_groups"]:
        groups.append({**g, "params": list(range(start, start + len(g["params"])))})
        start += len(g["params"])
    assert [n for g in ck["optimizer"]["param_groups"] for n in g["params"]] == order
    state = {i: ck["optimizer"]["state"][n] for i, n in enumerate(order) if n in ck["optimizer"]["state"]}
    ck.update(optimizer={"state": state, "param_groups": groups}, optimizer_format="index")
    torch.save(ck, path)
    rest = train(cfg, resume=True)
    assert part["losses"] + rest["losses"] == full["losses"]  # bit for bit


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_another_config_or_a_damaged_one(tmp_path):
    train(tiny_cfg(tmp_path / "run", steps=2))
    other = tiny_cfg(tmp_path / "run", pretrain=PretrainConfig(heads=HeadConfig(32, 16, 16)))
    with pytest.raises(ValueError, match=r"does not fit .* differs in: pretrain.heads.out_dim: 32 -> 16;"):
        train(other, resume=True)
    path = tmp_path / "run" / "last.ckpt"
    for damaged in (path.read_bytes()[:1000], b"hello"):
        path.write_bytes(damaged)
        with pytest.raises(
            ValueError, match="not a readable checkpoint .* delete it to start the run afresh"
        ):
            train(tiny_cfg(tmp_path / "run"), resume=True)
    torch.save({"student": {}, "code": argparse.Namespace()}, path)  # an object weights_only refuses
    with pytest.raises(ValueError, match="refused unread: it holds Python objects"):
        train(tiny_cfg(tmp_path / "run"), resume=True)


@pytest.mark.slow
def test_a_non_finite_step_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    step = trainer.pretrain_step
    calls = []

    def poisoned(*args, **kwargs):  # the third step's loss turns NaN, as a diverging run's would
        out = step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            out.losses["loss"] = out.losses["loss"] * float("nan")
        return out

    monkeypatch.setattr(trainer, "pretrain_step", poisoned)
    with pytest.raises(
        FloatingPointError, match=r"step 3: the gradient norm is nan .* \(step 2\), is untouched"
    ):
        train(tiny_cfg(tmp_path / "run", ckpt_every=2))
    ck = load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["student"].values())
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 1 + 2


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    state.save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def broken(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        state.save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert load_checkpoint(path)["step"] == 1


def test_cli_configs_and_overrides(tmp_path):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["pretrain", "--config", str(ROOT / "configs/pretrain/tiny_cpu.yaml"), "--resume", "steps=3"]
        + ["lr=1e-4", "pretrain.loss.num_clusters=2", "data.modalities=[s2]"]
    )
    assert args.resume and callable(args.func)
    cfg = load_config(args.config, args.overrides)
    assert (cfg.steps, cfg.lr, cfg.pretrain.loss.num_clusters) == (3, 1e-4, 2)
    assert cfg.data.modalities == ("s2",) and cfg.data.sources == ("sen1floods11",) and cfg.bf16
    configs = sorted((ROOT / "configs/pretrain").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:  # every shipped config parses into known fields
        load_config(path)
    assert load_config(ROOT / "configs/pretrain/huge_gpu.yaml").grad_checkpointing
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        load_config(None, ["stepz=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps=abc", "TrainConfig steps='abc': expected a whole number"),
        ("init_seed=2.5", "TrainConfig init_seed=2.5: expected a whole number"),
        ("bf16=maybe", "TrainConfig bf16='maybe': expected true or false"),
        ("compile=1", "TrainConfig compile=1: expected a string"),
        ("data.tile=abc", "DataConfig tile='abc': expected a whole number"),
        ("batch_size=0", "TrainConfig batch_size=0: must be at least 1"),
        ("lr=-1", "TrainConfig lr=-1.0: must be at least 0"),
        ("ema_momentum=1.5", r"TrainConfig ema_momentum=1.5: must be in \[0, 1\]"),
        ("data.tile=0", "data.tile=0: must be at least 1"),
        ("data.modalities=[s3]", r"data.modalities: unknown \['s3'\]: use hr, s2, s1"),
        ("pretrain.loss.teacher_temp=0", "pretrain.loss.teacher_temp=0.0: must be above 0"),
        ("pretrain.loss.num_clusters=0", "pretrain.loss.num_clusters=0: must be at least 1"),
        ("pretrain.loss.gcpl_momentum=2", r"pretrain.loss.gcpl_momentum=2.0: must be in \[0, 1\]"),
        ("pretrain.heads.out_dim=0", "pretrain.heads.out_dim=0: must be at least 1"),
        ("pretrain.views.hflip=2", r"pretrain.views.hflip=2.0: must be in \[0, 1\]"),
        ("pretrain.views.scale=[0.5,0.2]", r"pretrain.views.scale=\(0.5, 0.2\): need 0 < low <= high <= 1"),
        ("pretrain.views.num_dates={s2: 0}", r"pretrain.views.num_dates: \{'s2': 0\}: every value must be"),
    ],
)
def test_bad_config_values_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_config_values_that_mean_a_whole_number_are_taken():
    cfg = load_config(None, ["steps=1e3", "warmup_steps=10.0", "init_seed=null", "data.tile=32"])
    assert (cfg.steps, cfg.warmup_steps, cfg.init_seed, cfg.data.tile) == (1000, 10, None, 32)
    assert all(type(v) is int for v in (cfg.steps, cfg.warmup_steps, cfg.data.tile))


@pytest.mark.data
def test_real_sen1floods11_tiles():
    root = data_root(DataConfig())
    if not (root / "sen1floods11").exists():
        pytest.skip(f"no Sen1Floods11 chip under {root} (set SKYSENSE_DATA)")
    data = build_dataset(DataConfig(sources=("sen1floods11",), modalities=("s2", "s1"), tile=64))
    assert len(data) == 64
    s = data[0]
    assert s["s2"].shape == (1, 10, 64, 64) and s["s1"].shape == (1, 2, 64, 64)
    assert set(s) == {"s2", "s1", "s2_dates", "s1_dates", "lat", "lon"}
    assert torch.isfinite(s["s2"]).all() and s["s2"].abs().mean() < 10  # normalised
    with pytest.raises(ValueError, match="data.tile=1024: larger than every image of .'sen1floods11'"):
        build_dataset(DataConfig(sources=("sen1floods11",), modalities=("s2", "s1"), tile=1024))


@pytest.mark.data
@pytest.mark.slow
def test_real_slovenia_series_trains_fusion_and_geo_context(tmp_path):
    """The 68-date NDVI series (1-band s2, real dates and location): no NaN, the fusion and geo-context
    modules get gradients, GCPL moves the prototypes of the patch's region and only those."""
    import csv

    root = data_root(DataConfig())
    if not (root / "eolearn_slovenia").exists():
        pytest.skip(f"no eo-learn Slovenia patch under {root} (set SKYSENSE_DATA)")
    cfg = load_config(
        ROOT / "configs/pretrain/slovenia_cpu.yaml",
        [
            f"out_dir={tmp_path}",
            "steps=2",
            "batch_size=2",
            "progress=false",
            "pretrain.views.num_dates={s2: 6}",
        ],
    )
    data = build_dataset(cfg.data)
    assert len(data) == 9 and data[0]["s2"].shape == (68, 1, 32, 32)
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 2
    for r in rows:
        assert all(math.isfinite(float(v)) for v in r.values())
        assert float(r["grad/fusion"]) > 0 and float(r["grad/geo"]) > 0 and float(r["grad/enc_s2"]) > 0
        assert float(r["gcpl_regions"]) == 1 and float(r["gcpl_shift"]) > 0
    torch.manual_seed(cfg.seed)
    init = trainer.build_model(trainer.model_config(cfg)).geo.prototypes
    ck = load_checkpoint(tmp_path / "last.ckpt")
    moved = (ck["student"]["backbone.geo.prototypes"] - init).flatten(1).abs().amax(1) > 0
    region = int(trainer.build_model(trainer.model_config(cfg)).geo.regions(data[0]["lat"], data[0]["lon"]))
    assert moved.nonzero().flatten().tolist() == [region]


@pytest.mark.data
@pytest.mark.slow
def test_aid_source_is_hr_only(tmp_path):
    with pytest.raises(ValueError, match="hr only"):
        build_dataset(DataConfig(sources=("aid",), modalities=("s2",)))
    with pytest.raises(ValueError, match="hr imagery aligned"):
        build_dataset(DataConfig(sources=("sen1floods11",), modalities=("hr", "s2")))
    root = data_root(DataConfig())
    if not (root / "aid").exists():
        pytest.skip(f"no AID under {root} (set SKYSENSE_DATA)")
    data = build_dataset(DataConfig(sources=("aid",), modalities=("hr",), split="val", hr_tile=32))
    assert len(data) == 676 and data[0]["hr"].shape == (3, 32, 32)


DDP_SCRIPT = """
import os, sys, torch
import torch.distributed as dist
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_trainer import tiny_cfg
from skysense.pretrain.trainer import DataConfig, train
from pathlib import Path
out = Path({out!r})
data = DataConfig(modalities=("s2", "s1"), tile=16, num_samples=4)
cfg = tiny_cfg(out / "run", steps=2, ckpt_every=1, data=data, model={{"hr": None}})
res = train(cfg)
torch.save(res["teacher"], out / f"teacher{{dist.get_rank()}}.pt")
"""


def subprocess_env() -> dict[str, str]:
    """Environment of a child Python: one thread, the repository first on a caller's PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)


# Each rank writes its pid first: torch's launcher starts ranks in sessions of their own, so killing the
# launcher's process group on a time-out would leave them running (and writing) for the rest of the suite.
PIDFILE = """import os as _os, pathlib as _pathlib
_pathlib.Path({out!r}, "pid" + _os.environ["RANK"]).write_text(str(_os.getpid()))
"""


# Every rank leaves through the process group's teardown and os._exit: a gloo rank can abort in interpreter
# shutdown otherwise.
EPILOGUE = """
import os as _os, sys as _sys, torch.distributed as _dist
_dist.barrier()
_dist.destroy_process_group()
_sys.stdout.flush()
_os._exit(0)
"""


def _kill_all(proc: subprocess.Popen, tmp_path: Path) -> None:
    """SIGKILL the launcher's group and every rank that wrote its pid."""
    for pidfile in tmp_path.glob("pid[0-9]*"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _torchrun(script_text: str, tmp_path: Path, timeout: int = 480, **fields: str) -> None:
    """Run a script under torchrun with 2 CPU ranks (gloo); fail with its stderr. The bound holds on a
    2-core machine that is busy with other work (the scripts take 1-3 minutes on an idle one)."""
    script = tmp_path / "dist.py"
    text = (PIDFILE + script_text + EPILOGUE).format(
        tests=str(Path(__file__).parent), out=str(tmp_path), **fields
    )
    script.write_text(textwrap.dedent(text))
    env = subprocess_env()
    with socket.socket() as sock:  # a free port (port 0 leaves rank 1 waiting)
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    proc = subprocess.Popen(
        [*cmd, str(script)],
        env=env,
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_all(proc, tmp_path)
        pytest.fail(f"2-rank run did not finish in {timeout} s (its launcher and ranks were killed)")
    except BaseException:  # pytest-timeout, Ctrl-C: no rank outlives the test either
        _kill_all(proc, tmp_path)
        raise
    if proc.returncode != 0:
        (tmp_path / "stderr.txt").write_text(err)
        first = [line for line in err.splitlines() if "Error" in line or "what():" in line][:6]
        pytest.fail("2-rank run failed; first errors:\n" + "\n".join(first) + "\n...\n" + err[-2000:])


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_time_out_kills_every_rank(tmp_path):
    """A hung 2-rank run is killed whole: no rank outlives the test."""
    with pytest.raises(pytest.fail.Exception, match="did not finish in 20 s"):
        _torchrun("import time\ntime.sleep(600)\n", tmp_path, timeout=20)
    pids = [int(p.read_text()) for p in tmp_path.glob("pid[0-9]*")]
    assert len(pids) == 2, "the ranks did not start in 20 s: the case is not exercised"
    time.sleep(0.5)
    for pid in pids:  # gone, or a zombie nobody has reaped yet: either way it runs no more
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "\nState:\tZ" in status.read_text(), f"rank {pid} still runs"


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_two_ranks_gloo(tmp_path):
    _torchrun(DDP_SCRIPT, tmp_path)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["last.ckpt", "loss_curve.png", "metrics.csv"]
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header + 2 steps, rank 0 only
    t0, t1 = (torch.load(tmp_path / f"teacher{r}.pt", weights_only=True) for r in range(2))
    assert all(torch.equal(t0[k], t1[k]) for k in t0)
    assert len(load_checkpoint(run / "last.ckpt")["rng"]) == 2


FSDP_SCRIPT = """
import os, sys, json, torch
import torch.distributed as dist
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_trainer import tiny_cfg
from skysense.pretrain.trainer import DataConfig, train
from pathlib import Path
out = Path({out!r})
def cfg(name, **kw):
    data = DataConfig(modalities=("s2", "s1"), tile=16, num_samples=4)
    return tiny_cfg(out / name, steps=3, ckpt_every=1, bf16=False, data=data, model={{"hr": None}}, **kw)
ddp = train(cfg("ddp", strategy="ddp"))
fsdp = train(cfg("fsdp", strategy="fsdp"))
first = train(cfg("resumed", strategy="fsdp", stop_after=2))
second = train(cfg("resumed", strategy="fsdp"), resume=True)
import time
from skysense.engine import state
save = state.save_checkpoint
def slow_save(*a):  # a slow disk: rank 1 must not resume from the checkpoint before this one
    time.sleep(1.0)
    save(*a)
state.save_checkpoint = slow_save
ddp_first = train(cfg("switched", strategy="ddp", stop_after=2))
fsdp_then = train(cfg("switched", strategy="fsdp"), resume=True)
state.save_checkpoint = save
if dist.get_rank() == 0:
    json.dump({{"ddp": ddp["losses"], "fsdp": fsdp["losses"], "resumed": first["losses"] + second["losses"],
               "switched": ddp_first["losses"] + fsdp_then["losses"]}}, open(out / "losses.json", "w"))
    torch.save(ddp["teacher"], out / "teacher_ddp.pt")
    torch.save(fsdp["teacher"], out / "teacher_fsdp.pt")
"""


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp2_two_ranks_matches_ddp_and_resumes_exactly(tmp_path, capsys):
    """FSDP2 (sharded student, teacher, AdamW states) does the same maths as DDP; kill + resume is exact;
    a DDP checkpoint resumes under FSDP and an FSDP one in a single process."""
    import json

    _torchrun(FSDP_SCRIPT, tmp_path)
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert len(losses["ddp"]) == len(losses["fsdp"]) == 3
    assert losses["fsdp"] == pytest.approx(losses["ddp"], rel=1e-4)  # reduction order differs, not the maths
    assert losses["resumed"] == losses["fsdp"]  # bit-exact
    assert losses["switched"] == pytest.approx(losses["ddp"], rel=1e-4)  # DDP checkpoint, FSDP resume
    t_ddp = torch.load(tmp_path / "teacher_ddp.pt", weights_only=True)
    t_fsdp = torch.load(tmp_path / "teacher_fsdp.pt", weights_only=True)
    assert t_ddp.keys() == t_fsdp.keys()  # full (unsharded) states, the same keys
    for k in t_ddp:
        assert t_fsdp[k].shape == t_ddp[k].shape, k
        torch.testing.assert_close(t_fsdp[k].float(), t_ddp[k].float(), rtol=1e-3, atol=1e-4, msg=k)
    ck = load_checkpoint(tmp_path / "fsdp" / "last.ckpt")
    assert ck["optimizer_format"] == "fqn" and ck["step"] == 3
    model = trainer.load_encoder(tmp_path / "fsdp" / "last.ckpt")  # loads like any checkpoint
    assert sum(p.numel() for p in model.parameters()) > 0
    again = trainer.load_encoder(ck).state_dict()  # the dict already read gives the same encoder
    for k, v in model.state_dict().items():
        assert torch.equal(again[k], v), k
        assert torch.equal(v, ck["teacher"]["backbone." + k]), k
    # the FSDP run goes on in one process: its optimiser state carries over (AdamW's step count)
    import shutil

    shutil.copytree(tmp_path / "fsdp", tmp_path / "alone")
    data = DataConfig(modalities=("s2", "s1"), tile=16, num_samples=4)
    cfg = tiny_cfg(tmp_path / "alone", steps=4, ckpt_every=1, bf16=False, data=data, model={"hr": None})
    assert len(train(cfg, resume=True)["losses"]) == 1
    assert "checkpoint from 2 rank(s), now 1" in capsys.readouterr().out
    state = load_checkpoint(tmp_path / "alone" / "last.ckpt")["optimizer"]["state"]
    embed = next(k for k in ck["optimizer"]["state"] if "patch_embed" in k and k.endswith("weight"))
    assert float(ck["optimizer"]["state"][embed]["step"]) == 3 and float(state[embed]["step"]) == 4


SKIP_SCRIPT = """
import os, sys, json, torch
import torch.distributed as dist
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_trainer import tiny_cfg
import skysense.pretrain.losses as L
from skysense.pretrain.trainer import DataConfig, train
from pathlib import Path
out = Path({out!r})
empty = [0]
contrast = L.contrast
def counting(student, *a):
    empty[0] += student.shape[0] == 0
    return contrast(student, *a)
L.contrast = counting
from skysense.pretrain.heads import HeadConfig
from skysense.pretrain.step import PretrainConfig
heads = HeadConfig(hidden_dim=32, bottleneck_dim=16, out_dim=32)
loss = L.LossConfig(num_clusters=2, gcpl=False)
kw = dict(steps=2, bf16=False, model={{"hr": {{"depths": [1, 1, 1, 1]}}, "s2": None, "s1": None}},
          data=DataConfig(modalities=("hr",), hr_tile=64, num_samples=4),
          pretrain=PretrainConfig(heads=heads, loss=loss))
variants = {variants}
runs = {{name: train(tiny_cfg(out / name, strategy=s, compile=c, grad_checkpointing=g, **kw))
        for name, s, c, g in variants}}
if {resume}:
    first = train(tiny_cfg(out / "resumed", strategy="fsdp", stop_after=1, ckpt_every=1, **kw))
    second = train(tiny_cfg(out / "resumed", strategy="fsdp", ckpt_every=1, **kw), resume=True)
    runs["fsdp_resumed"] = {{"losses": first["losses"] + second["losses"]}}
counts = [None, None]
dist.all_gather_object(counts, empty[0])
if dist.get_rank() == 0:
    got = dict(empty=counts, **{{k: r["losses"] for k, r in runs.items()}})
    json.dump(got, open(out / "losses.json", "w"))
    for k in ("ddp", "fsdp"):
        if k in runs:
            torch.save(runs[k]["teacher"], out / f"teacher_{{k}}.pt")
"""


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp2_hr_only_without_gcpl_trains_like_ddp_and_resumes(tmp_path):
    """hr only at 64 px, GCPL off: the 2 x 2 stage-4 cells of one rank leave no object cluster heavy
    enough, the other rank's do. FSDP2 (eager, activation checkpointing) trains like DDP and resumes
    exactly. It used to abort in gloo (a sharded head skipped on one rank only), then in the EMA (the
    teacher's root-level geo prototypes, learnt by gradient without GCPL, stayed gathered after its
    forward), then on resume (no optimiser state for parameters never used)."""
    import json

    variants = [
        ("ddp", "ddp", "", False),
        ("fsdp", "fsdp", "", False),
        ("fsdp_checkpointed", "fsdp", "", True),
    ]
    _torchrun(SKIP_SCRIPT, tmp_path, variants=repr(variants), resume="True")
    got = json.loads((tmp_path / "losses.json").read_text())
    assert got["empty"][0] != got["empty"][1], f"no rank-only empty term, the case is not exercised: {got}"
    assert got["fsdp"] == pytest.approx(got["ddp"], rel=1e-4)
    t_ddp, t_fsdp = (torch.load(tmp_path / f"teacher_{k}.pt", weights_only=True) for k in ("ddp", "fsdp"))
    assert t_ddp.keys() == t_fsdp.keys() and "backbone.geo.prototypes" in t_ddp
    for k in t_ddp:  # the EMA on shards (the geo prototypes' too) is DDP's
        torch.testing.assert_close(t_fsdp[k], t_ddp[k], rtol=1e-3, atol=1e-4, msg=k)
    assert got["fsdp_checkpointed"] == pytest.approx(got["fsdp"], rel=1e-6)  # recomputed, not changed
    # AdamW has no state for the unused fusion: the checkpoint lacks it, and resuming still works, exactly
    assert got["fsdp_resumed"] == got["fsdp"]


@pytest.mark.distributed
@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(
    not os.environ.get("SKYSENSE_TEST_INDUCTOR"),
    reason="a cold inductor compile in two processes takes minutes on 2 cores: set SKYSENSE_TEST_INDUCTOR=1",
)
def test_fsdp2_compiled_trains_like_eager(tmp_path):
    """FSDP2 with ``compile=default`` on the case above: the losses of the eager FSDP run."""
    import json

    variants = [("fsdp", "fsdp", "", False), ("fsdp_compiled", "fsdp", "default", False)]
    _torchrun(SKIP_SCRIPT, tmp_path, timeout=900, variants=repr(variants), resume="False")
    got = json.loads((tmp_path / "losses.json").read_text())
    # inductor's fused float32 kernels sum in another order: ~1e-4 apart after one step here
    assert got["fsdp_compiled"] == pytest.approx(got["fsdp"], rel=5e-4)


@pytest.mark.slow
def test_folder_source_pretrains_hr_s2_s1_from_geotiffs(tmp_path):
    """Your own geo-aligned rasters (root/{hr,s2,s1}/*.tif): all three modalities, fused, in one run."""
    import csv

    from tests.data.test_pretrain import _folder

    root = _folder(tmp_path)
    data = DataConfig(sources=("folder",), root=str(root), modalities=("hr", "s2", "s1"), tile=32)
    samples = build_dataset(data)
    assert len(samples) == 16 and set(samples[0]) == set(MODEL_KEYS)
    assert samples[0]["hr"].shape == (3, 128, 128) and samples[0]["s2"].shape == (3, 10, 32, 32)
    train(tiny_cfg(tmp_path / "run", steps=2, data=data))
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    for part in ("enc_hr", "enc_s2", "enc_s1", "fusion", "geo"):
        assert float(rows[-1][f"grad/{part}"]) > 0, part
    assert float(rows[-1]["cma"]) > 0  # hr, s2 and s1 of the same place are aligned
    with pytest.raises(ValueError, match="set data.root"):
        build_dataset(DataConfig(sources=("folder",)))


@pytest.mark.distributed
@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    """A real kill (SIGKILL of the CLI process between checkpoints), then ``--resume``: the loss
    trajectory in metrics.csv equals an uninterrupted run's, step for step."""
    import csv
    import dataclasses

    import yaml

    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return [plain(v) for v in x] if isinstance(x, (tuple, list)) else x

    data = DataConfig(modalities=("s2", "s1"), tile=16, num_samples=6)
    cfg = tiny_cfg(tmp_path / "killed", steps=8, ckpt_every=2, data=data, model={"hr": None})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(plain(dataclasses.asdict(cfg))))
    full = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "full")))

    env = subprocess_env()
    cmd = [
        sys.executable,
        "-c",
        "import torch, sys; torch.set_num_threads(1); from skysense.cli import main; "
        "sys.exit(main(sys.argv[1:]))",
        "pretrain",
        "--config",
        str(config),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "killed" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 1 + 5:  # past the step-4 checkpoint
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(tmp_path / "killed" / "last.ckpt")["step"] in (4, 6)
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(metrics.open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [float(r["loss"]) for r in rows] == pytest.approx(full["losses"], rel=0, abs=0)


@pytest.mark.compile
@pytest.mark.slow
def test_compiled_encoders_train_like_eager_ones(tmp_path):
    """``compile=default``: the same losses and teacher (keys and values) as eager, to float rounding."""
    kw = dict(
        steps=2,
        bf16=False,
        model={"hr": {"depths": [1, 1, 1, 1]}, "s2": None, "s1": None},  # a small graph: compiling is slow
        data=DataConfig(modalities=("hr",), hr_tile=64, num_samples=4),
    )
    eager = train(tiny_cfg(tmp_path / "eager", **kw))
    compiled = train(tiny_cfg(tmp_path / "compiled", compile="default", **kw))
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=1e-4)
    assert list(compiled["teacher"]) == list(eager["teacher"])  # no _orig_mod in the names
    for name, value in eager["teacher"].items():
        torch.testing.assert_close(compiled["teacher"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match="compile='fast'"):
        train(tiny_cfg(tmp_path / "bad", compile="fast", **kw))


def test_model_overrides_merge_into_the_preset(tmp_path):
    cfg = TrainConfig(
        model={"s2": {"in_chans": 1}, "geo": None, "hr": None, "s1": None},
        data=DataConfig(modalities=("s2",)),
    )
    m = trainer.model_config(cfg)
    assert m.s2.in_chans == 1 and m.s2.embed_dim == get_preset("tiny").s2.embed_dim
    assert m.hr is None and m.s1 is None and m.geo is None
    assert cfg.model == {"s2": {"in_chans": 1}, "geo": None, "hr": None, "s1": None}  # left alone
    with pytest.raises(ValueError, match="not a SkySenseConfig field"):
        trainer.model_config(TrainConfig(model={"s3": {}}))
    with pytest.raises(ValueError, match="strategy"):
        train(tiny_cfg(tmp_path / "run", strategy="zero3"))
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.slow
def test_data_modalities_must_be_the_models_encoders(tmp_path):
    """The model config says which encoders exist; data of other modalities is an error, not a silent drop."""
    with pytest.raises(ValueError, match=r"encoders \['hr', 's2', 's1'\] .* set model.hr: null"):
        trainer.model_config(TrainConfig(data=DataConfig(modalities=("s2", "s1"))))
    with pytest.raises(ValueError, match="remove hr from data.modalities"):
        trainer.model_config(TrainConfig(model={"hr": None}, data=DataConfig(modalities=("hr", "s2", "s1"))))
    with pytest.raises(ValueError, match="set model.hr: null"):
        train(tiny_cfg(tmp_path / "run", data=DataConfig(modalities=("s2", "s1"), tile=16)))
    assert trainer.model_config(TrainConfig()).modalities == ("hr", "s2", "s1")  # the defaults agree


@pytest.mark.slow
def test_a_run_refuses_a_folder_of_an_earlier_run_unless_told(tmp_path):
    first = train(tiny_cfg(tmp_path / "run", steps=1))
    before = (tmp_path / "run" / "metrics.csv").read_bytes()
    with pytest.raises(
        FileExistsError, match=r"holds an earlier run \(last.ckpt, metrics.csv\): pass --resume"
    ):
        train(tiny_cfg(tmp_path / "run", steps=1))
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == before  # nothing touched
    again = train(tiny_cfg(tmp_path / "run", steps=1), overwrite=True)
    assert again["losses"] == first["losses"]  # a fresh run, the same one
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 2
