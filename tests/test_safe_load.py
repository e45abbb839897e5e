from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from aimc.checkpoints.safe_load import UnsafeFileError, load_plain_pickle, load_torch_file


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_plain_pickle_loads_data(tmp_path: Path):
    p = tmp_path / "a.pkl"
    data = {"a": [1, 2.5, None], "b": np.arange(3, dtype=np.float32), "c": OrderedDict(x=(1, 2))}
    p.write_bytes(pickle.dumps(data, protocol=4))
    out = load_plain_pickle(p)
    assert out["a"] == [1, 2.5, None] and out["b"].dtype == np.float32 and out["c"]["x"] == (1, 2)


@pytest.mark.parametrize("loader", [load_plain_pickle, load_torch_file])
def test_malicious_pickle_never_runs(tmp_path: Path, loader):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.model"
    p.write_bytes(pickle.dumps({"model": _Evil(str(marker))}))
    with pytest.raises(UnsafeFileError) as e:
        loader(p)
    assert str(p) in str(e.value)
    assert not marker.exists()


class Hparams:  # stands for a training framework's object saved beside the weights
    def __init__(self):
        self.lr = 0.1


def test_torch_file_with_foreign_objects_keeps_tensors_inert(tmp_path: Path):
    p = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hparams": Hparams()}, p)
    with pytest.warns(UserWarning, match="not executed"):
        out = load_torch_file(p)
    assert torch.equal(out["state_dict"]["w"], torch.ones(2))
    assert not isinstance(out["hparams"], Hparams)


def test_zip_checkpoint_with_code_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.weights"
    torch.save({"w": torch.ones(2), "x": _Evil(str(marker))}, p)
    with pytest.raises(UnsafeFileError, match="system"):
        load_torch_file(p)
    assert not marker.exists()


def test_truncated_file_is_a_clear_error(tmp_path: Path):
    p = tmp_path / "t.weights"
    torch.save({"w": torch.ones(100)}, p)
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(UnsafeFileError, match="t.weights"):
        load_torch_file(p)
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "missing.weights")


# ---- crafted pickles aimed at the NEWOBJ + BUILD path that official .model files need ---------

import struct  # noqa: E402
import sys  # noqa: E402

from aimc.checkpoints.safe_load import InertRecord  # noqa: E402


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _in_model(payload: bytes) -> bytes:
    """``{"model": {"args": {"net": {"args": {}}}}, "extra_args": <payload>}`` as a protocol-2 pickle."""
    model = b"}" + _str("args") + b"}" + _str("net") + b"}" + _str("args") + b"}" + b"s" + b"s" + b"s"
    return b"\x80\x02}" + _str("model") + model + b"s" + _str("extra_args") + payload + b"s."


def _newobj_build(module: str, name: str, state: bytes) -> bytes:
    return _global(module, name) + b")" + b"\x81" + state + b"b"


def _system(marker: Path) -> bytes:
    return _global("os", "system") + _str(f"touch {marker}") + b"\x85R"


def _hostile_payloads(marker: Path) -> dict[str, bytes]:
    popen_args = b"]" + _str("touch") + b"a" + _str(str(marker)) + b"a" + b"\x85"
    return {
        "NEWOBJ of subprocess.Popen": _global("subprocess", "Popen") + popen_args + b"\x81",
        "NEWOBJ+BUILD of subprocess.Popen": _global("subprocess", "Popen") + popen_args + b"\x81}" + b"b",
        "BUILD state holding a REDUCE of os.system": _newobj_build(
            "gym3.types", "TensorType", b"}" + _str("shape") + _system(marker) + b"s"
        ),
        "gym3 global called with REDUCE": _global("gym3.types", "DictType") + _str(f"touch {marker}") + b"\x85R",
        "gym3 global called with OBJ": b"(" + _global("gym3.types", "DictType") + _str("x") + b"o",
        "gym3 global called with INST": b"(" + _str("x") + b"igym3.types\nDictType\n",
        "gym3 global built with NEWOBJ_EX": _global("gym3.types", "DictType") + b")}" + b"\x92",
        "foreign callable inside the state": _newobj_build(
            "gym3.types", "TensorType", b"}" + _str("n") + _global("gym3.types", "evil") + b")R" + b"s"
        ),
        "foreign global kept as a bare value": b"]" + _global("gym3.types", "DictType") + b"a",
    }


