"""Our checkpoint format: bit-exact round trip, metadata validation, input contract, atomic writes,
refusal of pickled code."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from skysense.bands import NORM_STATS
from skysense.checkpoint import (
    CheckpointMeta,
    InputContract,
    ModalitySpec,
    UnsafeCheckpointError,
    default_meta,
    read_meta,
    safe_torch_load,
    save_pretrained,
    save_state,
)
from skysense.config import get_preset
from skysense.dates import to_days
from skysense.files import DamagedCheckpointError, atomic_write
from skysense.models.skysense import SkySense
from skysense.pretrained import load_pretrained
from tests.conftest import randomise


@pytest.fixture(scope="module")
def model() -> SkySense:
    torch.manual_seed(0)
    m = SkySense(get_preset("tiny")).eval()
    randomise(m)
    return m


def raw_sample(b: int = 2, seed: int = 0) -> dict:
    """Values as datasets return them: hr 0-255, s2 L2A DN, s1 dB."""
    g = torch.Generator().manual_seed(seed)
    days = to_days(["2021-02-01", "2021-05-01"]).expand(b, -1)
    return {
        "hr": torch.rand(b, 3, 64, 64, generator=g) * 255,
        "s2": 800 + torch.rand(b, 2, 10, 8, 8, generator=g) * 3000,
        "s2_dates": days,
        "s1": -25 + torch.rand(b, 2, 2, 8, 8, generator=g) * 20,
        "s1_dates": days,
        "lat": torch.tensor([45.0, -10.0][:b]),
        "lon": torch.tensor([7.0, 120.0][:b]),
    }


def test_round_trip_is_bit_exact(model, tmp_path):
    meta = default_meta(model.cfg, task="segmentation", class_names=["water", "crop", "urban"])
    path = save_pretrained(model, tmp_path / "tiny.safetensors", meta)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]  # no temporary file left
    loaded, meta2, report = load_pretrained(path)
    ref, got = model.state_dict(), loaded.state_dict()
    assert set(ref) == set(got) and all(
        torch.equal(ref[k], got[k]) and ref[k].dtype == got[k].dtype for k in ref
    )
    assert report.initialised == [] and len(report.loaded) == len(ref)
    assert meta2.to_json() == meta.to_json() and meta2.class_names == ("water", "crop", "urban")
    assert meta2.config.to_dict() == model.cfg.to_dict() and not loaded.training
    sample = meta2.contract.normalise(raw_sample())
    with torch.no_grad():
        a, b = model(sample), loaded(sample)
    assert torch.equal(a["fused"], b["fused"]) and all(torch.equal(x, y) for x, y in zip(a["hr"], b["hr"]))


def test_metadata_holds_the_input_facts(model, tmp_path):
    path = save_pretrained(model, tmp_path / "m.safetensors")
    meta = read_meta(path)
    s2 = meta.modalities["s2"]
    assert s2.bands == ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12") and s2.units == "DN"
    assert s2.mean == NORM_STATS["s2"].mean and s2.gsd_m == 10.0
    assert meta.modalities["s1"].units == "dB" and meta.modalities["hr"].gsd_m == 0.3
    assert meta.format_version == 1 and meta.task == "encoder" and meta.contract.dated == ("s2", "s1")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert json.loads(header["skysense"])["config"]["name"] == "tiny"  # plain JSON in the header


def test_input_contract_errors_say_how_to_fix(model, tmp_path):
    loaded, meta, _ = load_pretrained(save_pretrained(model, tmp_path / "m.safetensors"))
    raw = raw_sample()
    with pytest.raises(ValueError, match=r"hr does not look normalised.*0-255.*contract\.normalise"):
        loaded(raw)  # the pre-hook checks every sample
    contract = meta.contract
    good = contract.normalise(raw)
    with pytest.raises(ValueError, match=r"s2 does not look normalised: band B\w+ has median"):
        loaded({**good, "s2": raw["s2"]})
    contract.check_sample(good)
    with torch.no_grad():
        assert torch.isfinite(loaded(good)["fused"]).all()
    s1_db = {**good, "s1": raw["s1"]}
    with pytest.raises(ValueError, match=r"s1 does not look normalised.*dB"):
        contract.check_sample(s1_db)
    with pytest.raises(ValueError, match=r"has 12 bands but the checkpoint expects 10: B2, B3"):
        contract.check_sample({**good, "s2": torch.zeros(2, 2, 12, 8, 8)})
    with pytest.raises(TypeError, match=r"s2 is torch\.int16: raw DN"):
        contract.check_sample({**good, "s2": raw["s2"].to(torch.int16)})
    with pytest.raises(ValueError, match="s2_dates"):
        contract.check_sample({k: v for k, v in good.items() if k != "s2_dates"})
    hr_only = InputContract({"hr": meta.modalities["hr"]})
    with pytest.raises(ValueError, match="no s2 encoder"):
        hr_only.check_sample(good)
    # padded time steps may hold anything; check_values=False skips the value heuristics
    padded = {**good, "s2_mask": torch.tensor([[False, True], [False, True]])}
    padded["s2"] = padded["s2"].clone()
    padded["s2"][:, 1] = 5000.0
    contract.check_sample(padded)
    contract.check_sample(raw, check_values=False)
    unchecked, _, _ = load_pretrained(tmp_path / "m.safetensors", check_inputs=False)
    with torch.no_grad():
        unchecked({k: v for k, v in raw.items()})  # no hook: the caller opted out


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda s: s.update(s2=s["s2"][:, :, :4]), ValueError, "s2 has 4 bands but the (model|checkpoint)"),
        (lambda s: s.update(s1=s["s1"][:1], s1_dates=s["s1_dates"][:1]), ValueError, "batch sizes differ"),
        (lambda s: s.update(s2_mask=torch.zeros(2, 2)), ValueError, "s2_mask must be a bool tensor"),
        (lambda s: s.update(s2_dates=s["s2_dates"][:, :1]), ValueError, r"s2_dates must have shape \(B, T\)"),
        (lambda s: s.update(s2_dates=s["s2_dates"].float()), TypeError, "integer tensor of days"),
        (lambda s: s.pop("s1_dates"), ValueError, "s1_dates .* is required"),
        (lambda s: s.update(hr=s["hr"][0]), ValueError, r"hr must have shape \(B, C, H, W\)"),
        (lambda s: s.update(s1=s["s1"].half().long()), TypeError, "s1 is torch.int64.*floating-point"),
    ],
)
def test_model_and_contract_share_the_input_checks(model, edit, error, match):
    contract = default_meta(model.cfg).contract
    sample = contract.normalise(raw_sample())
    edit(sample)
    with pytest.raises(error, match=match):
        model.check_inputs(sample)
    with pytest.raises(error, match=match):
        contract.check_sample(sample, check_values=False)


def test_metadata_is_validated_on_load(model, tmp_path):
    state = model.state_dict()
    meta = default_meta(model.cfg)
    path = tmp_path / "bad.safetensors"

    def write(text: str) -> None:
        save_file(
            {k: v.contiguous() for k, v in state.items()}, path, metadata={"format": "pt", "skysense": text}
        )

    d = json.loads(meta.to_json())
    d["modalities"]["s2"]["bands"] = d["modalities"]["s2"]["bands"][:9]
    d["modalities"]["s2"]["mean"] = d["modalities"]["s2"]["mean"][:9]
    d["modalities"]["s2"]["std"] = d["modalities"]["s2"]["std"][:9]
    write(json.dumps(d))
    with pytest.raises(ValueError, match="lists 9 s2 bands.*takes 10 input channels"):
        load_pretrained(path)
    d = json.loads(meta.to_json())
    d["modalities"]["s1"]["units"] = "furlongs"
    write(json.dumps(d))
    with pytest.raises(ValueError, match="units 'furlongs' unknown"):
        load_pretrained(path)
    d = json.loads(meta.to_json())
    d["format_version"] = 99
    write(json.dumps(d))
    with pytest.raises(ValueError, match="newer skysense"):
        read_meta(path)
    write("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_meta(path)
    save_file({"x": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="without skysense metadata"):
        load_pretrained(path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_pretrained(path)
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="single '.safetensors' file"):
        save_pretrained(model, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="modalities"):
        CheckpointMeta(model.cfg, {"hr": meta.modalities["hr"]}).validate()
    with pytest.raises(ValueError, match="std must be > 0"):
        ModalitySpec(("VV",), "dB", (0.0,), (0.0,), 10.0).validate("s1")


def test_tensor_contents_are_validated_on_load(model, tmp_path):
    meta = default_meta(model.cfg)
    state = dict(model.state_dict())
    state["encoders.s2.pos_embed"] = torch.zeros(1, 17, 32)
    save_state(tmp_path / "shape.safetensors", state, meta)
    with pytest.raises(
        ValueError, match=r"encoders\.s2\.pos_embed.*expects \[1, 65, 32\], found \[1, 17, 32\]"
    ):
        load_pretrained(tmp_path / "shape.safetensors")
    state = dict(model.state_dict(), **{"encoders.s2.cls_token": torch.zeros(1, 1, 32, dtype=torch.int32)})
    save_state(tmp_path / "dtype.safetensors", state, meta)
    with pytest.raises(ValueError, match=r"encoders\.s2\.cls_token .* is torch\.int32"):
        load_pretrained(tmp_path / "dtype.safetensors")
    state = dict(model.state_dict(), **{"encoders.s2.extra": torch.zeros(2)})
    save_state(tmp_path / "extra.safetensors", state, meta)
    with pytest.raises(ValueError, match=r"no place in the model: \['encoders\.s2\.extra'\]"):
        load_pretrained(tmp_path / "extra.safetensors")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("geo.", "align.s1."))}
    save_state(tmp_path / "partial.safetensors", state, meta)
    with pytest.raises(ValueError, match=r"allow_missing=\('align\.s1', 'geo'\)"):
        load_pretrained(tmp_path / "partial.safetensors")
    loaded, _, report = load_pretrained(tmp_path / "partial.safetensors", allow_missing=("geo", "align.s1"))
    assert set(report.initialised) == {"geo.prototypes", "geo.query.weight", "geo.query.bias",
                                       "align.s1.decoder.0.weight", "align.s1.decoder.0.bias"}  # fmt: skip
    _, _, report = load_pretrained(tmp_path / "partial.safetensors", strict=False)
    assert len(report.initialised) == 5


def test_write_is_atomic(model, tmp_path, monkeypatch):
    path = save_pretrained(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    monkeypatch.undo()
    assert set(load_file(str(path))) == set(model.state_dict())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": torch.zeros(2), "x": Payload()}, tmp_path / "evil.pth")
    with open(tmp_path / "evil_raw.pth", "wb") as f:
        pickle.dump({"w": Payload()}, f)
    for name in ("evil.pth", "evil_raw.pth"):
        with pytest.raises(UnsafeCheckpointError, match="Python objects beyond tensors.*NOT loaded"):
            safe_torch_load(tmp_path / name)
        with pytest.raises(UnsafeCheckpointError):
            load_pretrained(tmp_path / name)
    assert not marker.exists()
    torch.save({"w": torch.ones(2)}, tmp_path / "fine.pth")
    assert torch.equal(safe_torch_load(tmp_path / "fine.pth")["w"], torch.ones(2))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_damaged_files_are_told_apart_from_code(tmp_path):
    torch.save({"w": torch.arange(1000.0)}, tmp_path / "fine.pth")
    data = (tmp_path / "fine.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pth").write_bytes(b"not a checkpoint at all\n" * 8)
    with open(tmp_path / "plain_pickle.pth", "wb") as f:
        pickle.dump([1, 2, 3], f)  # a pickle without globals: another format, nothing to run
    for name in ("truncated.pth", "text.pth", "plain_pickle.pth"):
        with pytest.raises(DamagedCheckpointError, match="not a readable PyTorch checkpoint.*restore a copy"):
            safe_torch_load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        safe_torch_load(tmp_path / "missing.pth")
    for mmap in (True, False):  # both read the same values; mmap=False gives private memory
        w = safe_torch_load(tmp_path / "fine.pth", mmap=mmap)["w"]
        assert torch.equal(w, torch.arange(1000.0))
        w.add_(1)
    assert (tmp_path / "fine.pth").read_bytes() == data  # in-place edits never reach the file


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = atomic_write(tmp_path / "f.txt", lambda tmp: tmp.write_text("old"))
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_text() == "old" and (path.stat().st_mode & 0o777) == 0o666 & ~umask

    def anew(tmp):  # a writer that replaces the file, private, as safetensors' save_file does
        tmp.unlink()
        tmp.touch(mode=0o600)
        tmp.write_text("new")

    (tmp_path / "other").mkdir()
    made = atomic_write(tmp_path / "other" / "g.bin", anew)
    assert (made.stat().st_mode & 0o777) == 0o666 & ~umask

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "other"]


@pytest.mark.slow
def test_checkpoint_and_convert_do_not_import_each_other():
    code = (
        "import sys, skysense.checkpoint\n"
        "assert 'skysense.convert' not in sys.modules, 'checkpoint imports convert'\n"
        "import skysense.convert\n"
        "assert 'skysense.pretrained' not in sys.modules, 'convert imports pretrained'\n"
        "import skysense\n"
        "assert skysense.load_pretrained is __import__('skysense.pretrained').pretrained.load_pretrained\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
