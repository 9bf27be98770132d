"""Every benchmark script starts in both documented forms: ``python bench/NAME.py`` (from any folder)
and ``python -m bench.NAME`` (from the repository root)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    p.stem for p in (REPO / "bench").glob("*.py") if "argparse" in p.read_text() and p.stem != "common"
)

pytestmark = pytest.mark.slow  # each start imports torch (and some timm, sklearn): seconds per script


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (cmd, res.stderr[-2000:])
    return res


def test_every_script_imports_as_a_module_of_the_bench_package():
    assert {"peak", "encoders", "linear_probe", "multimodal_pretrain"} <= set(SCRIPTS)
    run([sys.executable, "-c", "; ".join(f"import bench.{name}" for name in SCRIPTS)], REPO)
    assert run([sys.executable, "-m", "bench.peak", "--help"], REPO).stdout.startswith("usage:")


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_as_a_file_run_from_another_folder(name, tmp_path):
    res = run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--help"], tmp_path)
    assert res.stdout.startswith("usage:")


def test_peak_file_of_another_cpu_is_refused(tmp_path):
    from bench.peak import cpu_identity, load_peak_file

    peak = {"fp32": 200.0, "bf16": 420.0}
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"machine": {**cpu_identity(), "date": "any"}, "peak": peak}))
    assert load_peak_file(mine) == peak
    for other in ({"cpu": "Some Other CPU"}, {"threads": 64}, {"isa": {}}):
        path = tmp_path / "other.json"
        path.write_text(json.dumps({"machine": {**cpu_identity(), **other}, "peak": peak}))
        with pytest.raises(SystemExit, match="not this machine"):
            load_peak_file(path)
    old = tmp_path / "old.json"  # a file that does not say which CPU measured it
    old.write_text(json.dumps({"peak": peak}))
    with pytest.raises(SystemExit, match="an unrecorded CPU"):
        load_peak_file(old)


def test_peak_is_the_fastest_call_per_path_and_dtype():
    from bench.peak import peaks

    rows = [
        {"path": "fp32/mkl", "gflops_best": 90.0},
        {"path": "fp32/mkl", "gflops_best": 95.0},
        {"path": "fp32/onednn", "gflops_best": 190.0},
        {"path": "bf16/aten", "gflops_best": 400.0},
    ]
    assert peaks(rows) == {
        "fp32/mkl": 95.0,
        "fp32/onednn": 190.0,
        "bf16/aten": 400.0,
        "fp32": 190.0,
        "bf16": 400.0,
    }


def test_flops_of_our_vit_equal_timms_whatever_gemm_path_ours_takes():
    import torch

    from bench.encoders import count_flops, vit_cases

    runners = {c.who: (c.build().eval(), c.shape) for c in vit_cases("tiny", 2)}
    with torch.inference_mode():  # where runtime.linear may take oneDNN, which torch's counter misses
        counts = {who: count_flops(r, torch.randn(shape)) for who, (r, shape) in runners.items()}
    assert counts["ours"] == counts["timm"] > 0
