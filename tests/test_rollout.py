"""The rollout collector: fixed seeds give the same rollouts, crashes are restarted and recorded,
and what the policy computed (log-probs, values, goals) is kept per step."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aimc.agent.rollout import Episode, RolloutCollector

from test_agent import TINY_EMBED
from test_eval_runner import ScriptedAgent, ToyEnv

TOY = {"name": "test_eval_runner:ToyEnv"}


class StepCrashEnv(ToyEnv):
    """The toy world, whose step ``crash_step`` raises once (a marker file in ``marker_dir`` remembers it)."""

    def __init__(self, marker_dir: str, crash_step: int = 2) -> None:
        super().__init__()
        self.marker = Path(marker_dir) / "step_crashed"
        self.crash_step = crash_step

    def reset(self, seed):
        self.steps = 0
        return super().reset(seed)

    def step(self, action):
        self.steps += 1
        if self.steps == self.crash_step and not self.marker.exists():
            self.marker.write_text("x")
            raise RuntimeError("simulated step crash")
        return super().step(action)


@pytest.fixture(scope="module")
def policy_agent():
    from aimc.agent.agent import Agent
    from aimc.models.vpt import PolicyConfig, STEVE1Policy

    torch.manual_seed(0)
    policy = STEVE1Policy(PolicyConfig.tiny(action_heads={"action": 4}, mineclip_embed_dim=TINY_EMBED))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Agent(policy, cond_scale=3.0, device="cpu", seed=4)


def _goal(k: int) -> np.ndarray:
    return np.random.default_rng(k).standard_normal(TINY_EMBED).astype(np.float32)


def _episodes(n_per_slot: int, horizon: int, env: dict = TOY):
    """next_episode: slot k plays seeds 100 + 10 k, 101 + 10 k, ... with its own goal, then idles."""
    given = {}

    def next_episode(slot: int) -> Episode | None:
        i = given.get(slot, 0)
        if i >= n_per_slot:
            return None
        given[slot] = i + 1
        return Episode(env, 100 + 10 * slot + i, goal=_goal(slot), horizon=horizon, tag=(slot, i))

    return next_episode


def _collect(agent, num_envs=2, n_per_slot=2, horizon=5, **kw):
    starts = []
    with RolloutCollector(agent, num_envs, _episodes(n_per_slot, horizon), on_start=lambda *a: starts.append(a),
                          **kw) as c:
        records = list(c.run())
    return records, starts, c


def _key(r):
    return (r.slot, r.episode.seed, r.t, r.action, r.log_prob, r.value, r.goal.tobytes(), r.frame.tobytes(),
            sorted(r.measures.items()), r.done, r.truncated)


def test_fixed_seeds_give_the_same_rollouts_twice(policy_agent):
    policy_agent.generator.manual_seed(4)
    a, starts, c = _collect(policy_agent)
    policy_agent.generator.manual_seed(4)
    b, _, _ = _collect(policy_agent)
    assert [_key(r) for r in a] == [_key(r) for r in b]
    assert len(a) == 2 * 2 * 5 and c.steps == 10 and not c.crashes
    # episode boundaries: t counts 0..4 per episode, the horizon ends each one, seeds as given
    for slot in (0, 1):
        mine = [r for r in a if r.slot == slot]
        assert [r.t for r in mine] == [0, 1, 2, 3, 4] * 2
        assert [r.truncated for r in mine] == [False] * 4 + [True] + [False] * 4 + [True]
        assert [r.episode.seed for r in mine] == [100 + 10 * slot] * 5 + [101 + 10 * slot] * 5
        np.testing.assert_array_equal(mine[0].goal, _goal(slot))
    assert [(s, ep.seed) for s, ep, _f, _m in starts] == [(0, 100), (1, 110), (0, 101), (1, 111)]
    assert all(r.log_prob <= 0 and math.isfinite(r.value) for r in a)
    assert len({r.log_prob for r in a}) > 1


def test_log_probs_and_values_are_those_of_policy_act(policy_agent):
    """Replaying the collected frames through ``STEVE1Policy.act`` (with each episode's own
    sampling stream, as the agent seeds it) gives the recorded actions, log-probs (of the
    normalised guided distribution) and values."""
    starts = []
    with RolloutCollector(policy_agent, 2, _episodes(1, 6), on_start=lambda s, ep, f, m: starts.append(f)) as c:
        records = list(c.run())
    policy = policy_agent.policy
    frames = {s: [starts[s]] + [r.frame for r in records if r.slot == s] for s in (0, 1)}
    goals = torch.from_numpy(np.stack([_goal(0), _goal(1)]))
    state = policy.initial_state(4)
    policy_agent.reset(2)
    for s in (0, 1):
        policy_agent.begin_episode(s, records[s].episode.seed)
    gen = policy_agent._streams
    for t in range(6):
        img = policy_agent._prepare(np.stack([frames[0][t], frames[1][t]]))
        actions, state, info = policy.act(img, goals, torch.full((2,), t == 0), state, cond_scale=3.0, generator=gen)
        for s in (0, 1):
            r = records[2 * t + s]
            assert (r.slot, r.t) == (s, t)
            assert r.action == {"action": int(actions["action"][s])}
            assert r.log_prob == pytest.approx(float(info["sampled_log_prob"][s]), abs=1e-5)
            assert r.value == pytest.approx(float(info["vpred"][s]), abs=1e-5)


def test_crashes_are_restarted_and_recorded(tmp_path):
    """A reset crash and a step crash: both recorded, the slot asks for its next episode (here: the
    same world again), and play goes on."""
    env = {"name": "test_rollout:StepCrashEnv", "marker_dir": str(tmp_path)}
    reset_crash = {"name": "test_eval_runner:ToyEnv", "crash_once": str(tmp_path)}  # seed 101 fails once
    queue = [Episode(env, 7, horizon=4, tag="a"), Episode(reset_crash, 101, horizon=3, tag="b")]
    seen = []

    def next_episode(slot):
        return queue.pop(0) if queue else None

    def on_crash(c):
        seen.append(c)
        queue.insert(0, c.episode)  # replay the same world

    with RolloutCollector(ScriptedAgent(), 1, next_episode, on_crash=on_crash, workers=1) as c:
        records = list(c.run())
    assert [(x.step, x.episode.tag) for x in c.crashes] == [(1, "a"), (None, "b")]
    assert seen == c.crashes and "simulated step crash" in c.crashes[0].message
    assert "simulated env crash" in c.crashes[1].message
    crash_rec = [r for r in records if r.crash]
    assert len(crash_rec) == 1 and crash_rec[0].t == 1 and crash_rec[0].last and crash_rec[0].frame is None
    ok = [r for r in records if not r.crash]
    assert [(r.episode.tag, r.t) for r in ok] == [("a", 0), ("a", 0), ("a", 1), ("a", 2), ("a", 3),
                                                   ("b", 0), ("b", 1), ("b", 2)]
    assert ok[4].truncated and ok[-1].truncated


def test_rewards_goals_and_agents_without_info():
    """reward_fn sees (previous, new) measures; the caller can end an episode; an agent whose act
    reports nothing gets NaN log-probs and values; instruction goals come from agent.goal."""
    wood = lambda prev, new: new["inventory.wood"] - prev["inventory.wood"]  # noqa: E731
    eps = [Episode(TOY, 1, instruction="get wood", horizon=10), Episode(TOY, 2, instruction="walk", horizon=2)]
    with RolloutCollector(ScriptedAgent(), 1, lambda s: eps.pop(0) if eps else None, reward_fn=wood) as c:
        first = c.step()
        assert first[0].reward == 1.0 and first[0].t == 0
        np.testing.assert_array_equal(first[0].goal, [1, 0, 0])
        c.step()
        c.end_episode(0)  # e.g. the task is settled
        rest = list(c.run(max_steps=5))
    assert [(r.episode.seed, r.t, r.reward) for r in rest] == [(2, 0, 0.0), (2, 1, 0.0)]
    assert rest[-1].measures["pos.x"] == 2 and rest[-1].truncated
    assert all(math.isnan(r.log_prob) and math.isnan(r.value) for r in first + rest)
