"""Training you can watch: periodic work in the training loop (its time kept apart, the model in
eval mode, the training's random streams untouched) and ``aimc train`` with ``eval.every_frames``
on the built-in world (success rates in TensorBoard, metrics.jsonl and the README; a sample video
per evaluation)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train_support import GOAL_DIM, SyntheticBatches, TinyPolicy, single_thread  # noqa: F401 (autouse fixture)

from aimc.cli import main
from aimc.config import load_config
from aimc.train.config import TrainConfig
from aimc.train.policy import train_policy

EMBED = 16  # goal size of the tiny text embedder and prior


def tiny_cfg(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny", [f"model.goal_dim={GOAL_DIM}", "logging.tensorboard=false",
                                             "validation.enabled=false", "checkpoint.every_frames=0", "schedule.warmup_frames=32",
                                             *overrides])


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class Probe:
    """A periodic callback that sleeps, checks how it is called and draws random numbers."""

    name = "probe"

    def __init__(self, every_frames: int, sleep: float = 0.0, fail_at: int | None = None) -> None:
        self.every_frames, self.sleep, self.fail_at = every_frames, sleep, fail_at
        self.calls: list[tuple[int, int, bool, bool]] = []
        self.started = self.closed = False

    def start(self, policy, note) -> None:
        self.started = True
        note("probe ready")

    def __call__(self, policy, step: int, frames: int) -> dict[str, float]:
        self.calls.append((step, frames, policy.training, torch.is_grad_enabled()))
        torch.rand(1000), np.random.rand(1000), random.random()  # must not shift the training's streams
        time.sleep(self.sleep)
        if frames == self.fail_at:
            raise RuntimeError("the env server went away")
        return {"probe/frames": float(frames)}

    def close(self) -> None:
        self.closed = True


def test_periodic_work_runs_every_n_frames_in_eval_mode_and_leaves_training_unchanged(tmp_path):
    # 5 steps of 32 frames; every 64 frames -> after steps 2 and 4, then once at the end (160)
    cfg = tiny_cfg("schedule.n_frames=160", "logging.every_frames=1")
    src = SyntheticBatches(4, 8)
    probe = Probe(64, sleep=0.5)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    result = train_policy(cfg, tmp_path / "watched", policy=TinyPolicy(), train_data=src, periodic=[probe])
    wall = time.perf_counter() - t0
    assert probe.started and probe.closed
    assert probe.calls == [(2, 64, False, False), (4, 128, False, False), (5, 160, False, False)]
    recs = records(tmp_path / "watched")
    assert [(r["frames"], r["probe/frames"]) for r in recs if "probe/frames" in r] == [(64, 64.0), (128, 128.0), (160, 160.0)]
    times = [r for r in recs if "time/probe_s" in r]
    assert len(times) == 3 and all(r["time/probe_s"] >= 0.5 for r in times)
    assert times[-1]["time/probe_total_s"] == pytest.approx(sum(r["time/probe_s"] for r in times))
    # its 1.5 s are not training time, in the result, the summary and the README
    assert result.seconds < wall - 1.5
    summary = json.loads((tmp_path / "watched" / "summary.json").read_text())
    assert summary["periodic_seconds"]["probe"] >= 1.5 and summary["hours"] * 3600 == pytest.approx(result.seconds)
    assert all(r["time/train_s"] <= result.seconds + 1e-6 for r in times)
    # the training itself is the same as without the callback (dropout draws from torch's stream)
    torch.manual_seed(0)
    train_policy(cfg, tmp_path / "plain", policy=TinyPolicy(), train_data=src)
    a, b = load_file(tmp_path / "watched" / "final.safetensors"), load_file(tmp_path / "plain" / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train/loss"] for r in recs if "train/loss" in r] == \
        [r["train/loss"] for r in records(tmp_path / "plain") if "train/loss" in r]


def test_max_seconds_counts_training_time_only(tmp_path):
    """3 s of periodic work after the first step would end a 3-second session if it counted."""
    cfg = tiny_cfg("schedule.n_frames=96", "schedule.max_seconds=3")
    probe = Probe(32, sleep=3.5)
    result = train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=SyntheticBatches(4, 8), periodic=[probe])
    assert result.frames == 96 and [c[1] for c in probe.calls] == [32, 64, 96]


def test_throughput_and_eta_leave_the_periodic_work_out(tmp_path):
    # 2 s of sleep after every 32-frame step: counted in, no step could show more than 16 frames/s
    cfg = tiny_cfg("schedule.n_frames=96", "logging.every_frames=1")
    train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=SyntheticBatches(4, 8), periodic=[Probe(32, 2.0)])
    speeds = [r["train/frames_per_s"] for r in records(tmp_path / "run") if "train/frames_per_s" in r]
    assert len(speeds) == 3 and min(speeds[1:]) > 40, speeds
    from aimc.train.checkpoint import Progress
    from aimc.train.config import LoggingConfig
    from aimc.train.metrics import MetricsLogger

    log = MetricsLogger(tmp_path / "eta", LoggingConfig(tensorboard=False, progress=False), enabled=False, total_frames=100)
    log._t0 = time.perf_counter() - 10.0  # 50 frames in 10 s: 5 frames/s, 10 s to go ...
    assert log._eta(Progress(frames=50)) == "0:00:10"
    log.exclude(5.0)  # ... unless 5 of those seconds were evaluation: 10 frames/s, 5 s to go
    assert log._eta(Progress(frames=50)) == "0:00:05"


def test_a_failed_periodic_call_is_a_warning_and_training_goes_on(tmp_path):
    cfg = tiny_cfg("schedule.n_frames=96")
    probe = Probe(32, fail_at=64)
    with pytest.warns(RuntimeWarning, match="probe at 64 frames failed .*the env server went away"):
        result = train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=SyntheticBatches(4, 8),
                              periodic=[probe])
    assert result.frames == 96 and [c[1] for c in probe.calls] == [32, 64, 96]
    assert [r["frames"] for r in records(tmp_path / "run") if "probe/frames" in r] == [32, 96]


def test_eval_settings_without_an_evaluator_are_not_silently_ignored(tmp_path):
    cfg = tiny_cfg("schedule.n_frames=32", "eval.every_frames=32")
    with pytest.warns(RuntimeWarning, match="eval.every_frames is set but no evaluator"):
        train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=SyntheticBatches(4, 8))


# ---------------------------------------------------------------------------- aimc train on the built-in world


def make_world_run(root: Path) -> tuple[Path, Path, Path]:
    """A small store shaped like the built-in world's (17 actions, 16-d goals), a tiny text
    embedder and prior beside it; returns (store, mineclip, prior)."""
    from test_agent import tiny_mineclip_config

    from aimc.checkpoints.mineclip import save_mineclip
    from aimc.checkpoints.prior import save_prior
    from aimc.data.split import make_split
    from aimc.data.store import EpisodeStore, VideoSettings
    from aimc.models.mineclip import MineCLIP
    from aimc.models.prior import PriorConfig, PriorCVAE

    torch.manual_seed(0)
    mineclip = save_mineclip(MineCLIP(tiny_mineclip_config()), root / "models" / "mineclip.safetensors")
    prior = save_prior(PriorCVAE(PriorConfig(input_dim=EMBED, hidden_dim=32, latent_dim=8)),
                       root / "models" / "prior.safetensors")
    store = EpisodeStore(root / "store", video=VideoSettings(crf=0, chunk_frames=16), embed_dtype="float32")
    rng = np.random.default_rng(0)
    for e in range(4):
        n = 48
        store.write_episode(f"ep{e}", rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
                            {"action": (np.arange(n) + e) % 17}, {"source": "test"},
                            embeddings=rng.normal(size=(n, EMBED)).astype(np.float32), embed_valid=np.arange(n) >= 15)
    make_split(store, val_fraction=0.25, seed=0)
    return root / "store", Path(mineclip), Path(prior)


def world_args(store: Path, mineclip: Path | None = None, prior: Path | None = None, **over: str) -> list[str]:
    args = {
        "data.stores": f"[{store}]", "model.goal_dim": str(EMBED),
        "model.policy": "{img_shape: [16, 16, 3], action_heads: {action: 17}}",
        "schedule.n_frames": "64", "schedule.warmup_frames": "8", "validation.max_batches": "1",
        "logging.tensorboard": "true", "eval.every_frames": "32", "eval.tasks": "[collect_wood,place_table]",
        "eval.episodes": "1", "eval.max_steps": "6", "eval.num_envs": "3",
    }
    if mineclip:
        args["eval.mineclip"] = str(mineclip)
    if prior:
        args["eval.prior"] = str(prior)
    args.update(over)
    return ["train", "--preset", "tiny", *(f"{k}={v}" for k, v in args.items())]


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("watch")
    store, mineclip, prior = make_world_run(root)
    run = root / "run"
    t0 = time.perf_counter()
    assert main([*world_args(store, mineclip, prior), "--out", str(run)]) == 0
    return run, store, mineclip, prior, time.perf_counter() - t0


def test_aimc_train_evaluates_on_the_built_in_world(watched_run):
    run, _, mineclip, prior, seconds = watched_run
    assert seconds < 60, f"the tiny watched run took {seconds:.0f} s"
    # two evaluations (32 and 64 frames), each an aimc eval folder with one sample video
    folders = sorted(p.name for p in (run / "evals").iterdir())
    assert folders == ["frames_000000000032", "frames_000000000064"]
    for name in folders:
        summary = json.loads((run / "evals" / name / "summary.json").read_text())
        assert list(summary["tasks"]) == ["collect_wood", "place_table"] and summary["episodes"] == 3
        videos = list((run / "evals" / name / "videos").glob("*.mp4"))
        assert [v.name for v in videos] == ["collect_wood__v0__e0.mp4"]
        from aimc.agent.video import read_video

        assert len(read_video(videos[0])) == 7  # the reset frame + 6 steps
        meta = json.loads((run / "evals" / name / "meta.json").read_text())
        assert meta["agent"]["cond_scale"] == 6.0 and meta["agent"]["prior"] is True
    # success rates with intervals and the evaluation's time in metrics.jsonl
    recs = [r for r in records(run) if "eval/mean/instructed" in r]
    assert [r["frames"] for r in recs] == [32, 64]
    for r in recs:
        for key in ("eval/collect_wood/instructed", "eval/place_table/unconditioned_high", "eval/mean/unconditioned",
                    "time/eval_s", "time/train_s"):
            assert key in r, key
        assert 0 <= r["eval/collect_wood/instructed_low"] <= r["eval/collect_wood/instructed"] \
            <= r["eval/collect_wood/instructed_high"] <= 1
    # ... in TensorBoard: scalars at the training frames, the video's frames as images
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    assert [s.step for s in ea.Scalars("eval/collect_wood/instructed")] == [32, 64]
    assert [s.step for s in ea.Scalars("time/eval_s")] == [32, 64]
    assert [e.step for e in ea.Images("eval_video/frames_000000000064")] == list(range(7))
    assert [e.step for e in ea.Images("eval_video/strip")] == [32, 64]
    # ... and in the README: the settings, one row per evaluation, the time kept apart
    readme = (run / "README.md").read_text()
    assert "## Evaluations during training" in readme and str(mineclip) in readme and str(prior) in readme
    rows = [line for line in readme.splitlines() if line.startswith("| 32 |") or line.startswith("| 64 |")]
    assert len(rows) == 2 and all("[video](evals/frames_" in r and " / " in r for r in rows)
    assert "0.00 [0.00, 0.79] / 0.00 [0.00, 0.79]" in rows[0] or "1.00 [0.21, 1.00]" in rows[0]
    result = readme.split("## Result", 1)[1]
    assert "of evaluation, not counted in it" in result
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_hours"] * 3600 == pytest.approx(summary["periodic_seconds"]["eval"])
    assert summary["periodic_seconds"]["eval"] == pytest.approx(recs[-1]["time/eval_total_s"])
    assert summary["last"]["time/train_s"] <= summary["hours"] * 3600 + 1e-6


def test_resumed_run_evaluates_again_and_says_so(watched_run, tmp_path):
    import shutil

    run0, *_ = watched_run
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    assert main(["train", "--resume", str(run), "schedule.n_frames=96"]) == 0
    assert (run / "evals" / "frames_000000000096" / "summary.json").is_file()
    readme = (run / "README.md").read_text()
    resumed = readme.split("## Resumed", 1)[1]
    assert "## Evaluations during training" in resumed and "| 96 | 3 |" in resumed


def test_goal_models_are_found_next_to_the_run(tmp_path):
    """As aimc eval finds them next to the weights: here RUN's parent holds mineclip.safetensors."""
    store, mineclip, prior = make_world_run(tmp_path)
    for p in (mineclip, prior):
        p.rename(tmp_path / p.name)
    run = tmp_path / "run"
    assert main([*world_args(store, **{"eval.every_frames": "64", "schedule.n_frames": "32"}), "--out", str(run)]) == 0
    readme = (run / "README.md").read_text()
    assert f"text embedder `{tmp_path / 'mineclip.safetensors'}`" in readme
    assert (run / "evals" / "frames_000000000032" / "summary.json").is_file()  # at the end


