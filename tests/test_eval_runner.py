"""The evaluator against a scripted policy on a toy world whose outcomes are known exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from aimc.errors import UserError
from aimc.eval.metrics import summarize
from aimc.eval.runner import plan_jobs, read_results, run_suite
from aimc.eval.suite import parse_suite

HERE = Path(__file__).resolve().parent


class ToyEnv:
    """A 1-D world. Actions: 0 wait, 1 chop (wood +1), 2 plant (only on even seeds), 3 walk (+1 x).

    ``crash_once``: a folder; the first reset with seed 101 raises (env crash), later ones work.
    ``sleep``: seconds per step (for the kill/resume test).
    """

    known_measures = frozenset({"inventory.wood", "achievement.place_plant", "pos.x", "pos.z", "stat.energy"})
    action_heads = {"action": 4}

    def __init__(self, crash_once: str | None = None, sleep: float = 0.0) -> None:
        self.crash_once = crash_once
        self.sleep = sleep

    def _obs(self):
        frame = np.full((8, 8, 3), self.x * 10 % 256, dtype=np.uint8)
        m = {"inventory.wood": self.wood, "achievement.place_plant": self.plants, "pos.x": self.x, "pos.z": 0.0,
             "stat.energy": 5.0}
        return frame, m

    def reset(self, seed):
        if self.crash_once and seed == 101:
            marker = Path(self.crash_once) / "crashed"
            if not marker.exists():
                marker.write_text("x")
                raise RuntimeError("simulated env crash")
        self.seed, self.wood, self.plants, self.x = seed, 0.0, 0.0, 0.0
        return self._obs()

    def step(self, action):
        if self.sleep:
            time.sleep(self.sleep)
        a = action["action"]
        if a == 1:
            self.wood += 1
        elif a == 2 and self.seed % 2 == 0:
            self.plants += 1
        elif a == 3:
            self.x += 1
        frame, m = self._obs()
        return frame, m, False

    def close(self):
        pass


class ScriptedAgent:
    """Goal = one-hot of the instruction's keyword; acts on it (wait when unconditioned)."""

    words = ("wood", "plant", "walk")

    def __init__(self):
        self.batch = None
        self.calls = 0

    def describe(self):
        return {"kind": "scripted"}

    def reset(self, batch_size):
        self.batch = batch_size

    def goal(self, instruction, seed):
        g = np.zeros(3, np.float32)
        for i, w in enumerate(self.words):
            if instruction and w in instruction:
                g[i] = 1
        return g

    def act(self, frames, goals, first):
        assert frames.shape[0] == goals.shape[0] == first.shape[0] == self.batch
        self.calls += 1
        a = np.where(goals.sum(1) > 0, goals.argmax(1) + 1, 0)
        return {"action": a.astype(np.int64)}


def toy_suite(matrix=True, episodes=4, extra_env=None):
    return parse_suite({
        "name": "toy",
        "env": {"name": "test_eval_runner:ToyEnv", **(extra_env or {})},
        "episodes": episodes, "max_steps": 6, "seed": 100, "matrix": matrix,
        "tasks": [
            {"id": "wood", "instructions": ["get wood", "chop wood please", "砍 wood"], "success": {"inventory": {"wood": 2}}},
            {"id": "plant", "instructions": ["plant"], "success": {"achievement": "place_plant"}},
            {"id": "walk", "instructions": ["walk"], "success": {"travel": 3}, "max_steps": 4},
        ],
    }, "toy.yaml")


def test_success_counts_match_scripted_outcomes(tmp_path):
    suite = toy_suite()
    agent = ScriptedAgent()
    res = run_suite(suite, agent, tmp_path, num_envs=3, progress=False)
    rows = read_results(res)
    assert len(rows) == 4 * 4  # 3 tasks + unconditioned, 4 episodes
    s = summarize(rows, suite)
    t = s["tasks"]
    assert (t["wood"]["instructed"]["successes"], t["wood"]["instructed"]["n"]) == (4, 4)
    assert t["wood"]["steps_to_success"]["median"] == 2
    assert (t["plant"]["instructed"]["successes"], t["plant"]["instructed"]["n"]) == (2, 4)  # even seeds only
    assert t["walk"]["instructed"]["successes"] == 4 and t["walk"]["steps_to_success"]["max"] == 3
    for g in ("wood", "plant", "walk"):
        assert t[g]["unconditioned"]["successes"] == 0
        assert t[g]["others"]["successes"] == 0
    assert s["matrix_cells"]["cells"]["plant"]["wood"]["successes"] == 0
    assert t["wood"]["lift"]["diff"] == 1.0 and t["wood"]["lift"]["significant"]
    assert t["wood"]["lift_disjoint"] and not t["plant"]["lift_disjoint"]
    # variants: episodes 0..3 use phrasing k mod 3 -> counts 2, 1, 1
    assert [v["n"] for v in t["wood"]["variants"].values()] == [2, 1, 1]
    assert t["wood"]["variants"]["砍 wood"]["lang"] == "zh"
    # same seeds for every condition
    seeds = {r["condition"]: sorted(r2["seed"] for r2 in rows if r2["condition"] == r["condition"]) for r in rows}
    assert all(v == [100, 101, 102, 103] for v in seeds.values())
    assert s["lift_summary"]["positive_disjoint"] == 2


