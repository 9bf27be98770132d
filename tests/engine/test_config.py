"""Run configs: one from_dict for every config family, YAML errors named by file, line and column."""

from dataclasses import dataclass, field

import pytest

from skysense.config import SkySenseConfig, from_dict, get_preset
from skysense.engine.config import EngineConfig, apply_overrides, config_diff, load_config, read_yaml


@dataclass
class Head:
    classes: int = 2
    dropout: float = 0.0
    names: tuple[str, ...] = ()


@dataclass
class Run(EngineConfig):
    task: str = "segmentation"
    head: Head = field(default_factory=Head)
    weights: dict[str, float] = field(default_factory=dict)


def test_from_dict_reads_nested_sections_and_checks_types():
    run = from_dict(Run, {"steps": "1e3", "lr": "1e-4", "head": {"classes": 7, "names": ["a", "b"]}})
    assert (run.steps, run.lr, run.head.classes, run.head.names) == (1000, 1e-4, 7, ("a", "b"))
    assert from_dict(Run, {"weights": {"water": 2}}).weights == {"water": 2.0}
    with pytest.raises(
        ValueError, match=r"unknown Head key 'clases'; known: \['classes', 'dropout', 'names'\]"
    ):
        from_dict(Run, {"head": {"clases": 3}})
    with pytest.raises(ValueError, match="Run steps='many': expected a whole number"):
        from_dict(Run, {"steps": "many"})
    with pytest.raises(ValueError, match="Run batch_size=0: must be at least 1"):
        from_dict(Run, {"batch_size": 0})


def test_the_model_config_goes_through_the_same_function():
    d = get_preset("tiny").to_dict()
    assert SkySenseConfig.from_dict(d) == get_preset("tiny")
    d["s2"]["depth"] = "2.5"
    with pytest.raises(ValueError, match="ViTConfig depth='2.5': expected a whole number"):
        SkySenseConfig.from_dict(d)


def test_overrides_and_yaml_errors(tmp_path):
    assert apply_overrides({}, ["head.classes=3", "weights={a: 1}"]) == {
        "head": {"classes": 3},
        "weights": {"a": 1},
    }
    with pytest.raises(ValueError, match="expected key=value"):
        apply_overrides({}, ["steps"])
    good = tmp_path / "run.yaml"
    good.write_text("steps: 5\nhead:\n  classes: 4\n")
    assert load_config(Run, good, ["lr=0.1"]).head.classes == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 5\nhead:\n\tclasses: 4\n")  # a TAB
    with pytest.raises(ValueError, match=r"bad.yaml:3:1: YAML syntax error: .*TAB") as e:
        read_yaml(bad)
    assert "\n" not in str(e.value)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping of config fields, got list"):
        read_yaml(tmp_path / "list.yaml")
    with pytest.raises(FileNotFoundError, match="no such config file"):
        read_yaml(tmp_path / "none.yaml")


def test_config_diff_names_the_leaves():
    assert config_diff({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": (1, 2)}}) == []
    assert config_diff({"a": 1, "b": {"c": 2}}, {"a": 2, "b": {"c": 2, "d": 0}}) == [
        "a: 1 -> 2",
        "b.d: None -> 0",
    ]
