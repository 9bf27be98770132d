import json
import subprocess
import sys

import pytest

from skysense.cli import main


def test_info_json_for_huge_is_instant_and_complete(capsys):
    assert main(["info", "--preset", "huge", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    counts = report["parameters"]
    # Official module sizes (official_keys.txt): SwinV2-H 655.08M incl. 2 buffers per block,
    # ViT-L s2 302.738M, s1 302.607M, fusion 305.195M, heads 46.182M each.
    assert counts["s2"] == 302_738_432 and counts["s1"] == 302_607_360
    assert counts["align_s2"] == counts["align_s1"] == 46_182_400
    assert counts["fusion"] == 305_195_008 + 365 * 2816  # + the DTPE table (ctpe)
    assert report["paper_comparison"]["backbones"]["diff_pct"] < 1.0


def test_info_table_and_help(capsys):
    assert main(["info", "--preset", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "SwinV2" in text and "total" in text
    with pytest.raises(SystemExit):
        main(["info", "--preset", "nope"])


def test_console_script_help_for_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "skysense.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "info" in out.stdout
    for sub in ("info", "demo", "convert", "pretrain", "data", "stats"):
        res = subprocess.run(
            [sys.executable, "-m", "skysense.cli", sub, "--help"], capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr
