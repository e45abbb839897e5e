"""`aimc run` end to end on the built-in world with a tiny random agent."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from aimc.agent.video import VideoWriter, overlay, read_video
from aimc.cli import main

from test_agent import make_bundle


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def _caption_rows(video_frames, scale=2):
    bar = video_frames.shape[1] - 64 * scale
    return video_frames[:, 2:bar // 2, :, :]  # the prompt line of the caption bar


def test_run_prompt_writes_mp4_with_overlay(weights, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc = main(["run", "--weights", str(weights), "--prompt", "collect wood", "--steps", "12", "--video", str(out),
               "--scale", "2", "--seed", "3", "--device", "cpu"])
    assert rc == 0
    frames = read_video(out)
    expected = overlay(np.zeros((64, 64, 3), np.uint8), "collect wood", 0, scale=2).shape
    assert frames.shape == (13, *expected)  # first observation + 12 steps
    bar = expected[0] - 128
    assert frames[:, :bar].max() > 100  # caption drawn on every frame
    assert frames[:, bar:].std() > 5  # the game is visible below it
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["steps"] == 12 and side["prompts"] == [{"step": 0, "prompt": "collect wood"}]
    assert "video:" in capsys.readouterr().out


def test_run_prompt_schedule_switches(weights, tmp_path):
    out = tmp_path / "sched.mp4"
    main(["run", "--weights", str(weights), "--prompts", "collect wood;place a table", "--switch-every", "5",
          "--steps", "12", "--video", str(out), "--scale", "2", "--device", "cpu"])
    side = json.loads(out.with_suffix(".json").read_text())
    assert [p["prompt"] for p in side["prompts"]] == ["collect wood", "place a table", "collect wood"]
    assert [p["step"] for p in side["prompts"]] == [0, 5, 10]
    cap = _caption_rows(read_video(out)).astype(int)
    # the prompt line changes exactly when the prompt does: frame k shows the prompt that chose action k
    change, same = np.abs(cap[6] - cap[5]).sum(), np.abs(cap[7] - cap[6]).sum()
    assert change > 10_000 and same < change / 10


def test_run_goal_video_and_batched_envs(weights, tmp_path):
    clip = tmp_path / "goal.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(clip, scale=1, overlay_text=False) as v:
        for _ in range(16):
            v.add(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out = tmp_path / "vid.mp4"
    rc = main(["run", "--weights", str(weights), "--goal-video", str(clip), "--steps", "6", "--video", str(out),
               "--num-envs", "2", "--workers", "1", "--scale", "1", "--device", "cpu"])
    assert rc == 0
    assert read_video(out).shape[0] == 7 and read_video(tmp_path / "vid_env1.mp4").shape[0] == 7
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["prompts"][0]["prompt"] == "(goal video)" and side["num_envs"] == 2


def test_run_interactive_reads_prompts(weights, tmp_path):
    from aimc.agent.agent import Agent
    from aimc.agent.play import play
    from aimc.checkpoints.mineclip import load_mineclip
    from aimc.checkpoints.prior import load_prior
    from aimc.checkpoints.vpt import load_policy

    run = weights.parent.parent
    agent = Agent(load_policy(weights), load_mineclip(run / "mineclip.safetensors"), load_prior(run / "prior.safetensors"),
                  device="cpu")
    res = play(agent, {"name": "crafter"}, steps=15, interactive=True, input_stream=io.StringIO("place a table\n"),
               video=tmp_path / "i.mp4", fps=100, scale=1, progress=False)
    assert res.steps == 15 and res.prompts[0]["prompt"].startswith("(no prompt")
    assert res.prompts[-1]["prompt"] == "place a table"
    res = play(agent, {"name": "crafter"}, steps=10_000, interactive=True, input_stream=io.StringIO("mine stone\nquit\n"),
               video=tmp_path / "q.mp4", fps=200, scale=1, progress=False)
    assert res.steps < 100  # 'quit' stopped it
    assert read_video(tmp_path / "q.mp4").shape[0] == res.steps + 1


def test_run_errors(weights, tmp_path, capsys):
    assert main(["run", "--weights", str(weights), "--steps", "2", "--device", "cpu"]) == 2
    assert "give a goal" in capsys.readouterr().err
    assert main(["run", "--weights", str(weights), "--prompts", "a;b", "--device", "cpu"]) == 2
    assert main(["run", "--weights", str(tmp_path / "nope.safetensors"), "--prompt", "x"]) == 2


def test_run_on_fake_minerl(tmp_path):
    weights = make_bundle(tmp_path / "mc", heads={"buttons": 8641, "camera": 121}, img=128)
    out = tmp_path / "mc.mp4"
    rc = main(["run", "--weights", str(weights), "--prompt", "chop a tree", "--env", "minerl", "--env-opt", "fake=true",
               "--env-opt", "fake_options={crash_at_step: 4}", "--steps", "6", "--video", str(out), "--scale", "1",
               "--device", "cpu"])
    assert rc == 0
    frames = read_video(out)
    assert frames.shape[0] == 7 and frames.shape[2] == 128  # the agent-size 128x128 frame, caption above
    side = json.loads(out.with_suffix(".json").read_text())
    assert len(side["crashes"]) == 1 and "Connection reset" in side["crashes"][0]  # recorded, play went on
    assert side["episodes"] == 2
