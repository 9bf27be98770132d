import json
import subprocess
import sys

import pytest

from skysense import __version__
from skysense.cli import COMMANDS, build_parser, main


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


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"skysense {__version__}"


def _listing(parser) -> dict[str, str]:
    """Command -> its help line in the top-level ``--help``."""
    sub = next(a for a in parser._actions if a.dest == "command")
    return {a.dest: a.help for a in sub._choices_actions}


def test_the_command_table_is_what_the_modules_register():
    # the lazy listing (no module imported) must say what the full parser says
    assert _listing(build_parser()) == {name: line for name, (_, line) in COMMANDS.items()}
    assert list(_listing(build_parser(""))) == list(COMMANDS)


@pytest.mark.parametrize("command", ["demo", "info"])
def test_demo_and_info_describe_themselves(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    usage, _, rest = capsys.readouterr().out.partition("\n\n")
    assert len(rest.partition("\n\n")[0]) > 100  # a description paragraph before the options


HELP_ONLY = """
import sys
from skysense.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
heavy = ("torch", "timm", "rasterio", "skysense.demo", "skysense.info")
print("HEAVY", [m for m in heavy if m in sys.modules])
"""


def test_help_imports_no_subcommand_module():
    out = subprocess.run([sys.executable, "-c", HELP_ONLY], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and all(name in out for name in COMMANDS)


def test_models_do_not_import_timm():
    code = "import sys, skysense.models.skysense\nprint('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_console_script_help_for_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "skysense.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "info" in out.stdout
    for sub in COMMANDS:
        res = subprocess.run(
            [sys.executable, "-m", "skysense.cli", sub, "--help"], capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("preset", ["tiny", "small", "base", "large", "huge"])
def test_info_counts_equal_those_of_a_model_built_on_the_meta_device(preset):
    import torch

    from skysense.config import get_preset
    from skysense.info import build_for_counting, parameter_counts
    from skysense.models.skysense import build_model

    with torch.device("meta"):
        reference = build_model(get_preset(preset))
    model = build_for_counting(get_preset(preset))
    assert parameter_counts(model) == parameter_counts(reference)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    big = [p for p in model.parameters() if p.numel() >= 1 << 16]
    assert all(p.is_meta for p in big)  # nothing large is allocated


INFO_HUGE = """
import sys
from skysense.cli import main
main(["info", "--preset", "huge"])
print("DYNAMO", "torch._dynamo" in sys.modules)
"""


def test_info_does_not_import_dynamo():
    out = subprocess.run([sys.executable, "-c", INFO_HUGE], capture_output=True, text=True, check=True).stdout
    assert "vs the paper (huge)" in out and "DYNAMO False" in out