def test_walk_horizon_and_early_stop(tmp_path):
    suite = toy_suite(matrix=False, episodes=2)
    rows = read_results(run_suite(suite, ScriptedAgent(), tmp_path, num_envs=2, progress=False))
    by = {r["key"]: r for r in rows}
    # non-matrix episodes stop at success
    assert by["wood/v0/e0"]["steps"] == 2 and by["walk/v0/e0"]["steps"] == 3
    assert by["plant/v0/e1"]["steps"] == 6 and by["plant/v0/e1"]["success"] == {"plant": None}


def test_env_crash_is_retried_and_recorded(tmp_path):
    suite = toy_suite(episodes=2, extra_env={"crash_once": str(tmp_path)})
    rows = read_results(run_suite(suite, ScriptedAgent(), tmp_path / "out", num_envs=2, workers=1, progress=False))
    crashed = [r for r in rows if r["crashes"]]
    assert len(crashed) == 1 and "simulated env crash" in crashed[0]["crashes"][0]
    assert crashed[0]["seed"] == 101 and crashed[0]["error"] is None
    s = summarize(rows, suite)
    assert s["tasks"]["wood"]["instructed"]["successes"] == 2


def test_resume_skips_done_and_refuses_other_suite(tmp_path):
    suite = toy_suite(episodes=2)
    agent = ScriptedAgent()
    run_suite(suite, agent, tmp_path, num_envs=1, progress=False)
    calls = agent.calls
    run_suite(suite, agent, tmp_path, num_envs=1, progress=False)
    assert agent.calls == calls  # nothing left to play
    run_suite(suite, agent, tmp_path, episodes=3, num_envs=1, progress=False)
    rows = read_results(tmp_path / "results.jsonl")
    assert len(rows) == 12 and len({r["key"] for r in rows}) == 12
    with pytest.raises(UserError, match="different suite"):
        run_suite(toy_suite(episodes=2, extra_env={"sleep": 0.0}), agent, tmp_path, progress=False)


def test_resume_after_kill(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from test_eval_runner import ScriptedAgent, toy_suite
        from aimc.eval.runner import run_suite
        run_suite(toy_suite(episodes=6, extra_env={{"sleep": 0.02}}), ScriptedAgent(), {str(out)!r}, num_envs=1,
                  progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(HERE)})
    results = out / "results.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and len(read_results(results)) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_results(results)
    assert 3 <= len(before) < 24, "the kill should land mid-evaluation"
    # simulate a kill in the middle of a write: a torn last line must be ignored and repaired
    with open(results, "a", encoding="utf-8") as f:
        f.write('{"key": "wood/v0/e5", "succ')
    agent = ScriptedAgent()
    suite = toy_suite(episodes=6, extra_env={"sleep": 0.02})
    run_suite(suite, agent, out, num_envs=2, progress=False)
    rows = read_results(results)
    assert len(rows) == 24 and len({r["key"] for r in rows}) == 24
    assert {r["key"] for r in before} <= {r["key"] for r in rows}
    assert all(json.loads(line) for line in results.read_text().splitlines())
    s = summarize(rows, suite)
    assert s["tasks"]["plant"]["instructed"]["successes"] == 3  # seeds 100..105, even ones
    assert s["tasks"]["wood"]["instructed"]["successes"] == 6


def test_plan_is_paired_and_fixed():
    suite = toy_suite(episodes=3)
    a, b = plan_jobs(suite), plan_jobs(suite)
    assert [j.key for j in a] == [j.key for j in b]
    assert {j.seed for j in a if j.condition == "_unconditioned"} == {100, 101, 102}
