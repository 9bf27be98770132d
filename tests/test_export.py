"""``skysense export``: a pre-training run's checkpoint becomes our .safetensors format, and
``load_pretrained`` of it computes exactly what the run's own encoder computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import skysense
from skysense.checkpoint import read_meta
from skysense.cli import main
from skysense.dates import to_days
from skysense.export import export_run
from skysense.files import DamagedCheckpointError, UnsafeCheckpointError, sha256_file
from skysense.pretrain.trainer import load_encoder, train
from skysense.pretrained import load_pretrained
from tests.pretrain.test_trainer import tiny_cfg


@pytest.fixture(autouse=True)
def _torch_defaults() -> None:  # tiny ops: one thread (see tests/pretrain/conftest.py)
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The last.ckpt of a 2-step tiny run (hr, s2, s1) on synthetic data."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    train(tiny_cfg(out, steps=2))
    return out / "last.ckpt"


def sample(b: int = 2) -> dict:
    """A normalised batch of every modality the tiny run trained, with dates and a location."""
    g = torch.Generator().manual_seed(1)
    days = to_days(["2021-02-01", "2021-05-01", "2021-08-01"]).expand(b, -1)
    return {
        "hr": torch.randn(b, 3, 64, 64, generator=g),
        "s2": torch.randn(b, 3, 10, 16, 16, generator=g),
        "s2_dates": days,
        "s2_mask": torch.tensor([[False, False, False], [False, False, True]][:b]),
        "s1": torch.randn(b, 2, 2, 16, 16, generator=g),
        "s1_dates": days[:, :2],
        "lat": torch.tensor([45.0, -10.0][:b]),
        "lon": torch.tensor([7.0, 120.0][:b]),
    }


def _flat(out: dict) -> dict[str, torch.Tensor]:
    flat = {}
    for k, v in out.items():
        for i, t in enumerate(v if isinstance(v, list) else [v]):
            flat[f"{k}.{i}"] = t
    return flat


@pytest.mark.slow
@torch.no_grad()
def test_export_round_trips_teacher_and_student_exactly(run, tmp_path):
    x = sample()
    features = {}
    for which in ("teacher", "student"):
        out = export_run(run, tmp_path / f"{which}.safetensors", which=which)
        model, meta, report = load_pretrained(out)  # strict: every tensor of the model is in the file
        ref = load_encoder(run, which=which)
        assert not model.training and report.initialised == []
        got, want = _flat(model(x)), _flat(ref(x))
        assert got.keys() == want.keys() and len(got) > 10
        for k in want:
            assert torch.equal(got[k], want[k]), f"{which}: {k} differs"
        features[which] = got["fused.0"]
        assert meta.task == "encoder" and meta.config.to_dict() == ref.cfg.to_dict()
        assert set(meta.modalities) == {"hr", "s2", "s1"} and meta.modalities["s2"].units == "DN"
        assert meta.sources == [{"file": "last.ckpt", "sha256": sha256_file(run)}]
        assert f"the {which} network" in meta.notes[0] and "at step 2 of 2" in meta.notes[0]
    # the EMA teacher is not the student after two updates: the export picked the network asked for
    assert not torch.equal(features["teacher"], features["student"])


@pytest.mark.slow
def test_export_command_and_top_level_api(run, tmp_path, capsys):
    out = tmp_path / "enc.safetensors"
    assert main(["export", str(run), "--out", str(out), "--which", "student", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["which"] == "student" and printed["task"] == "encoder" and printed["out"] == str(out)
    assert read_meta(out).notes[0].startswith("the student network")
    model, _, _ = skysense.load_pretrained(out)
    assert set(model.state_dict()) == set(load_encoder(run, which="student").state_dict())
    assert skysense.export_run is export_run
    # a run's checkpoint handed to load_pretrained directly says to export it first
    with pytest.raises(ValueError, match=r"pre-training checkpoint.*skysense export"):
        load_pretrained(run)


@pytest.mark.slow
def test_export_errors_say_what_is_wrong(run, tmp_path, capsys):
    with pytest.raises(ValueError, match="which='ema'"):
        export_run(run, tmp_path / "e.safetensors", which="ema")
    with pytest.raises(ValueError, match=r"one '\.safetensors' file"):
        export_run(run, tmp_path / "e.pth")
    with pytest.raises(FileNotFoundError, match="RUN_DIR/last.ckpt"):
        export_run(tmp_path / "nope.ckpt", tmp_path / "e.safetensors")
    torch.save({"patch_embed.projection.weight": torch.zeros(2)}, tmp_path / "official.pth")
    with pytest.raises(ValueError, match="not a skysense pre-training checkpoint.*skysense convert"):
        export_run(tmp_path / "official.pth", tmp_path / "e.safetensors")
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(run.read_bytes()[:5000])
    with pytest.raises(DamagedCheckpointError, match="not a readable PyTorch checkpoint"):
        export_run(damaged, tmp_path / "e.safetensors")
    torch.save({"config": {"preset": "tiny"}, "code": torch.nn.Identity()}, tmp_path / "code.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="NOT loaded"):
        export_run(tmp_path / "code.ckpt", tmp_path / "e.safetensors")
    wrong = torch.load(run, weights_only=True)
    wrong["teacher"] = {k: v for k, v in wrong["teacher"].items() if "fusion" not in k}
    torch.save(wrong, tmp_path / "wrong.ckpt")
    with pytest.raises(ValueError, match="teacher weights do not fit the run's own config"):
        export_run(tmp_path / "wrong.ckpt", tmp_path / "e.safetensors")
    assert not (tmp_path / "e.safetensors").exists()  # nothing written on any error
    shutil.copy(run, tmp_path / "copy.ckpt")
    assert main(["export", str(tmp_path / "copy.ckpt"), "--out", str(tmp_path / "e.bin")]) == 2
    assert "use that suffix" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --which takes teacher or student
        main(["export", str(run), "--out", str(tmp_path / "e.safetensors"), "--which", "ema"])
