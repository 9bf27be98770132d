"""Every benchmark script starts in both documented forms: ``python bench/NAME.py`` (from any folder)
and ``python -m bench.NAME`` (from the repository root)."""

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
