"""What ``skysense convert`` accepts and refuses (spec Sec. 5): the released files as shipped (``ctpe``
repeated), incomplete or damaged files that would read as another architecture, and safetensors files
given by mistake. Every refusal reaches a command-line user as one line on stderr with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from skysense.checkpoint import save_pretrained
from skysense.cli import main
from skysense.convert import convert_official, convert_state_dicts
from skysense.models.skysense import SkySense
from skysense.pretrained import load_pretrained
from tests.test_convert import FILES, custom_config, official_files, source_model, write_files

HR = "skysense_model_backbone_hr.pth"
S2 = "skysense_model_backbone_s2.pth"
S1 = "skysense_model_backbone_s1.pth"
FUSION = "skysense_model_fusion.pth"
assert {HR, S2, S1, FUSION} <= set(FILES)


def copy(files: dict) -> dict:
    return {name: dict(part) for name, part in files.items()}


def cli_error(capsys, argv: list[str]) -> str:
    """The one-line error of a refused command (exit code 2, nothing on stdout, no traceback)."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"skysense {argv[0]}: error: ") and "Traceback" not in err and not out
    return err


# ------------------------------------------------------------------------------------------ ctpe in each file
def test_released_files_with_ctpe_in_every_backbone_convert(tmp_path, capsys):
    files = official_files(source_model())
    assert all("ctpe" in files[n] for n in (HR, S2, S1))  # as the official converter writes them
    paths = write_files(tmp_path, files)
    out = tmp_path / "out.safetensors"
    assert main(["convert", *paths, "--out", str(out)]) == 0
    assert "2 x an equal copy" in capsys.readouterr().out and out.is_file()
    conv = convert_official(paths)
    assert conv.report.loaded["fusion.dtpe"] == f"{HR}:ctpe"  # the first file given; the others equal
    assert {k for k, why in conv.report.ignored.items() if "equal copy" in why} == {
        f"{S2}:ctpe",
        f"{S1}:ctpe",
    }

    files[S1]["ctpe"] = files[S1]["ctpe"] + 1e-3  # from another model: refused, naming both files
    paths = write_files(tmp_path, files)
    err = cli_error(capsys, ["convert", *paths, "--out", str(tmp_path / "x.safetensors")])
    assert f"fusion.dtpe is given twice with different values: {HR}:ctpe and {S1}:ctpe" in err
    assert not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------------------------------------ incomplete files
def without(files: dict, name: str, prefix: str) -> dict:
    out = copy(files)
    out[name] = {k: v for k, v in out[name].items() if not k.startswith(prefix)}
    return out


def test_a_vit_without_its_last_layer_is_not_read_as_a_shallower_vit():
    files = without(official_files(source_model()), S2, "layers.1.")
    with pytest.raises(
        ValueError, match=r"match no preset; closest 'tiny' differs in s2\.depth: preset 2, source 1"
    ):
        convert_state_dicts(list(files.items()))
    with pytest.raises(ValueError, match=r"lack \(12\): \['encoders\.s2\.layers\.1\.ln1\.weight'"):
        convert_state_dicts(list(files.items()))
    with pytest.raises(ValueError, match=r"do not match preset 'tiny': s2\.depth: preset 2, source 1"):
        convert_state_dicts(list(files.items()), preset="tiny")


def test_a_swin_without_a_block_or_an_extra_norm_is_refused_with_the_missing_keys():
    files = official_files(source_model())
    # a block inside a stage: the depth still reads 3, the block's tensors are missing
    gap = without(files, HR, "stages.2.blocks.1.")
    with pytest.raises(
        ValueError, match=r"lack 1\d tensor\(s\) of parts they hold: \['encoders\.hr\.stages\.2\.blocks\.1\."
    ):
        convert_state_dicts(list(gap.items()))
    # the only norm3 of tiny (stage 2, block 2): would read as extra_norm_every=0
    no_norm3 = without(files, HR, "stages.2.blocks.2.norm3.")
    with pytest.raises(
        ValueError, match=r"hr\.extra_norm_every: preset 3, source 0.*stages\.2\.blocks\.2\.norm3\.weight"
    ):
        convert_state_dicts(list(no_norm3.items()))
    with pytest.raises(ValueError, match=r"hr\.extra_norm_every: preset 3, source 0"):
        convert_state_dicts(list(no_norm3.items()), preset="tiny")


