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
