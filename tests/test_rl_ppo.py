"""aimc rl on a tiny world where the paying action depends on the goal: learning, the KL leash,
log-probs replayed from stored fragments, resume after a kill."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aimc.config import load_config
from aimc.rl.config import RLConfig
from aimc.rl.loop import run_rl

import rl_world


@pytest.fixture
def world(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    return rl_world.setup_world(tmp_path, monkeypatch)


def cfg_of(paths, *extra):
    return load_config(RLConfig, None, rl_world.overrides(paths, *extra))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_ppo_learns_the_action_each_goal_asks_for(world, tmp_path):
    cfg = cfg_of(world, "schedule.updates=12", "ppo.lr=3e-3", "ppo.kl_coef=0", "ppo.epochs=4", "ppo.minibatches=2",
                 "ppo.target_kl=0")
    out = run_rl(cfg, tmp_path / "run", progress=False)
    first, last = out["rows"][0]["success"], out["rows"][-1]["success"]
    # each goal's own action: at first near chance (3 tries of 1 in 4), at the end (nearly) always on the first step
    assert out["rows"][-1]["mean_success"] >= 0.95, out["rows"][-1]
    ep_len = [e for e in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()][-16:]
    import json

    steps = [json.loads(line)["steps"] for line in ep_len]
    assert np.mean(steps) < 1.3, steps  # the right action on the first step: the goal is read, not guessed
    assert (tmp_path / "run" / "final.safetensors").is_file() and (tmp_path / "run" / "best.safetensors").is_file()
    assert "| update |" in (tmp_path / "run" / "README.md").read_text()
    assert (tmp_path / "run" / "curve.svg").read_text().startswith("<svg")
    assert first  # both tasks played in update 0
    assert set(first) == {"left", "right"}


def test_a_huge_kl_coefficient_keeps_the_policy_at_the_reference(world, tmp_path):
    extra = ("schedule.updates=4", "ppo.lr=1e-3", "ppo.target_kl=0", "ppo.value_warmup=0")
    free = run_rl(cfg_of(world, *extra, "ppo.kl_coef=0"), tmp_path / "free", progress=False)
    leashed = run_rl(cfg_of(world, *extra, "ppo.kl_coef=1000"), tmp_path / "leashed", progress=False)
    # Adam's first steps move every weight by about lr whatever the loss; from the second update on
    # the leash holds the policy at the reference
    kl_free = max(r["stats"]["kl_ref"] for r in free["rows"][1:])
    kl_leashed = max(r["stats"]["kl_ref"] for r in leashed["rows"][1:])
    assert kl_free > 0.05, kl_free  # without the leash the policy moves away
    assert kl_leashed < 0.005, kl_leashed


def test_replayed_fragments_give_the_rollouts_log_probs(world):
    """The update replays each fragment from its stored state, resetting at every episode start
    inside it: its log-probs equal the ones the actions were sampled with."""
    from aimc.checkpoints.vpt import load_policy
    from aimc.eval.suite import load_suite
    from aimc.rl.loop import _table_agent, load_goal_table, make_agent, plan_update
    from aimc.rl.ppo import minibatch_tensors
    from aimc.rl.rewards import make_reward
    from aimc.rl.rollouts import collect, gae, gather_states, reset_at_every_first

    cfg = cfg_of(world, "collect.fragment=5", "collect.episodes=10", "collect.num_envs=3")
    from pathlib import Path

    policy = load_policy(cfg.init)
    agent = _table_agent(make_agent(cfg, policy, torch.device("cpu"), Path(cfg.init)), load_goal_table(cfg.agent.goal_table, 16))
    planned = plan_update(cfg, load_suite(cfg.collect.suite), 0, {"left": 0, "right": 1})
    agent.generator.manual_seed(0)
    ro = collect(agent, planned, num_envs=3, fragment=5, reward_factory=make_reward("task-success", {}))
    agent.generator.manual_seed(0)
    assert len(ro.episodes) == 10
    S, K = ro.valid.shape
    # episode starts inside fragments (not only at their first step) are what this test is about
    assert any(ro.first[s, k] for s in range(S) for k in range(K) if k % 5 != 0)
    ro.advantages, ro.returns = gae(ro.reward, ro.value, ro.terminal, ro.valid, 0.99, 0.95)
    frags = ro.fragments
    c = minibatch_tensors(ro, frags, torch.device("cpu"))
    state = gather_states(ro.states, frags, torch.device("cpu"))
    with torch.no_grad(), reset_at_every_first(policy):
        logits, vpred, _ = policy(c["img"], c["goal"], c["first"], state)
    logp = policy.log_prob(logits, c["actions"])
    valid = c["valid"]
    err = (logp - c["old_log_prob"]).abs()[valid].max()
    assert float(err) < 1e-5, float(err)
    # without the reset at every episode start the replay is wrong: the test can fail
    with torch.no_grad():
        logits2, _, _ = policy(c["img"], c["goal"], c["first"], state)
    assert float((policy.log_prob(logits2, c["actions"]) - c["old_log_prob"]).abs()[valid].max()) > 1e-4
    # with a frozen CNN the update replays from the CNN's features computed once: the same log-probs
    from aimc.rl.rollouts import cnn_features, policy_forward

    ro.features = cnn_features(policy, ro, torch.device("cpu"))
    kept = collect(agent, planned, num_envs=3, fragment=5, reward_factory=make_reward("task-success", {}),
                   keep_features=True)  # the same episodes again (same sampling seed): acting's own CNN output
    assert kept.features is not None and kept.features.shape == ro.features.shape
    np.testing.assert_allclose(kept.features[kept.valid], ro.features[ro.valid], atol=1e-5)
    c = minibatch_tensors(ro, frags, torch.device("cpu"))
    assert "feat" in c and "img" not in c
    with torch.no_grad():
        logits3, _, _ = policy_forward(policy, policy, c, state)
    assert float((policy.log_prob(logits3, c["actions"]) - c["old_log_prob"]).abs()[valid].max()) < 1e-5


def test_gae_on_a_known_stream():
    from aimc.rl.rollouts import gae

    reward = np.array([[0, 0, 1, 0, 1]], np.float32)
    value = np.array([[0.5, 0.5, 0.5, 0.2, 0.2]], np.float32)
    terminal = np.array([[False, False, True, False, True]])
    valid = np.ones((1, 5), bool)
    adv, ret = gae(reward, value, terminal, valid, gamma=0.9, lam=1.0)
    # lam = 1: returns are the discounted rewards to the episode's end
    np.testing.assert_allclose(ret[0], [0.81, 0.9, 1.0, 0.9, 1.0], rtol=1e-6)
    np.testing.assert_allclose(adv[0], ret[0] - value[0], rtol=1e-6)


class Kill(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_weights(world, tmp_path):
    extra = ("schedule.updates=4", "ppo.lr=3e-3", "ppo.kl_coef=0.1")
    whole = run_rl(cfg_of(world, *extra), tmp_path / "whole", progress=False)

    def kill(u, row):
        if u == 1:
            raise Kill()

    with pytest.raises(Kill):
        run_rl(cfg_of(world, *extra), tmp_path / "killed", progress=False, on_update=kill)
    resumed = run_rl(cfg_of(world, *extra), tmp_path / "killed", progress=False)
    a, b = _weights(whole["final"]), _weights(resumed["final"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["update"] for r in resumed["rows"]] == [0, 1, 2, 3]
    assert [r["success"] for r in resumed["rows"]] == [r["success"] for r in whole["rows"]]


def test_a_continued_run_must_keep_its_settings(world, tmp_path):
    from aimc.errors import UserError

    run_rl(cfg_of(world, "schedule.updates=1"), tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="ppo.lr"):
        run_rl(cfg_of(world, "schedule.updates=2", "ppo.lr=1e-2"), tmp_path / "run", progress=False)


def test_lora_with_the_adapters_off_as_reference(world, tmp_path):
    """With LoRA the reference is the same model with its adapters off: no second copy; the
    adapters and the value head learn, the exported weights are plain (merged)."""
    from aimc.checkpoints.vpt import load_policy

    cfg = cfg_of(world, "schedule.updates=3", "ppo.lr=3e-3", "model.lora.rank=4", "model.lora.targets=[pi_head.*]",
                 "ppo.ref=adapters_off", "ppo.value_warmup=0")
    out = run_rl(cfg, tmp_path / "run", progress=False)
    rows = out["rows"]
    assert 0 < rows[0]["stats"]["kl_ref"] < rows[-1]["stats"]["kl_ref"]  # the adapters move the policy away from it
    final = _weights(out["final"])
    assert not any("lora" in k for k in final)
    start = _weights(cfg.init)
    assert not torch.equal(final["pi_head.action.linear_layer.weight"], start["pi_head.action.linear_layer.weight"])
    assert not torch.equal(final["value_head.linear.weight"], start["value_head.linear.weight"])
    assert torch.equal(final["net.lastlayer.layer.weight"], start["net.lastlayer.layer.weight"])  # untouched
    load_policy(out["final"])
    # the reference really is the start: adapters off, a changed adapter changes nothing
    from aimc.rl.loop import adapters_off
    from aimc.train.lora import apply_lora

    policy = load_policy(cfg.init)
    x = (torch.zeros(2, 3, 64, 64, 3, dtype=torch.uint8), torch.ones(2, 3, 16), torch.ones(2, 3, dtype=torch.bool))
    with torch.no_grad():
        before = policy(*x, policy.initial_state(2))[0]["action"]
        apply_lora(policy, ["pi_head.*"], 4, 16.0)
        for n, p in policy.named_parameters():
            if "lora_" in n:
                p.normal_()
        moved = policy(*x, policy.initial_state(2))[0]["action"]
        with adapters_off(policy):
            off = policy(*x, policy.initial_state(2))[0]["action"]
    assert not torch.allclose(moved, before) and torch.equal(off, before)


def _store_of_action(root, action: int, n: int = 40, episodes: int = 3):
    """Demonstrations that always take ``action`` (the tiny world never pays it)."""
    from aimc.data.split import make_split
    from aimc.data.store import EpisodeStore

    store = EpisodeStore(root)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        anns = [{"start": 5, "end": 20, "text": "go left", "lang": "en", "event": "hit"}]
        store.write_episode(f"demo{e}", np.full((n, 64, 64, 3), 100, np.uint8), {"action": np.full(n, action)},
                            {"fps": 10}, annotations=anns, embeddings=rng.standard_normal((n, 16)).astype(np.float32),
                            embed_valid=np.ones(n, bool))
    make_split(store, val_frames=1, seed=0)
    return root


def test_ppo_plus_bc_pulls_towards_the_stores_actions(world, tmp_path):
    """PPO + BC: a BC term on a store of action 3 (never paid) raises its probability, well above
    where PPO alone leaves it."""
    from aimc.checkpoints.vpt import load_policy

    store = _store_of_action(tmp_path / "store", 3)
    extra = ("schedule.updates=3", "ppo.lr=3e-3", "ppo.kl_coef=0", "ppo.value_warmup=0", "ppo.target_kl=0",
             "collect.fragment=4")
    plain = run_rl(cfg_of(world, *extra), tmp_path / "plain", progress=False)
    bc = run_rl(cfg_of(world, *extra, f"bc.stores=[{store}]", "bc.coef=5", "bc.batch_size=4"), tmp_path / "bc",
                progress=False)
    assert all("bc_loss" in r["stats"] for r in bc["rows"]) and "bc_loss" not in plain["rows"][0]["stats"]
    assert bc["rows"][-1]["stats"]["bc_loss"] < bc["rows"][0]["stats"]["bc_loss"]

    def p3(weights):
        policy = load_policy(weights)
        x = (torch.full((2, 1, 64, 64, 3), 100, dtype=torch.uint8),
             torch.from_numpy(np.load(world["table"])["left"])[None, None].repeat(2, 1, 1),
             torch.ones(2, 1, dtype=torch.bool))
        with torch.no_grad():
            return float(policy(*x, policy.initial_state(2))[0]["action"][0, 0, 3].exp())

    start, after_plain, after_bc = p3(world["init"]), p3(plain["final"]), p3(bc["final"])
    assert after_bc > start and after_bc > after_plain + 0.05, (start, after_plain, after_bc)
