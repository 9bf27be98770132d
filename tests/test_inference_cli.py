"""``skysense embed`` / ``predict`` options: --precision and its --bf16 alias, --format and its --cog
alias (:mod:`skysense.inference_cli`)."""

from __future__ import annotations

import argparse

import pytest
import torch

from skysense.inference_cli import add_commands
from skysense.inference_heads import _amp


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    return parser.parse_args(argv)


@pytest.mark.parametrize("command", [["embed", "in.tif", "--weights", "w"], ["predict", "--checkpoint", "c"]])
def test_precision_and_format_options(command):
    base = [*command, "--out", "o"]
    assert parse(base).precision == "auto" and parse(base).format == "gtiff"
    assert parse([*base, "--bf16"]).precision == "bf16" == parse([*base, "--precision", "bf16"]).precision
    assert parse([*base, "--precision", "fp32"]).precision == "fp32"
    assert parse([*base, "--cog"]).format == "cog" == parse([*base, "--format", "cog"]).format
    assert parse([*base, "--format", "zarr"]).format == "zarr"
    for bad in (["--precision", "fp16"], ["--format", "netcdf"]):
        with pytest.raises(SystemExit):
            parse([*base, *bad])


def test_precision_sets_the_autocast_dtype():
    cpu = torch.device("cpu")
    assert _amp(cpu, "fp32") is None and _amp(cpu, "bf16") == torch.bfloat16
    assert _amp(cpu, "auto") in (None, torch.bfloat16)  # measured on this machine
    with pytest.raises(ValueError, match="use one of auto, fp32, bf16"):
        _amp(cpu, "half")


def test_embed_writes_zarr_from_the_command_line(tmp_path):
    zarr = pytest.importorskip("zarr")
    from skysense.cli import main
    from tests.test_inference import read, tiny_weights, write_scene

    weights = tiny_weights(tmp_path)
    src = write_scene(tmp_path / "in.tif", 64, 64)
    argv = ["embed", str(src), "--weights", str(weights), "--level", "hr4", "--tile", "64", "--overlap", "0"]
    argv += ["--quiet", "--device", "cpu", "--precision", "fp32"]
    assert main([*argv, "--out", str(tmp_path / "o.tif")]) == 0
    assert main([*argv, "--out", str(tmp_path / "o.zarr"), "--format", "zarr"]) == 0
    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    tif, meta = read(tmp_path / "o.tif")
    assert group["bands"][:].tobytes() == tif.tobytes()
    assert group.attrs["band_names"] == list(meta["names"]) and group.attrs["level"] == "hr4"
