"""Fine-tuning and evaluation end to end through the CLI, on small real data and on a folder of your own."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skysense.cli import main
from skysense.config import from_dict
from skysense.data.root import data_root
from skysense.engine.distributed import Ranks
from skysense.engine.state import load_checkpoint
from skysense.tasks.finetune import FinetuneConfig, FinetuneTask, TaskModel, finetune

REPO = Path(__file__).resolve().parents[2]
QUICK = ["steps=2", "eval_every=0", "batch_size=4", "progress=false", "head.channels=16"]


def needs(*parts):
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} missing (set SKYSENSE_DATA)")
    return path


def run(tmp_path, config, *overrides):
    out = tmp_path / Path(config).stem
    args = [
        "finetune",
        "--config",
        str(REPO / "configs/finetune" / config),
        f"out_dir={out}",
        *QUICK,
        *overrides,
    ]
    assert main(args) == 0
    return out


def user_segmentation_folder(root: Path, n: int = 2, size: int = 64) -> Path:
    """img_dir/ann_dir with n RGB tiles whose class is the brightness: dark = 0, bright = 1, 255 = ignore."""
    rng = np.random.default_rng(0)
    for d in ("img_dir", "ann_dir"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ann = np.zeros((size, size), np.uint8)
        ann[:, size // 2 :] = 1
        ann[:4] = 255
        img = (ann[..., None].clip(0, 1) * 150 + 50 + rng.integers(0, 30, (size, size, 3))).astype(np.uint8)
        Image.fromarray(img).save(root / "img_dir" / f"tile{i}.png")
        Image.fromarray(ann).save(root / "ann_dir" / f"tile{i}.png")
    return root


@pytest.mark.slow
def test_finetune_and_evaluate_your_own_segmentation_folder(tmp_path, capsys):
    root = user_segmentation_folder(tmp_path / "mydata")
    out = tmp_path / "run"
    args = ["finetune", "--config", str(REPO / "configs/finetune/potsdam_tiny.yaml"), f"out_dir={out}"]
    args += [f"data.root={root}", "data.dataset=segmentation", "data.size=16", *QUICK, "head.aux=false"]
    assert main(args) == 2  # a clear error, no traceback
    assert "no class names" in capsys.readouterr().err
    assert main([*args, "class_names=[dark, bright]"]) == 0
    assert {"last.ckpt", "best.ckpt", "best.json", "metrics.csv", "validation.csv"} <= {
        p.name for p in out.iterdir()
    }
    ck = load_checkpoint(out / "best.ckpt")
    assert ck["meta"]["task"] == "segmentation" and ck["meta"]["classes"] == ["dark", "bright"]
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["split"] == "test" and record["samples"] == 8 and 0 <= record["scores"]["miou"] <= 1
    for png in ("confusion_test.png", "predictions_test.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize(
    "config, data, extra",
    [
        ("potsdam_tiny.yaml", "seg_samples/potsdam", []),
        ("levir_cd_tiny.yaml", "levir_cd", []),
        ("sen1floods11_tiny.yaml", "sen1floods11", []),
        ("slovenia_tiny.yaml", "eolearn_slovenia", ["data.num_dates={s2: 6}"]),
        ("sits_tiny.yaml", "sits", []),
        ("bigearthnet_tiny.yaml", "bigearthnet_mm", ["batch_size=3"]),
        ("aid_tiny.yaml", "aid", ["data.size=32", "mode=frozen"]),
    ],
)
def test_every_task_family_finetunes_and_evaluates(tmp_path, config, data, extra):
    needs(data)
    out = run(tmp_path, config, *extra)
    best = json.loads((out / "best.json").read_text())
    assert best["step"] == 2 and np.isfinite(best["value"])
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--split", "val"]) == 0
    assert (out / "predictions_val.png").exists()


def _tiny_cfg(tmp_path, **kw):
    root = user_segmentation_folder(tmp_path / "mydata", n=2, size=32)
    d = {
        "task": "segmentation",
        "class_names": ["dark", "bright"],
        "steps": 4,
        "batch_size": 2,
        "bf16": False,
        "progress": False,
        "ckpt_every": 2,
        "out_dir": str(tmp_path / "run"),
        "head": {"channels": 8},
        "data": {"dataset": "segmentation", "root": str(root), "size": 16},
    }
    return from_dict(FinetuneConfig, d | kw)


@pytest.mark.slow
def test_a_killed_finetune_resumes_exactly(tmp_path):
    full = finetune(_tiny_cfg(tmp_path, out_dir=str(tmp_path / "full")))
    part = finetune(_tiny_cfg(tmp_path, out_dir=str(tmp_path / "cut"), stop_after=2))
    rest = finetune(_tiny_cfg(tmp_path, out_dir=str(tmp_path / "cut")), resume=True)
    assert part["losses"] + rest["losses"] == full["losses"]  # bit for bit


CPU = Ranks(0, 1, torch.device("cpu"), False)


@pytest.mark.slow
def test_frozen_mode_trains_the_head_only_and_layer_decay_reaches_the_optimiser(tmp_path):
    task = FinetuneTask(_tiny_cfg(tmp_path, mode="frozen"))
    task.setup(CPU, fresh=True)
    assert not any(p.requires_grad for p in task.model.encoder.parameters())
    task.trained.train()  # what the loop calls before every step
    assert task.model.training and not task.model.encoder.training  # no drop-path in frozen features
    assert all(not m.training for m in task.model.encoder.modules())
    assert all(g["lr_scale"] == 1.0 for g in task.param_groups())  # the head alone, at full lr
    task = FinetuneTask(_tiny_cfg(tmp_path, mode="full", layer_decay=0.5))
    task.setup(CPU, fresh=True)
    scales = sorted({g["lr_scale"] for g in task.param_groups()})
    assert scales[0] == pytest.approx(0.5**8) and scales[-1] == 1.0  # tiny: 6 layers + fusion + head


def test_change_model_shares_one_encoder(tmp_path):
    from skysense.models.skysense import build_model
    from skysense.tasks.finetune import TaskHeadConfig

    model = TaskModel(build_model("tiny"), "change", "hr", 2, TaskHeadConfig(channels=8)).eval()
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    out = model({"hr_pre": a, "hr_post": b})["logits"]
    assert out.shape == (1, 1, 32, 32)
    torch.testing.assert_close(model({"hr_pre": b, "hr_post": a})["logits"], out)  # symmetric
    assert sum(1 for n, _ in model.named_parameters() if n.startswith("encoder.")) == len(
        list(build_model("tiny").parameters())
    )  # one encoder's parameters, not two


@pytest.mark.slow
def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown FinetuneConfig key 'stepz'"):
        from_dict(FinetuneConfig, {"stepz": 3})
    with pytest.raises(ValueError, match="task=.detection.: use one of"):
        from_dict(FinetuneConfig, {"task": "detection"})
    with pytest.raises(ValueError, match="is a segmentation set; the config says task: classification"):
        FinetuneTask(_tiny_cfg(tmp_path, task="classification"))
    with pytest.raises(ValueError, match=r"label values \[2\] outside the 2 classes"):
        bad = _tiny_cfg(tmp_path)
        ann = Path(bad.data.root) / "ann_dir" / "tile0.png"
        a = np.array(Image.open(ann))
        a[10, 10] = 2
        Image.fromarray(a).save(ann)
        FinetuneTask(bad).setup(CPU, True)
    with pytest.raises(ValueError, match="hr: 3 bands in the data, the encoder takes 4"):
        cfg = _tiny_cfg(tmp_path / "b", model={"hr": {"in_chans": 4}})
        FinetuneTask(cfg).setup(CPU, True)
    cfg = _tiny_cfg(tmp_path / "c", steps=1)
    finetune(cfg)
    other = user_segmentation_folder(tmp_path / "three", n=2, size=32)
    with pytest.raises(ValueError, match="class_names has 3 names"):
        FinetuneTask(_tiny_cfg(tmp_path / "d", class_names=["a", "b", "c"], data={"dataset": "potsdam"}))
    assert (
        main(["evaluate", "--checkpoint", str(tmp_path / "c" / "run" / "best.ckpt"), "--data", str(other)])
        == 0
    )
    torch.save({"student": {}, "config": {}}, tmp_path / "pretrain.ckpt")  # a pre-training checkpoint
    with pytest.raises(ValueError, match="not a fine-tuning checkpoint"):
        from skysense.tasks.evaluate import evaluate

        evaluate(tmp_path / "pretrain.ckpt")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "pretrain.ckpt")]) == 2


FINETUNE_DDP = """
import os, sys, json
import torch
import torch.distributed as dist
torch.set_num_threads(1)
from tests.tasks.test_finetune import _tiny_cfg
from skysense.engine.state import load_checkpoint
from skysense.tasks.finetune import finetune
from pathlib import Path
out = Path({out!r})
run = out / "ddp" / "run"
result = finetune(_tiny_cfg(out / "ddp", out_dir=str(run), batch_size=4))
if dist.get_rank() == 0:
    json.dump(result["losses"], open(out / "losses.json", "w"))