@pytest.mark.parametrize("kind", list(_hostile_payloads(Path("m"))))
def test_crafted_model_files_are_refused_and_never_run(tmp_path: Path, kind: str):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.model"
    p.write_bytes(_in_model(_hostile_payloads(marker)[kind]))
    with pytest.raises(UnsafeFileError) as e:
        load_plain_pickle(p)
    message = str(e.value)
    assert str(p) in message and "refused" in message
    assert not marker.exists()
    assert "gym3" not in sys.modules


@pytest.mark.parametrize("kind", ["BUILD state holding a REDUCE of os.system", "gym3 global called with REDUCE"])
def test_crafted_model_files_via_the_cli(tmp_path: Path, kind: str, capsys):
    from aimc.cli import main

    marker = tmp_path / "pwned"
    p = tmp_path / "evil.model"
    p.write_bytes(_in_model(_hostile_payloads(marker)[kind]))
    assert main(["checkpoint", "inspect", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "refused" in err and "Traceback" not in err
    assert not marker.exists()


def test_refusal_names_what_was_asked(tmp_path: Path):
    p = tmp_path / "a.model"
    p.write_bytes(_in_model(_hostile_payloads(tmp_path / "m")["gym3 global called with REDUCE"]))
    with pytest.raises(UnsafeFileError, match=r"gym3\.types\.DictType.*REDUCE"):
        load_plain_pickle(p)


def test_newobj_build_of_a_foreign_class_is_inert_data(tmp_path: Path, monkeypatch):
    """A class whose module would do harm on import and whose __setstate__ would too: never touched."""
    marker = tmp_path / "pwned"
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "aimc_test_trap.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "class Trap:\n"
        f"    def __setstate__(self, state): open({str(marker)!r}, 'w').close()\n"
    )
    monkeypatch.syspath_prepend(str(pkg))
    p = tmp_path / "trap.model"
    p.write_bytes(_in_model(_newobj_build("aimc_test_trap", "Trap", b"}" + _str("n") + b"K\x07s")))
    data = load_plain_pickle(p)
    record = data["extra_args"]
    assert isinstance(record, InertRecord) and record.cls == "aimc_test_trap.Trap" and record.state == {"n": 7}
    assert "aimc_test_trap" not in sys.modules
    assert not marker.exists()


def test_model_files_aimc_writes_hold_builtins_only(tmp_path: Path):
    """The original code reads them with a plain pickle.load: no class of ours, nothing but builtins."""
    from aimc.checkpoints.vpt import load_model_file, save_model_file
    from aimc.models.vpt import PolicyConfig

    class NothingAllowed(pickle.Unpickler):
        def find_class(self, module, name):
            raise AssertionError(f"the file names {module}.{name}")

    for cfg in (PolicyConfig(), PolicyConfig(recurrence_type="lstm", mineclip_embed_dim=0)):
        p = tmp_path / "out.model"
        save_model_file(cfg, p)
        with open(p, "rb") as f:
            data = NothingAllowed(f).load()
        assert data["model"]["args"]["net"]["args"]["hidsize"] == cfg.hidsize
        assert load_model_file(p) == cfg


@pytest.mark.parametrize("content", ["text", "empty", "directory", "truncated"])
def test_wrong_files_are_clear_errors(tmp_path: Path, content: str):
    from test_wrong_files import _bad

    from aimc.errors import UserError

    p = _bad(tmp_path, "policy.model", content)
    for loader in (load_plain_pickle, load_torch_file):
        with pytest.raises(UserError) as e:
            loader(p)
        assert str(p) in str(e.value)
