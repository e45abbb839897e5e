"""Training intervals count frames: when logging, validation, checkpoints and snapshots happen,
the step-counted keys of earlier versions refused with the new key and the converted value,
and the snapshot files (names, frames, contents that load)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train_cli import POLICY, D, make_store
from test_train_support import GOAL_DIM, SyntheticBatches, TinyPolicy, single_thread  # noqa: F401 (autouse fixture)

from aimc.config import ConfigError, load_config
from aimc.train import checkpoint as ckpt
from aimc.train.config import TrainConfig, ValidationConfig, crossed
from aimc.train.policy import train_policy


def tiny_cfg(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny", [f"model.goal_dim={GOAL_DIM}", "logging.tensorboard=false", *overrides])


def due_steps(frames_per_step: int, n_steps: int, is_due) -> list[int]:
    """The 1-based optimizer steps after which ``is_due(frames_before, frames_after)`` holds."""
    return [k for k in range(1, n_steps + 1) if is_due((k - 1) * frames_per_step, k * frames_per_step)]


# --------------------------------------------------------------------------- arithmetic


def test_an_interval_is_due_after_the_step_whose_frames_cross_a_multiple():
    assert due_steps(48, 10, lambda a, b: crossed(a, b, 100)) == [3, 5, 7, 9]  # 144, 240, 336, 432
    assert due_steps(50, 6, lambda a, b: crossed(a, b, 100)) == [2, 4, 6]  # landing exactly on a multiple counts
    assert due_steps(32, 5, lambda a, b: crossed(a, b, 10)) == [1, 2, 3, 4, 5]  # shorter than a step: every step
    assert due_steps(32, 5, lambda a, b: crossed(a, b, 0)) == []  # 0 = never (only at the end)


def test_validation_switches_from_the_begin_interval_at_switch_at_frames():
    v = ValidationConfig(every_frames=200, every_begin_frames=50, switch_at_frames=150)
    # 48 frames per step: 96, 144, 192 cross multiples of 50 (steps 2-4, the last one started below 150),
    # then 240 and 432 cross multiples of 200
    assert due_steps(48, 10, v.due) == [2, 3, 4, 5, 9]
    assert due_steps(48, 10, ValidationConfig(every_frames=200, switch_at_frames=0).due) == [5, 9]
    assert due_steps(48, 10, ValidationConfig(enabled=False).due) == []


@pytest.mark.parametrize("preset", ["finetune", "finetune_24gb", "steve1_from_vpt", "crafter", "crafter_finetune", "tiny"])
def test_frames_per_step_counts_grad_accum_and_processes_and_the_intervals_follow(preset):
    over = ["data.stores=[a,b]"] if preset == "crafter_finetune" else []
    cfg = load_config(TrainConfig, preset, over)
    o, n = cfg.optim, 600
    assert cfg.frames_per_step(1) == o.batch_size * o.trunc_t * o.grad_accum
    assert cfg.frames_per_step(4) == 4 * cfg.frames_per_step(1)
    one = due_steps(cfg.frames_per_step(1), n, cfg.validation.due)
    assert one  # the presets validate during their first 600 steps
    # two processes with half the batch each: the same frames per step, so the same steps
    if o.batch_size % 2 == 0:
        halves = load_config(TrainConfig, preset, [*over, f"optim.batch_size={o.batch_size // 2}"])
        assert halves.frames_per_step(2) == cfg.frames_per_step(1)
        assert due_steps(halves.frames_per_step(2), n, halves.validation.due) == one
    # twice the accumulation: steps twice as long, validation at the same frames (within a step)
    double = load_config(TrainConfig, preset, [*over, f"optim.grad_accum={o.grad_accum * 2}"])
    assert double.frames_per_step(1) == 2 * cfg.frames_per_step(1)
    assert due_steps(double.frames_per_step(1), n // 2, double.validation.due) == sorted({(k + 1) // 2 for k in one})


def test_finetune_presets_validate_where_the_template_did():
    """The fine-tune template (batch 8, 1 process: 512 frames per chunk) validated every 50 chunks
    until chunk 500, then every 200 chunks, and saved every 500 chunks; both fine-tune presets do
    the same in frames, whatever their batch shape."""
    for preset in ("finetune", "finetune_24gb"):
        cfg = load_config(TrainConfig, preset)
        v, fps = cfg.validation, cfg.frames_per_step(1)
        assert fps == 1024 and (v.every_begin_frames, v.switch_at_frames, v.every_frames) == (50 * 512, 500 * 512, 200 * 512)
        assert cfg.checkpoint.every_frames == 500 * 512
        steps = due_steps(fps, 500, v.due)
        assert steps[:10] == [25 * k for k in range(1, 11)] and steps[10:12] == [300, 400]


# --------------------------------------------------------------------------- in the loop


def test_the_loop_logs_validates_and_checkpoints_at_the_frames_due(tmp_path, monkeypatch):
    # 4 sequences x 4 frames x 3 accumulated chunks = 48 frames per step, 10 steps
    cfg = tiny_cfg("optim.grad_accum=3", "schedule.n_frames=480", "schedule.warmup_frames=64",
                   "logging.every_frames=100", "validation.every_begin_frames=50", "validation.switch_at_frames=150",
                   "validation.every_frames=200", "checkpoint.every_frames=120", "checkpoint.snapshot_every_frames=0")
    saved: list[int] = []
    real_save = ckpt.save_checkpoint

    def spy(path, *, progress, **kw):
        saved.append(progress.step)
        return real_save(path, progress=progress, **kw)

    monkeypatch.setattr(ckpt, "save_checkpoint", spy)
    src = SyntheticBatches(4, 8)
    seen = []
    train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=src, val_data=src.val(), on_validation=seen.append)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "train/loss" in r] == [3, 5, 7, 9, 10]  # 144, 240, 336, 432, and the end
    assert [(v.step, v.frames) for v in seen] == [(2, 96), (3, 144), (4, 192), (5, 240), (9, 432), (10, 480)]
    assert saved == [3, 5, 8, 10, 10]  # 144, 240, 384, 480, and the final one


def test_an_interval_shorter_than_a_step_warns_that_intervals_count_frames(tmp_path):
    cfg = tiny_cfg("schedule.n_frames=64", "schedule.warmup_frames=32", "validation.enabled=false",
                   "checkpoint.every_frames=5")
    with pytest.warns(RuntimeWarning, match=r"checkpoint.every_frames=5 is less than one optimizer step \(32 frames\).*"
                                            r"5 steps would be checkpoint.every_frames=160"):
        train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=SyntheticBatches(4, 8))


# --------------------------------------------------------------------------- snapshots


def test_snapshots_are_written_at_the_frames_due_and_hold_those_weights(tmp_path):
    from aimc.checkpoints.vpt import load_policy
    from aimc.data.split import make_split
    from aimc.train.policy import build_policy

    store = make_store(tmp_path / "store")
    make_split(store, val_fraction=0.25, seed=0)
    # 32 frames per step, 8 steps; a snapshot every 80 frames: after the steps that reach 96, 160 and 256
    cfg = load_config(TrainConfig, "tiny", [f"data.stores=[{store.root}]", f"model.goal_dim={D}", POLICY,
                                            "logging.tensorboard=false", "schedule.n_frames=256", "schedule.warmup_frames=32",
                                            "checkpoint.snapshot_every_frames=80", "validation.every_frames=32",
                                            "validation.max_batches=1"])
    policy = build_policy(cfg)
    weights_at = {}

    def keep(v):  # validation after every step, before that step's snapshot (no update in between)
        weights_at[v.frames] = {k: t.detach().clone() for k, t in policy.state_dict().items()}

    train_policy(cfg, tmp_path / "run", policy=policy, on_validation=keep)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    snaps = sorted(ckpt_dir.glob("snapshot_*"), key=lambda p: int(p.name.split("_")[1]))
    assert [p.name for p in snaps] == ["snapshot_96", "snapshot_160", "snapshot_256"]
    for snap in snaps:
        frames = int(snap.name.split("_")[1])
        assert sorted(p.name for p in snap.iterdir()) == ["policy.safetensors", "policy.weights", "policy.yaml"]
        loaded = load_policy(snap / "policy.safetensors")  # the config sidecar describes it
        official = load_policy(snap / "policy.weights", config=loaded.cfg)  # the official layout too
        for k, v in weights_at[frames].items():
            assert torch.equal(loaded.state_dict()[k], v), (snap.name, k)
            assert torch.equal(official.state_dict()[k], v), (snap.name, k)
    assert not all(torch.equal(weights_at[96][k], weights_at[160][k]) for k in weights_at[96])  # training moved on
    final = load_file(str(tmp_path / "run" / "final.safetensors"))
    assert all(torch.equal(final[k], weights_at[256][k]) for k in final)
    assert json.loads((ckpt_dir / "latest" / "progress.json").read_text())["next_snapshot_frames"] == 320


def test_no_snapshot_when_off(tmp_path):
    cfg = tiny_cfg("schedule.n_frames=128", "schedule.warmup_frames=32", "validation.enabled=false",
                   "checkpoint.snapshot_every_frames=0")
    train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=SyntheticBatches(4, 8))
    assert not list((tmp_path / "run" / "checkpoints").glob("snapshot_*"))


# --------------------------------------------------------------------------- the old step keys


@pytest.mark.parametrize("old, new, value", [
    ("validation.every", "validation.every_frames", 200),
    ("validation.every_begin", "validation.every_begin_frames", 50),
    ("validation.switch_at", "validation.switch_at_frames", 500),
    ("checkpoint.every", "checkpoint.every_frames", 500),
    ("logging.every", "logging.every_frames", 10),
])
def test_step_keys_are_refused_on_the_command_line_with_the_new_key_and_value(old, new, value):
    # finetune: 8 x 64 x 2 = 1,024 frames per optimizer step
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, "finetune", [f"{old}={value}"])
    msg = str(e.value)
    assert msg.startswith("the overrides (KEY=VALUE): ") and f"write {new} instead" in msg
    assert f"{old}={value} is {new}={value * 1024}" in msg and "1,024 frames per optimizer step" in msg


def test_step_keys_are_refused_in_a_yaml_file_naming_the_file(tmp_path):
    mine = tmp_path / "my_finetune.yaml"
    mine.write_text("base: finetune_24gb\nvalidation:\n  every: 200\ncheckpoint:\n  every: 100\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, mine)
    msg = str(e.value)
    assert msg.startswith(f"{mine}: ")  # the file, then every old key in it
    assert "validation.every=200 is validation.every_frames=204800" in msg
    assert "checkpoint.every=100 is checkpoint.every_frames=102400" in msg


def test_a_run_folder_from_before_says_what_to_change_in_its_config(tmp_path):
    from aimc.train.rundir import load_run_config

    run = tmp_path / "old_run"
    run.mkdir()
    (run / "config.yaml").write_text("optim:\n  batch_size: 4\n  trunc_t: 4\n  grad_accum: 2\n"
                                     "data:\n  T: 8\nlogging:\n  every: 5\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: logging\.every counted optimizer steps.*"
                                          r"logging\.every=5 is logging\.every_frames=160"):
        load_run_config(run)


def test_the_converted_value_counts_every_process(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")  # as torchrun sets it
    with pytest.raises(ConfigError, match=r"x 4 processes = 4,096 frames.*validation.every_frames=819200"):
        load_config(TrainConfig, "finetune", ["validation.every=200"])


def test_a_non_numeric_old_key_still_names_the_new_one():
    with pytest.raises(ConfigError, match=r"write checkpoint.every_frames instead$"):
        load_config(TrainConfig, "tiny", ["checkpoint.every=often"])


def test_shipped_presets_and_spaces_use_frame_keys_only():
    from importlib import resources

    import yaml

    root = resources.files("aimc") / "configs"
    texts = [f.read_text(encoding="utf-8") for f in root.iterdir() if f.name.endswith(".yaml")]
    texts += [f.read_text(encoding="utf-8") for f in (root / "spaces").iterdir() if f.name.endswith(".yaml")]
    for text in texts:
        doc = yaml.safe_load(text) or {}
        for section in ("validation", "checkpoint", "logging"):
            assert not {"every", "every_begin", "switch_at"} & set(doc.get(section) or {}), text[:80]
        for old in ("validation.every=", "validation.every_begin=", "validation.switch_at=", "checkpoint.every=",
                    "logging.every="):
            assert old not in text, old
