"""The MineRL adapter, against a fake env with MineRL 1.0's dict interface."""

from __future__ import annotations

import numpy as np
import pytest

from aimc.actions import minecraft as m
from aimc.actions.image import resize_to_agent
from aimc.envs.fake_minerl import POV_SHAPE, FakeMineRLEnv
from aimc.envs.minerl import EnvCrashError, MineRLConfig, make_minerl_env, policy_action_to_minerl
from aimc.errors import UserError


def test_reset_and_pov_resize():
    fake = FakeMineRLEnv()
    env = make_minerl_env(env_factory=lambda: fake, seed=3)
    obs, info = env.reset()
    assert obs["pov"].shape == POV_SHAPE and obs["pov"].dtype == np.uint8
    assert obs["img"].shape == (128, 128, 3) and obs["img"].dtype == np.uint8
    np.testing.assert_array_equal(obs["img"], resize_to_agent(obs["pov"]))
    assert env.observation_space["img"].contains(obs["img"]) and env.observation_space["pov"].contains(obs["pov"])
    assert obs["inventory"]["dirt"] == 0 and info["crashes"] == 0
    obs2, *_ = env.step({"buttons": 0, "camera": 110})  # combo 0 has camera "none": no move
    np.testing.assert_array_equal(obs2["pov"], obs["pov"])
    obs2, *_ = env.step({"buttons": 1, "camera": 110})  # camera on, pitch +10 deg -> the texture scrolls
    assert not np.array_equal(obs2["pov"], obs["pov"])
    np.testing.assert_array_equal(obs2["img"], resize_to_agent(obs2["pov"]))
    np.testing.assert_array_equal(env.render(), obs2["pov"])


def test_action_dict_round_trip():
    """policy action -> MineRL dict the env receives -> policy action again (canonical pairs)."""
    fake = FakeMineRLEnv()
    env = make_minerl_env(env_factory=lambda: fake)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    jb = np.concatenate([[0, m.INVENTORY_JOINT, 289], rng.integers(0, m.N_JOINT_BUTTONS, 40)])
    jc = np.concatenate([[60, 60, 0], rng.integers(0, m.N_JOINT_CAMERA, 40)])
    jb, jc = m.factored_to_joint(*m.joint_to_factored(jb, jc))  # canonical pairs
    for b, c in zip(jb, jc):
        _, _, _, _, info = env.step({"buttons": np.array([b]), "camera": np.int64(c)})
        sent = info["env_action"]
        assert {k: v for k, v in sent.items() if k != "camera"} == {k: v for k, v in fake.actions[-1].items() if k != "camera"}
        np.testing.assert_array_equal(sent["camera"], fake.actions[-1]["camera"])
    assert len(fake.actions) == len(jb) and env.num_crashes == 0
    for action in fake.actions:
        assert set(action) == set(m.ENV_BUTTONS) | {"camera"}
        assert action["camera"].dtype == np.float32 and action["camera"].shape == (2,)
        assert all(action[k] == 0 for k in m.DROPPED_ENV_BUTTONS)
    env_buttons = {k: np.array([a[k] for a in fake.actions]) for k in m.ENV_BUTTONS}
    camera = np.stack([a["camera"] for a in fake.actions])
    back = m.env_to_policy(env_buttons, camera)
    np.testing.assert_array_equal(back["buttons"], jb)
    np.testing.assert_array_equal(back["camera"], jc)


def test_env_action_passthrough_and_bad_actions():
    fake = FakeMineRLEnv()
    env = make_minerl_env(env_factory=lambda: fake)
    env.reset()
    env.step({"forward": 1, "camera": np.array([0.0, 5.0], np.float32)})
    assert fake.actions[-1]["forward"] == 1
    for bad in ({"buttons": 8641, "camera": 60}, {"buttons": 1.5, "camera": 60}, {"buttons": [1, 2], "camera": 60}):
        with pytest.raises(UserError):
            env.step(bad)
    assert policy_action_to_minerl({"buttons": 8640, "camera": 60})["inventory"] == 1


def test_crash_restarts_the_env_and_is_recorded():
    made: list[FakeMineRLEnv] = []

    def factory() -> FakeMineRLEnv:
        made.append(FakeMineRLEnv(crash_at_step=3 if len(made) == 0 else None))
        return made[-1]

    env = make_minerl_env(env_factory=factory, seed=5)
    env.reset()
    results = [env.step({"buttons": 288, "camera": 60}) for _ in range(5)]
    truncated = [r[3] for r in results]
    assert truncated == [False, False, True, False, False]
    crash = results[2][4]["env_crash"]
    assert crash["where"] == "step" and crash["step"] == 2 and "Connection reset" in crash["error"]
    assert env.num_crashes == 1 and results[-1][4]["crashes"] == 1
    assert len(made) == 2 and made[0].closed and not made[1].closed
    assert made[1]._seed == 5  # the fresh env gets the same world seed
    assert results[2][0]["img"].shape == (128, 128, 3)


def test_minerl_error_info_counts_as_a_crash():
    made: list[FakeMineRLEnv] = []

    def factory() -> FakeMineRLEnv:
        made.append(FakeMineRLEnv(crash_at_step=1 if len(made) == 0 else None, crash_mode="error_info"))
        return made[-1]

    env = make_minerl_env(env_factory=factory)
    env.reset()
    _, reward, terminated, truncated, info = env.step({"buttons": 0, "camera": 60})
    assert (reward, terminated, truncated) == (0.0, False, True)
    assert "Connection timed out" in info["env_crash"]["error"] and len(made) == 2


def test_repeated_crashes_are_fatal_after_max_restarts():
    env = make_minerl_env(MineRLConfig(max_restarts=2), env_factory=lambda: FakeMineRLEnv(crash_on_reset=True))
    with pytest.raises(EnvCrashError, match="3 times in a row"):
        env.reset()
    assert env.num_crashes == 3 and all(c["where"] == "reset" for c in env.crashes)


def test_step_before_reset_and_missing_minerl(monkeypatch):
    env = make_minerl_env(env_factory=FakeMineRLEnv)
    with pytest.raises(UserError, match="reset"):
        env.step({"buttons": 0, "camera": 60})
    import builtins

    real_import = builtins.__import__

    def no_minerl(name, *args, **kwargs):
        if name == "minerl" or name.startswith("minerl."):
            raise ImportError("No module named 'minerl'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minerl)
    with pytest.raises(UserError, match=r"pip install 'aimc\[minerl\]'"):
        make_minerl_env()


def test_config_kwargs_match_steve1():
    kw = MineRLConfig().env_kwargs()
    assert kw == {
        "resolution": [640, 360],
        "fov_range": [70.0, 70.0],
        "gamma_range": [2.0, 2.0],
        "guiscale_range": [1.0, 1.0],
        "cursor_size_range": [16.0, 16.0],
        "frameskip": 1,
    }
    with pytest.raises(UserError):
        MineRLConfig(resolution=(640,))


def test_fake_shortcut_overrides_and_location_stats():
    env = make_minerl_env(fake=True, max_restarts=7)
    assert env.config.max_restarts == 7
    obs, info = env.reset(seed=1)
    assert obs["location_stats"] == {} and info["location_stats"] == {}
    obs, _, _, _, info = env.step({"buttons": 288, "camera": 60})  # forward
    assert obs["location_stats"]["zpos"] > 0 and info["location_stats"] == obs["location_stats"]
    assert isinstance(obs["location_stats"]["zpos"], float)
    with pytest.raises(UserError, match="unknown MineRL env settings"):
        make_minerl_env(fake=True, fly=True)
