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
