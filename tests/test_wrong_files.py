"""Every command that takes a checkpoint or data file answers a wrong file with a clear error.

A text file, an empty file, a directory and a truncated file, given where a checkpoint is
expected: exit code 2, one ``error:`` line that names the file, never a traceback.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from aimc.checkpoints.vpt import save_model_file, save_policy
from aimc.cli import main
from aimc.models.vpt import PolicyConfig, STEVE1Policy

KINDS = ["text", "empty", "directory", "truncated"]


def _tiny_cfg() -> PolicyConfig:
    return PolicyConfig(
        hidsize=16, impala_width=1, impala_chans=[4, 4, 4], img_shape=[32, 32, 3], attention_heads=2,
        attention_memory_size=8, timesteps=4, n_recurrence_layers=1, mineclip_embed_dim=8,
        action_heads={"buttons": 5, "camera": 3},
    )


def _bad(tmp_path: Path, name: str, kind: str) -> Path:
    p = tmp_path / "bad" / name
    p.parent.mkdir(exist_ok=True)
    if kind == "text":
        p.write_text("these are my notes, not a checkpoint\n")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "directory":
        p.mkdir()
    else:  # the first part of a real file of that kind
        good = tmp_path / ("good" + p.suffix)
        if p.suffix == ".model":
            save_model_file(_tiny_cfg(), good)
        elif p.suffix == ".npz":
            import numpy as np

            np.savez(good, text_embeddings=np.zeros((4, 8), np.float32), visual_embeddings=np.zeros((4, 8), np.float32))
        else:
            torch.save({"w": torch.zeros(1000)}, good)
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return p


@pytest.fixture
def weights(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    w, m = tmp_path / "ok.weights", tmp_path / "ok.model"
    save_policy(STEVE1Policy(_tiny_cfg()), w, model_path=m)
    return w, m


COMMANDS = {
    "checkpoint inspect": ("policy.weights", lambda f, ok, tmp: ["checkpoint", "inspect", f]),
    "checkpoint inspect .model": ("policy.model", lambda f, ok, tmp: ["checkpoint", "inspect", f]),
    "checkpoint convert": ("policy.weights", lambda f, ok, tmp: ["checkpoint", "convert", f, str(tmp / "o.safetensors"), "--model", ok[1]]),
    "checkpoint convert --model": ("policy.model", lambda f, ok, tmp: ["checkpoint", "convert", ok[0], str(tmp / "o.safetensors"), "--model", f]),
    "run --weights": ("policy.weights", lambda f, ok, tmp: ["run", "--weights", f, "--model", ok[1], "--prompt", "x"]),
    "eval --weights": ("policy.weights", lambda f, ok, tmp: ["eval", "--weights", f, "--model", ok[1], "--suite", "crafter-core", "--out", str(tmp / "ev")]),
    "mineclip inspect": ("attn.pth", lambda f, ok, tmp: ["mineclip", "inspect", f]),
    "mineclip embed-text": ("attn.pth", lambda f, ok, tmp: ["mineclip", "embed-text", "hi", "--weights", f]),
    "prior train --data": ("pairs.npz", lambda f, ok, tmp: ["prior", "train", "--data", f, "--out", str(tmp / "pr")]),
    "data embed --mineclip": ("attn.pth", lambda f, ok, tmp: ["data", "embed", str(tmp), "--mineclip", f]),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_wrong_file_is_a_clear_error(tmp_path: Path, weights, command: str, kind: str, capsys):
    name, argv = COMMANDS[command]
    bad = _bad(tmp_path, name, kind)
    rc = main(argv(str(bad), tuple(map(str, weights)), tmp_path))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(bad) in err, err


def test_truncated_pickle_model_is_not_called_dangerous(tmp_path: Path, capsys):
    p = tmp_path / "cut.model"
    p.write_bytes(pickle.dumps({"model": {"args": {"net": {"args": {"hidsize": 8}}}}}, protocol=4)[:40])
    assert main(["checkpoint", "inspect", str(p)]) == 2
    err = capsys.readouterr().err
    assert "not a readable pickle" in err and "refused" not in err
