"""The command line fails loudly when one of its own subcommands cannot be imported, rather than
leaving that subcommand out of ``--help``."""

import sys

import pytest

import skysense.data
from skysense.cli import build_parser


def test_parser_has_the_data_subcommands(capsys):
    parser = build_parser()
    for sub in ("data", "stats"):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([sub, "--help"])
        assert exit_.value.code == 0
    assert "inspect" in capsys.readouterr().out


def test_a_broken_subcommand_import_raises(monkeypatch):
    # None in sys.modules makes `import skysense.data.cli` raise ImportError, as a broken module would
    monkeypatch.setitem(sys.modules, "skysense.data.cli", None)
    monkeypatch.delattr(skysense.data, "cli", raising=False)
    with pytest.raises(ImportError, match="skysense.data.cli"):
        build_parser()
