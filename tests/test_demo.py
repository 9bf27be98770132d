"""``skysense demo``: its probe matches the bench's, its config ships with the package, and it runs on the
real data with a printout and a summary that agree."""

import dataclasses
import json

import numpy as np
import pytest
import yaml

from skysense.data.root import data_root
from skysense.linear_probe import fit_probe
from tests.conftest import REPO


def _blobs(n: int, seed: int, k: int = 6, d: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(k, d))
    y = rng.integers(0, k, n)
    return (centres[y] + 1.5 * rng.normal(size=(n, d))).astype(np.float32), y


def test_warm_started_probe_reaches_the_cold_probes_optimum():
    train, val, test = _blobs(600, 0), _blobs(200, 1), _blobs(300, 2)
    cs = (0.01, 0.1, 1.0, 10.0)
    cold = fit_probe(train, val, test, cs)
    warm = fit_probe(train, val, test, cs, warm_start=True)
    assert warm.val_by_c == cold.val_by_c and warm.c == cold.c
    assert warm.oa == cold.oa and (warm.confusion == cold.confusion).all()
    assert 1 / 6 < cold.oa < 1  # a real problem: neither trivial nor hopeless


@pytest.mark.slow
def test_pretraining_on_the_decoded_scenes_is_pretraining_on_the_aid_source(tmp_path):
    """The demo decodes AID once for pre-training and probe: the run matches ``data.sources [aid]``."""
    import torch

    from skysense.demo import load_aid, pretrain, pretrain_config
    from skysense.engine.state import load_checkpoint
    from skysense.pretrain.trainer import train
    from tests.tasks.test_data import scene_folder

    root = tmp_path / "data"
    scene_folder(root / "aid", per_class=8, size=32)
    cfg, overrides = pretrain_config(root, tmp_path / "demo", 2)
    cfg = dataclasses.replace(cfg, batch_size=4, progress=False)
    scenes = load_aid(root, cfg.data.hr_tile)
    pt = pretrain(cfg, overrides, scenes["train"])
    ref = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "ref")))
    assert pt["scenes"] == ref["samples"] == len(scenes["train"].ids) > 0
    assert pt["loss_first"] == round(ref["losses"][0], 3) and pt["loss_last"] == round(ref["losses"][-1], 3)
    ours, theirs = (load_checkpoint(tmp_path / d / "last.ckpt")["teacher"] for d in ("demo", "ref"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_demo_config_ships_with_the_package_and_is_the_recorded_recipe():
    from skysense.demo import demo_config

    packaged = demo_config()
    assert packaged.read_text() == (REPO / "configs" / "pretrain" / "aid_hr_cpu.yaml").read_text()
    cfg = yaml.safe_load(packaged.read_text())
    assert cfg["data"]["sources"] == ["aid"] and cfg["preset"] == "tiny"


@pytest.mark.data
@pytest.mark.skipif(
    not (data_root() / "sen1floods11").is_dir(), reason="real data (../shared/data) not found"
)
def test_multimodal_step_on_the_real_chip():
    from skysense.demo import multimodal

    mm = multimodal(data_root())
    assert (mm["s2_date"], mm["s1_date"]) == ("2019-09-18", "2019-09-17")
    assert mm["fused_shape"] == [16, 48, 64, 64]  # 4 x 4 tiles of 64 px, tiny fused width 32 + 16
    assert mm["_mosaic"].shape == (48, 256, 256) and mm["_sample"]["label"].shape == (256, 256)
    assert mm["_sample"]["rgb"].shape == (256, 256, 3) and mm["_sample"]["s1"].shape[-2:] == (256, 256)
    assert set(np.unique(mm["_sample"]["label"])) <= {-1, 0, 1}


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.skipif(not (data_root() / "aid").is_dir(), reason="real data (../shared/data/aid) not found")
def test_demo_end_to_end_writes_what_it_prints(tmp_path):
    from skysense.demo import run_demo

    s = run_demo(data_root(), tmp_path, steps=2, per_class_train=3)
    pt, lp = s["pretraining"], s["linear_probe"]
    assert pt["steps"] == 2 and pt["scenes"] == 4126 and pt["encoder_parameters_m"] > 0.1
    assert lp["split"] == {"train": 90, "val": 676, "test": 2147}
    for key in ("oa_random_init", "oa_pretrained"):
        assert 3 / 30 < lp[key] <= 1  # well above chance: features of real scenes carry class signal
    written = json.loads((tmp_path / "demo_summary.json").read_text())
    printed = written["printed"]
    for figure in (lp["oa_pretrained"], lp["oa_random_init"], 1 / 30, 0.468, 0.643):
        assert f"{100 * figure:.1f} %" in printed
    assert "2,147 scenes" in printed and "Spain_7370579" in printed and str(tmp_path) in printed
    assert pt["lr"] == 5e-4 and "epochs, lr 0.0005)" in printed and "3,500 steps, lr 0.00025" in printed
    assert written["linear_probe"]["oa_pretrained"] == lp["oa_pretrained"]
    for name in written["files"]:
        assert (tmp_path / name).stat().st_size > 500, name
    assert (tmp_path / "demo_quicklook.png").stat().st_size > 50_000