"""


@pytest.mark.distributed
@pytest.mark.slow
def test_finetune_runs_under_torchrun(tmp_path):
    """Two gloo ranks, each half of every global batch (its own flips, BatchNorm on its half): the run
    finishes, writes one checkpoint whose model resumes in a single process, and learns."""
    from tests.pretrain.test_trainer import _torchrun

    _torchrun(FINETUNE_DDP, tmp_path)
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert len(losses) == 4 and np.isfinite(losses).all()
    run = tmp_path / "ddp" / "run"
    ck = load_checkpoint(run / "last.ckpt")
    assert ck["step"] == 4 and ck["data"]["world"] == 2 and len(ck["rng"]) == 2
    more = finetune(_tiny_cfg(tmp_path / "ddp", out_dir=str(run), batch_size=4, steps=5), resume=True)
    assert len(more["losses"]) == 1  # the 2-rank checkpoint goes on in one process


def _series_batch(b=4, t=2, size=8):
    g = torch.Generator().manual_seed(0)
    batch = {m: torch.randn(b, t, c, size, size, generator=g) for m, c in (("s2", 10), ("s1", 2))}
    batch |= {f"{m}_dates": torch.full((b, t), 19000) + torch.arange(t) * 10 for m in ("s2", "s1")}
    return batch


def test_modality_dropout_leaves_out_one_series_per_hit_sample():
    from skysense.tasks.finetune import drop_modality

    batch = _series_batch(b=64)
    out = drop_modality(batch, 1.0, torch.Generator().manual_seed(0))
    s2, s1 = out["s2_mask"].all(1), out["s1_mask"].all(1)  # (B,) dropped whole
    assert torch.equal(s2 ^ s1, torch.ones(64, dtype=torch.bool))  # exactly one of the two, every sample
    assert 16 < int(s2.sum()) < 48  # picked uniformly
    assert torch.equal(out["s2_mask"].any(1), s2)  # all dates of a series or none
    none = drop_modality(batch, 0.0, torch.Generator().manual_seed(0))
    assert not none["s2_mask"].any() and not none["s1_mask"].any()
    assert "s2_mask" not in batch  # the input batch is not modified
    # a padding mask the batch already has is kept
    padded = batch | {
        "s2_mask": torch.tensor([[False, True]] * 64),
        "s1_mask": torch.zeros(64, 2, dtype=torch.bool),
    }
    kept = drop_modality(padded, 0.5, torch.Generator().manual_seed(1))
    assert kept["s2_mask"][:, 1].all()
    # one series and no hr: nothing to leave out
    alone = {"s2": batch["s2"]}
    assert drop_modality(alone, 1.0, torch.Generator()) is alone


def test_a_dropped_series_gives_the_fused_map_of_the_other_alone():
    """Masking every date of s1 must equal not giving s1 at all (padded steps change nothing)."""
    from skysense.config import preset_with
    from skysense.models.skysense import SkySense
    from skysense.tasks.finetune import drop_modality

    torch.manual_seed(0)
    model = SkySense(preset_with("tiny", {"hr": None})).eval()
    batch = _series_batch(b=2)
    dropped = drop_modality(batch, 1.0, torch.Generator().manual_seed(3))
    with torch.no_grad():
        fused = model(dropped)["fused"]
        for i in range(2):
            keep = "s2" if dropped["s1_mask"][i].all() else "s1"
            alone = {k: v[i : i + 1] for k, v in batch.items() if k.startswith(keep)}
            ref = model(alone)["fused"]
            torch.testing.assert_close(fused[i : i + 1], ref, rtol=1e-5, atol=1e-5)


def test_modality_dropout_needs_the_fused_input_of_two_modalities():
    with pytest.raises(ValueError, match="modality_dropout"):
        from_dict(FinetuneConfig, {"input": "hr", "modality_dropout": 0.3})
    with pytest.raises(ValueError, match="modality_dropout"):
        from_dict(
            FinetuneConfig, {"input": "fused", "modality_dropout": 1.5, "data": {"modalities": ["s2", "s1"]}}
        )
    cfg = from_dict(
        FinetuneConfig, {"input": "fused", "modality_dropout": 0.3, "data": {"modalities": ["s2", "s1"]}}
    )
    assert cfg.modality_dropout == 0.3
