"""aimc rl's rewards: the suite's success rule (built-in world and Minecraft's programmatic rules on
the fake MineRL env), MineDojo's MineCLIP reward, a user's own reward, env crashes replayed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aimc.actions.minecraft import env_to_policy
from aimc.agent.envs import make_env
from aimc.errors import UserError
from aimc.eval.suite import load_suite, parse_suite
from aimc.rl.rewards import MineCLIPReward, TaskSuccessReward, make_reward


def _joint(**buttons):
    camera = np.array([buttons.pop("pitch", 0.0), 0.0])
    pol = env_to_policy({k: np.array(v) for k, v in buttons.items()} | {"attack": np.array(buttons.get("attack", 0))},
                        camera)
    return {"buttons": int(pol["buttons"]), "camera": int(pol["camera"])}


FAKE = parse_suite({
    "name": "fake-minecraft", "env": {"name": "minerl", "fake": True}, "episodes": 1, "max_steps": 30, "seed": 7,
    "tasks": [
        {"id": "wood", "instructions": ["chop a tree"], "success": {"inventory": {"oak_log|birch_log": 1}}},
        {"id": "explore", "instructions": ["explore"], "success": {"travel": 2}},
    ],
}, "fake.yaml")


@pytest.mark.parametrize("task_id,action,expected_step", [("wood", _joint(attack=1), 10), ("explore", _joint(forward=1), None)])
def test_task_success_reward_on_the_fake_minerl_env(task_id, action, expected_step):
    task = FAKE.task(task_id)
    env = make_env(FAKE.env)
    r = make_reward("task-success", {})(task, "x")
    frame, m = env.reset(7)
    r.reset(frame, m)
    rewards = []
    for _ in range(25):
        frame, m, done = env.step(action)
        rewards.append(r.step(frame, m))
    env.close()
    assert sum(rewards) == 1.0  # paid once, when the rule first holds
    step = rewards.index(1.0) + 1
    if expected_step is not None:
        assert step == expected_step  # 10 attacks give the first log (the evaluator's rule agrees)
    else:
        assert 10 <= step <= 13  # 0.2 blocks a step: 2 blocks after about 11 steps


def test_task_success_reward_on_the_built_in_world():
    suite = load_suite("crafter-core")
    task = suite.task("collect_wood")
    r = TaskSuccessReward(task)
    r.reset(None, {"achievement.collect_wood": 0.0})
    got = [r.step(None, {"achievement.collect_wood": v}) for v in (0.0, 1.0, 1.0, 2.0)]
    assert got == [0.0, 1.0, 0.0, 0.0]
    assert TaskSuccessReward(None).step(None, {"achievement.collect_wood": 5.0}) == 0.0  # unconditioned: nothing asked


class ScriptedClip(torch.nn.Module):
    """MineCLIP's interface; the instruction's probability is a frame's brightness / 255."""

    class cfg:
        resolution = (8, 8)

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def encode_text(self, texts):
        return torch.zeros(len(texts), 2)

    def encode_video(self, clip):  # (1, L, 3, h, w)
        return clip[:, -1].float().mean().reshape(1, 1) / 255.0  # the last frame's brightness

    def forward_reward_head(self, video, text):
        p = float(video[0, 0])
        n = text.shape[0] - 1
        rest = (1 - p) / n
        return torch.log(torch.tensor([[p] + [rest] * n])), None


def test_mineclip_reward_pays_increases_of_the_running_maximum():
    task = FAKE.task("wood")
    r = MineCLIPReward(task, "chop a tree", mineclip=ScriptedClip(), negatives=["a", "b", "c"], window=16)
    frame = lambda p: np.full((8, 8, 3), int(round(p * 255)), np.uint8)  # noqa: E731
    r.reset(frame(0.1), {})
    got = [r.step(frame(p), {}) for p in (0.3, 0.5, 0.4, 0.7, 0.2)]
    # the maximum starts at chance (1 / 4 prompts); increases of it are paid, decreases cost nothing
    np.testing.assert_allclose(got, [0.05, 0.2, 0.0, 0.2, 0.0], atol=6e-3)  # frames hold p in 1/255 steps
    assert r.frames.maxlen == 16
    with pytest.raises(UserError, match="MineCLIP"):
        MineCLIPReward(task, "x", mineclip=None)


def my_reward(task, instruction, bonus=1.0):
    class R:
        def reset(self, frame, measures):
            pass

        def step(self, frame, measures):
            return bonus

    return R()


def test_your_own_reward_by_module_path():
    f = make_reward(f"{__name__}:my_reward", {"bonus": 2.5})
    assert f(None, None).step(None, {}) == 2.5
    with pytest.raises(UserError, match="does not take"):
        make_reward(f"{__name__}:my_reward", {"nope": 1})
    with pytest.raises(UserError, match="unknown reward"):
        make_reward("no-such-reward", {})


def test_minerl_crashes_are_replayed_and_recorded(tmp_path, monkeypatch):
    """aimc rl on the fake MineRL env with a crash injected: the run goes on, the crashes are in
    crashes.jsonl, each crashed episode was played again from its world seed."""
    from aimc.checkpoints.vpt import save_policy
    from aimc.config import load_config
    from aimc.models.vpt import PolicyConfig, STEVE1Policy
    from aimc.rl.config import RLConfig
    from aimc.rl.loop import run_rl

    torch.set_num_threads(1)
    suite = tmp_path / "fake.yaml"
    suite.write_text(json.dumps({
        "name": "fake-minecraft", "env": {"name": "minerl", "fake": True, "fake_options": {"crash_at_step": 4}},
        "episodes": 1, "max_steps": 6, "seed": 7,
        "tasks": [{"id": "wood", "instructions": ["chop a tree"], "success": {"inventory": {"oak_log": 1}}}]}))
    torch.manual_seed(0)
    policy = STEVE1Policy(PolicyConfig.tiny(img_shape=[128, 128, 3], action_heads={"buttons": 8641, "camera": 121},
                                            recurrence_type="lstm", n_recurrence_layers=1))
    save_policy(policy, tmp_path / "p.safetensors")
    np.savez(tmp_path / "goals.npz", wood=np.ones(16, np.float32))
    cfg = load_config(RLConfig, "rl_minecraft", [
        f"init={tmp_path / 'p.safetensors'}", f"agent.goal_table={tmp_path / 'goals.npz'}", f"collect.suite={suite}",
        "agent.device=cpu", "collect.workers=0", "collect.num_envs=2", "collect.episodes=2", "collect.fragment=4",
        "collect.max_steps=0", "collect.restart_crashed=1", "schedule.updates=1", "ppo.minibatches=1",
        "logging.tensorboard=false", "checkpoint.export=[.safetensors]"])
    out = run_rl(cfg, tmp_path / "run", progress=False)
    crashes = [json.loads(line) for line in (tmp_path / "run" / "crashes.jsonl").read_text().splitlines()]
    # the fake env crashes at its 4th step every time: each episode crashed, was replayed once, crashed again
    assert len(crashes) == 4 and sorted(c["seed"] for c in crashes) == [500000, 500000, 500001, 500001]
    assert sorted(c["replayed"] for c in crashes) == [False, False, True, True]
    assert "Connection reset" in crashes[0]["message"]
    assert out["rows"][0]["crashes"] == 4 and out["final"].is_file()
