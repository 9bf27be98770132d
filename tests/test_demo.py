import json

import pytest

from skysense.data.root import data_root
from skysense.demo import run_demo


@pytest.mark.skipif(not (data_root() / "sen1floods11").is_dir(), reason="real data (shared/data) not found")
def test_demo_runs_on_real_data_and_writes_a_quicklook(tmp_path):
    summary = run_demo(data_root(), tmp_path)
    assert summary["s2_date"] == "2019-09-18" and summary["s1_date"] == "2019-09-17"
    assert summary["fused_shape"] == [64, 48, 64, 64]  # 8 x 8 tiles of 64 px, tiny fused width 32 + 16
    assert (tmp_path / "demo_quicklook.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "demo_summary.json").read_text())["region"] == summary["region"]


@pytest.mark.skipif(not (data_root() / "aid").is_dir(), reason="real data (shared/data/aid) not found")
def test_demo_pretrains_and_probes(tmp_path):
    from skysense.demo import pretrain_and_probe

    s = pretrain_and_probe(data_root(), tmp_path, steps=2, per_class_train=3)
    assert s["pretrain_steps"] == 2 and len(s["loss_first_last"]) == 2
    assert "train 90, val 676, test 2147" in s["aid_split"]
    for key in ("probe_oa_random_init", "probe_oa_pretrained"):
        assert 1 / 30 / 3 < s[key] <= 1  # well above nothing: features of real scenes carry class signal
    for png in ("linear_probe_oa.png", "confusion_pretrained.png", "pretrain/loss_curve.png"):
        assert (tmp_path / png).stat().st_size > 5_000
