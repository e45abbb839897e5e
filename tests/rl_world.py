"""A tiny world for the aimc rl tests: the rewarded action depends on the goal.

The frame never shows which action pays (it is the same grey frame in every world); only the
goal does. Task ``left`` pays action 1, task ``right`` action 2 (``target`` in the task's env).
An episode ends after 3 steps or when the paying action is taken (achievement ``hit``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEADS = {"action": 4}


class GoalWorld:
    action_heads = HEADS
    known_measures = frozenset({"achievement.hit"})

    def __init__(self, target: int = 1, size: int = 64, steps: int = 3) -> None:
        self.target, self.size, self.steps = int(target), int(size), int(steps)
        self.t = 0
        self.hits = 0

    def _frame(self) -> np.ndarray:
        return np.full((self.size, self.size, 3), 100 + 10 * self.t, np.uint8)

    def reset(self, seed: int):
        self.t, self.hits = 0, 0
        return self._frame(), {"achievement.hit": 0.0}

    def step(self, action):
        self.t += 1
        if int(action["action"]) == self.target:
            self.hits += 1
        return self._frame(), {"achievement.hit": float(self.hits)}, self.t >= self.steps

    def close(self) -> None:
        pass


SUITE = """
name: goal-world
env: {name: rl-goal-world}
episodes: 4
max_steps: 3
seed: 10
tasks:
  - id: left
    instructions: [go left]
    success: {achievement: hit}
    env: {target: 1}
  - id: right
    instructions: [go right]
    success: {achievement: hit}
    env: {target: 2}
"""


def setup_world(tmp: Path, monkeypatch, seed: int = 0) -> dict[str, str]:
    """Register the env, write the suite, a tiny policy and a goal table; returns their paths."""
    import torch

    from aimc.agent import envs
    from aimc.checkpoints.vpt import save_policy
    from aimc.models.vpt import PolicyConfig, STEVE1Policy

    monkeypatch.setitem(envs.ENVS, "rl-goal-world", GoalWorld)
    tmp.mkdir(parents=True, exist_ok=True)
    suite = tmp / "goal-world.yaml"
    suite.write_text(SUITE, encoding="utf-8")
    torch.manual_seed(seed)
    policy = STEVE1Policy(PolicyConfig.tiny(action_heads=dict(HEADS), recurrence_type="lstm", n_recurrence_layers=1,
                                            goal_conditioning="film"))
    # FiLM starts at zero: give the goal a way in from the start, as a trained policy would have
    torch.nn.init.normal_(policy.net.goal_film_out.weight, std=0.3)
    weights = tmp / "init" / "policy.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_policy(policy, weights)
    table = tmp / "goals.npz"
    g = np.zeros((2, 16), np.float32)
    g[0, :8], g[1, 8:] = 1.0, 1.0
    np.savez(table, left=g[0], right=g[1])
    return {"suite": str(suite), "init": str(weights), "table": str(table)}


def overrides(paths: dict[str, str], *extra: str) -> list[str]:
    return [f"init={paths['init']}", f"agent.goal_table={paths['table']}", f"collect.suite={paths['suite']}",
            "agent.device=cpu", "collect.workers=0", "collect.num_envs=4", "collect.episodes=16", "collect.fragment=4",
            "collect.seed=0", "logging.tensorboard=false", "checkpoint.export=[.safetensors]", "model.freeze=[cnn]",
            "runtime.threads=1", "ppo.value_warmup=1", *extra]


def preset_file(tmp: Path) -> str:
    """A preset of the RLConfig defaults (the shipped presets name crafter-core's tasks)."""
    p = tmp / "rl_test.yaml"
    p.write_text("name: rl_test\n", encoding="utf-8")
    return str(p)