def test_window_buffers_of_another_shape_do_not_change_the_window_silently():
    files = official_files(source_model())
    tables = [k for k in files[HR] if k.endswith("relative_coords_table")]
    one = copy(files)
    one[HR][tables[0]] = torch.zeros(1, 9, 9, 2)  # window 5 in one block, 4 in the others
    with pytest.raises(ValueError, match=r"do not describe one window size \(\[4, 5\]\)"):
        convert_state_dicts(list(one.items()))
    every = copy(files)
    for k in every[HR]:
        if k.endswith("relative_coords_table"):
            every[HR][k] = torch.zeros(1, 9, 9, 2)
        elif k.endswith("relative_position_index"):
            every[HR][k] = torch.zeros(25, 25, dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"match no preset; closest 'tiny' differs in hr\.window_size: preset 4, source 5"
    ):
        convert_state_dicts(list(every.items()))


def test_one_missing_tensor_is_refused_and_no_file_written(tmp_path, capsys):
    files = copy(official_files(source_model()))
    del files[FUSION]["layers.0.ln2.bias"]
    paths = write_files(tmp_path, files)
    out = tmp_path / "out.safetensors"
    err = cli_error(capsys, ["convert", *paths, "--out", str(out), "--no-geo"])
    assert "lack 1 tensor(s) of parts they hold: ['fusion.layers.0.ln2.bias']" in err
    assert not out.exists()
    # a part whose file is not given is fine: listed as initialised, with the load hint for that part
    del files[FUSION]
    paths = write_files(tmp_path, files)
    assert main(["convert", *paths, "--out", str(out), "--no-geo"]) == 0
    text = capsys.readouterr().out
    assert "allow_missing=('fusion',)" in text and "--no-geo" not in text


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused_naming_the_key(tmp_path, capsys, bad):
    files = copy(official_files(source_model()))
    w = files[S1]["layers.0.ln1.weight"].clone()
    w[3] = bad
    files[S1]["layers.0.ln1.weight"] = w
    paths = write_files(tmp_path, files)
    err = cli_error(capsys, ["convert", *paths, "--out", str(tmp_path / "o.safetensors")])
    assert f"hold NaN or inf values: ['{S1}:layers.0.ln1.weight']" in err


# ------------------------------------------------------------------------------------------ config on the CLI
def test_cli_config_sets_the_head_counts(tmp_path, capsys):
    src = source_model(custom_config())
    paths = write_files(tmp_path, official_files(src))
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(src.cfg.to_dict()))
    out = tmp_path / "c.safetensors"
    assert main(["convert", *paths, "--out", str(out), "--config", str(tmp_path / "model.yaml")]) == 0
    capsys.readouterr()
    _, meta, _ = load_pretrained(out, allow_missing=("geo",))
    assert (meta.config.s2.num_heads, meta.config.s1.num_heads, meta.config.fusion.num_heads) == (4, 4, 2)
    err = cli_error(capsys, ["convert", *paths, "--out", str(out), "--config", str(tmp_path / "nope.yaml")])
    assert "nope.yaml" in err
    (tmp_path / "tab.yaml").write_text("s2:\n\tdepth: 3\n")
    err = cli_error(capsys, ["convert", *paths, "--out", str(out), "--config", str(tmp_path / "tab.yaml")])
    assert "tab.yaml:2:1: YAML syntax error" in err


# ------------------------------------------------------------------------------------------ safetensors given
def test_a_safetensors_file_gets_an_answer_not_a_traceback(tmp_path, capsys):
    ours = tmp_path / "ours.safetensors"
    save_pretrained(SkySense(source_model().cfg), ours)
    err = cli_error(capsys, ["convert", str(ours), "--out", str(tmp_path / "o.safetensors")])
    assert f"{ours}: already a skysense checkpoint in safetensors form" in err
    assert f"skysense.load_pretrained('{ours}')" in err

    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(ours.read_bytes()[:50])
    err = cli_error(capsys, ["convert", str(damaged), "--out", str(tmp_path / "o.safetensors")])
    assert f"{damaged}: not a readable safetensors file" in err and "official .pth" in err

    foreign = tmp_path / "weights.pth"  # a safetensors file under another name, without our metadata
    save_file({"a": torch.zeros(2)}, foreign)
    err = cli_error(capsys, ["convert", str(foreign), "--out", str(tmp_path / "o.safetensors")])
    assert f"{foreign}: a safetensors file without skysense metadata" in err


def test_safetensors_check_leaves_official_files_alone(tmp_path):
    path = Path(write_files(tmp_path, official_files(source_model()))[0])
    assert path.read_bytes()[:2] == b"PK"  # torch's zip format
    assert convert_official([tmp_path]).config.name == "official-tiny"
