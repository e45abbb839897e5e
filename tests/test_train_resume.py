"""Kill-safety and exact resume: SIGKILL a training process mid-run, resume it, and get
bit-identical final weights to an uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_train_support import single_thread, GOAL_DIM, SyntheticBatches, TinyPolicy  # noqa: F401 (autouse fixture)

from aimc.config import load_config
from aimc.train.checkpoint import clean_checkpoint_dir, load_checkpoint
from aimc.train.config import TrainConfig
from aimc.train.policy import train_policy

OVERRIDES = [f"model.goal_dim={GOAL_DIM}", "logging.tensorboard=false", "schedule.n_frames=384",
             "schedule.warmup_frames=64", "checkpoint.every_frames=32", "validation.every_frames=128",
             "checkpoint.snapshot_every_frames=0"]  # tiny: 32 frames per step

def _child(run: str) -> None:
    """The same training in a forked child, slowed down by the batch source so the parent
    can kill it part-way through."""
    torch.set_num_threads(1)
    cfg = load_config(TrainConfig, "tiny", OVERRIDES)
    torch.manual_seed(0)
    src = SyntheticBatches(4, 8, sleep=0.25)
    train_policy(cfg, run, policy=TinyPolicy(), train_data=src, val_data=src.val())


def _run(run: Path, resume: bool = False) -> dict[str, torch.Tensor]:
    cfg = load_config(TrainConfig, "tiny", OVERRIDES)
    torch.manual_seed(0)
    src = SyntheticBatches(4, 8)
    train_policy(cfg, run, resume=resume, policy=TinyPolicy(), train_data=src, val_data=src.val())
    return load_file(str(run / "final.safetensors"))


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    reference = _run(tmp_path / "straight")

    run = tmp_path / "killed"
    proc = mp.get_context("fork").Process(target=_child, args=(str(run),))
    proc.start()
    progress = run / "checkpoints" / "latest" / "progress.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            try:
                if json.loads(progress.read_text())["step"] >= 3:
                    break
            except (FileNotFoundError, NotADirectoryError, ValueError):  # not yet, or being replaced
                pass
            if not proc.is_alive():
                pytest.fail(f"child exited early with code {proc.exitcode}")
            time.sleep(0.05)
        else:
            pytest.fail("child made no checkpoint in time")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join()
    assert proc.exitcode == -signal.SIGKILL
    clean_checkpoint_dir(run / "checkpoints")  # (what --resume does first) in case the kill hit a rename
    step_at_kill = json.loads(progress.read_text())["step"]
    assert step_at_kill < 12  # really killed part-way (12 steps in all)
    load_checkpoint(run / "checkpoints" / "latest")  # loadable whatever moment the kill hit

    resumed = _run(run, resume=True)
    assert set(resumed) == set(reference)
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    assert "## Resumed" in (run / "README.md").read_text()
    # records the killed session logged after its last checkpoint were dropped, not duplicated
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in json.loads(x)]
    assert steps == sorted(set(steps)) and steps[-1] == 12


def test_resume_mid_sequence_restores_carried_state(tmp_path):
    # 3 chunks per sequence, 2 per step: checkpoints fall in the middle of sequences
    over = OVERRIDES + ["data.T=12", "optim.trunc_t=4", "schedule.n_frames=256", "validation.enabled=false"]
    cfg = load_config(TrainConfig, "tiny", over)
    torch.manual_seed(0)
    train_policy(cfg, tmp_path / "a", policy=TinyPolicy(), train_data=SyntheticBatches(4, 12))
    ref = load_file(str(tmp_path / "a" / "final.safetensors"))

    torch.manual_seed(0)

    class Stop(Exception):
        pass

    class Interrupting(SyntheticBatches):
        def batch(self, index):
            if index == 3:  # step 5 asks for the 4th sequence; step 4 ended at micro-step 8 (mid-sequence)
                raise Stop
            return super().batch(index)

    with pytest.raises(Stop):
        train_policy(cfg, tmp_path / "b", policy=TinyPolicy(), train_data=Interrupting(4, 12))
    saved = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest")
    assert saved["progress"].micro % 3 != 0 and saved["carried_state"] is not None
    torch.manual_seed(123)  # the resumed run must not depend on the seed state at call time
    train_policy(cfg, tmp_path / "b", resume=True, policy=TinyPolicy(), train_data=SyntheticBatches(4, 12))
    got = load_file(str(tmp_path / "b" / "final.safetensors"))
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_a_kill_between_the_two_renames_keeps_the_old_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints"
    (ckpt / ".old-latest.1234").mkdir(parents=True)  # the old latest, moved aside ...
    (ckpt / ".old-latest.1234" / "state.pt").write_text("old")
    (ckpt / ".tmp-latest.abcd").mkdir()  # ... and the new one, not yet renamed into place
    assert clean_checkpoint_dir(ckpt) == 1
    assert (ckpt / "latest" / "state.pt").read_text() == "old"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest"]
    # with latest in place, an .old copy is a leftover
    (ckpt / ".old-latest.99").mkdir()
    assert clean_checkpoint_dir(ckpt) == 1 and (ckpt / "latest" / "state.pt").read_text() == "old"


def _busy_child(run: str) -> None:
    """Checkpoints every step, as fast as it can: kills land in the middle of writes."""
    torch.set_num_threads(1)
    cfg = load_config(TrainConfig, "tiny", OVERRIDES + ["schedule.n_frames=100000", "validation.enabled=false"])
    torch.manual_seed(0)
    train_policy(cfg, run, policy=TinyPolicy(), train_data=SyntheticBatches(4, 8))


@pytest.mark.parametrize("delay", [0.1, 0.45])
def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path, delay):
    run = tmp_path / "run"
    proc = mp.get_context("fork").Process(target=_busy_child, args=(str(run),))
    proc.start()
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + 60
    while not (latest.exists() or list((run / "checkpoints").glob(".old-*"))) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    clean_checkpoint_dir(run / "checkpoints")
    saved = load_checkpoint(latest)
    assert saved["progress"].step >= 1 and set(saved["model"]) == set(TinyPolicy().state_dict())
