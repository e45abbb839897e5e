"""The built-in world's Gymnasium adapter."""

from __future__ import annotations

import numpy as np
import pytest

from aimc.envs.crafter import ACHIEVEMENTS, ACTION_INDEX, ACTIONS, CrafterEnv, CrafterEnvConfig
from aimc.errors import UserError


def test_spaces_and_reset_are_seeded():
    env = CrafterEnv()
    assert env.action_space.n == len(ACTIONS) == 17
    assert env.observation_space.shape == (64, 64, 3)
    a, info = env.reset(seed=7)
    b, _ = env.reset(seed=7)
    c, _ = env.reset(seed=8)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert info["inventory"]["health"] == 9 and info["unlocked"] == []
    assert set(info["achievements"]) == set(ACHIEVEMENTS)


def test_same_seed_same_trajectory():
    def play(seed):
        env = CrafterEnv()
        env.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = []
        for _ in range(30):
            obs, r, term, trunc, info = env.step(int(rng.integers(0, 17)))
            out.append((obs.sum(), info["player_pos"]))
        return out

    assert play(3) == play(3)


def test_step_info_reports_unlocked_achievements():
    env = CrafterEnv()
    env.reset(seed=0)
    # find a tree next to a walkable tile and walk there with the demonstrator's planner
    from aimc.envs.demonstrator import Demonstrator

    demo = Demonstrator(env, seed=0)
    demo.reset(goal="collect_wood")
    info = {}
    for _ in range(200):
        _, _, _, _, info = env.step(demo.act(info))
        if info["unlocked"]:
            break
    assert "collect_wood" in info["unlocked"]
    assert info["inventory"]["wood"] == 1
    assert info["achievements"]["collect_wood"] == 1
    _, _, _, _, info = env.step(ACTION_INDEX["noop"])
    assert info["unlocked"] == []


def test_size_and_truncation():
    env = CrafterEnv(CrafterEnvConfig(size=32, max_steps=5))
    obs, _ = env.reset(seed=1)
    assert obs.shape == (32, 32, 3)
    for i in range(5):
        _, _, term, trunc, info = env.step(0)
    assert trunc and not term and info["step"] == 5


def test_bad_input_is_explained():
    env = CrafterEnv()
    with pytest.raises(UserError, match="before reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(UserError, match="0..16"):
        env.step(17)
    with pytest.raises(UserError, match="non-negative"):
        env.reset(seed=-1)
    with pytest.raises(ValueError, match="max_steps"):
        CrafterEnvConfig(max_steps=0)