@pytest.mark.parametrize("case", ["no embedder", "unknown suite", "unknown task", "bad video task", "action heads",
                                  "goal size", "embedder is a text file"])
def test_wrong_eval_settings_fail_before_training(tmp_path, capsys, case):
    store, mineclip, prior = make_world_run(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    over, expected = {
        "no embedder": ({}, "none was found next to"),
        "unknown suite": ({"eval.suite": "no-such-suite"}, "shipped suite"),
        "unknown task": ({"eval.tasks": "[collect_wood,fly]"}, "no task 'fly'"),
        "bad video task": ({"eval.video_task": "eat_cow"}, "eval.video_task 'eat_cow'"),
        "action heads": ({"model.policy": "{img_shape: [16, 16, 3], action_heads: {action: 5}}"}, "action heads"),
        "goal size": ({"eval.prior": "", "eval.mineclip": str(mineclip), "model.goal_dim": "16"}, None),
        "embedder is a text file": ({"eval.mineclip": str(notes)}, str(notes)),
    }[case]
    if case == "goal size":  # a prior for other goals
        from aimc.checkpoints.prior import save_prior
        from aimc.models.prior import PriorConfig, PriorCVAE

        other = save_prior(PriorCVAE(PriorConfig(input_dim=8, hidden_dim=8, latent_dim=4)), tmp_path / "p8.safetensors")
        over, expected = {"eval.prior": str(other)}, "8-d goals but the policy takes 16-d goals"
    paths = (None, None) if case == "no embedder" else (mineclip, prior)
    args = world_args(store, *paths, **over)
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in err, err
    # nothing was trained, and the same --out can be used again once the setting is fixed
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not (tmp_path / "run" / "checkpoints" / "latest").exists()
    assert not metrics.exists() or not metrics.read_text().strip()
