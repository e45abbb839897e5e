"""The agent: goals from text / video, guided batched acting, prompt schedules, video overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aimc.agent.agent import Agent, PromptSchedule, RandomAgent
from aimc.agent.video import VideoWriter, overlay, read_video
from aimc.errors import UserError

TINY_EMBED = 16


def tiny_mineclip_config():
    from aimc.models.mineclip import MineCLIPConfig

    return MineCLIPConfig(resolution=(32, 48), patch_size=16, vision_width=32, vision_layers=1, vision_heads=2,
                          base_image_resolution=32, embed_dim=TINY_EMBED, text_width=16, text_layers=1, text_heads=2,
                          pool_depth=1, pool_heads=2, pool_dim_head=8, pool_ff_mult=2, video_seq_len=16)


def make_bundle(root: Path, heads: dict[str, int] | None = None, img: int = 64) -> Path:
    """A tiny random agent: run/checkpoints/last.safetensors (+ .yaml), run/mineclip.safetensors, run/prior.safetensors."""
    from aimc.checkpoints.mineclip import save_mineclip
    from aimc.checkpoints.prior import save_prior
    from aimc.checkpoints.vpt import save_policy
    from aimc.models.mineclip import MineCLIP
    from aimc.models.prior import PriorConfig, PriorCVAE
    from aimc.models.vpt import PolicyConfig, STEVE1Policy

    torch.manual_seed(0)
    run = root / "run"
    cfg = PolicyConfig.tiny(action_heads=heads or {"action": 17}, mineclip_embed_dim=TINY_EMBED, img_shape=[img, img, 3])
    weights = save_policy(STEVE1Policy(cfg), run / "checkpoints" / "last.safetensors")
    save_mineclip(MineCLIP(tiny_mineclip_config()), run / "mineclip.safetensors")
    save_prior(PriorCVAE(PriorConfig(input_dim=TINY_EMBED, hidden_dim=32, latent_dim=8)), run / "prior.safetensors")
    return Path(weights)


@pytest.fixture(scope="module")
def agent():
    from aimc.models.mineclip import MineCLIP
    from aimc.models.prior import PriorConfig, PriorCVAE
    from aimc.models.vpt import PolicyConfig, STEVE1Policy

    torch.manual_seed(0)
    policy = STEVE1Policy(PolicyConfig.tiny(action_heads={"action": 17}, mineclip_embed_dim=TINY_EMBED))
    prior = PriorCVAE(PriorConfig(input_dim=TINY_EMBED, hidden_dim=32, latent_dim=8))
    return Agent(policy, MineCLIP(tiny_mineclip_config()), prior, cond_scale=6.0, device="cpu")


def test_text_goals_seeded_and_deterministic(agent):
    a = agent.text_goals(["chop a tree", "chop a tree", "砍树"], seeds=[1, 2, 1])
    b = agent.text_goals(["chop a tree", "chop a tree", "砍树"], seeds=[1, 2, 1])
    assert a.shape == (3, TINY_EMBED) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # same seed, same prior sample
    assert not np.allclose(a[0], a[1])  # another seed, another sample
    assert not np.allclose(a[0], a[2])  # another text
    agent.deterministic_prior = True
    try:
        c = agent.text_goals(["chop a tree", "chop a tree"], seeds=[1, 2])
        np.testing.assert_array_equal(c[0], c[1])
    finally:
        agent.deterministic_prior = False
    np.testing.assert_array_equal(agent.goal(None, 0), np.zeros(TINY_EMBED, np.float32))


def test_video_goal(agent):
    frames = np.random.default_rng(0).integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    g = agent.video_goal(frames)
    assert g.shape == (TINY_EMBED,) and np.isfinite(g).all()
    np.testing.assert_allclose(g, agent.video_goal(frames[-16:]), rtol=1e-5, atol=1e-6)  # last 16 frames


def test_guided_act_is_one_batched_forward(agent):
    """Guidance = one pass: the CNN on B frames once, the trunk on the 2B [cond ; uncond] rows once."""
    net = agent.policy.net
    calls = []
    orig_cnn, orig_rec = net.img_process.forward, net.recurrent_layer.forward

    def cnn(img):
        calls.append(("cnn", img.shape[0]))
        return orig_cnn(img)

    def rec(x, first, state):
        calls.append(("trunk", x.shape[0]))
        return orig_rec(x, first, state)

    net.img_process.forward, net.recurrent_layer.forward = cnn, rec
    try:
        agent.reset(3)
        frames = np.random.default_rng(1).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)  # resized to 64
        goals = agent.text_goals(["a", "b", "c"], [0, 1, 2])
        acts = agent.act(frames, goals, np.ones(3, bool))
        acts2 = agent.act(frames, goals, np.zeros(3, bool))
    finally:
        del net.img_process.forward, net.recurrent_layer.forward
    assert calls == [("cnn", 3), ("trunk", 6)] * 2
    for a in (acts, acts2):
        assert set(a) == {"action"} and a["action"].shape == (3,) and a["action"].dtype == np.int64
        assert ((0 <= a["action"]) & (a["action"] < 17)).all()
    agent.cond_scale = 0.0
    try:
        agent.reset(2)
        assert agent.state[0][0].shape[0] == 2  # unguided: one row per env
    finally:
        agent.cond_scale = 6.0


@torch.no_grad()
def two_pass_guided_act(policy, img, goal, first, state, scale, stochastic=True, generator=None):
    """Guidance the long way: the conditional rows and the unconditional rows each run through the
    whole network (CNN included) with their own half of the 2B-row state, then
    ``(1 + s) * cond - s * uncond`` (log_softmax'd when ``renormalize_guided_logits``).
    -> (actions, new state [cond ; uncond], scores)."""
    from aimc.models.vpt import select_state

    b = img.shape[0]
    first = first.bool()[:, None]
    lc, _, sc = policy(img[:, None], goal[:, None], first, select_state(state, slice(0, b)))
    lu, _, su = policy(img[:, None], torch.zeros_like(goal)[:, None], first, select_state(state, slice(b, 2 * b)))
    scores = {k: (1 + scale) * lc[k][:, 0] - scale * lu[k][:, 0] for k in lc}
    if policy.cfg.renormalize_guided_logits:
        scores = {k: torch.log_softmax(v, dim=-1) for k, v in scores.items()}
    actions = policy.sample(scores, generator) if stochastic else policy.argmax(scores)
    state = [tuple(torch.cat([c, u]) for c, u in zip(lc_, lu_)) for lc_, lu_ in zip(sc, su)]
    return actions, state, scores


def _act_both_ways(policy, seed: int, firsts: list[tuple[bool, bool]], scale: float):
    """Step ``policy.act`` and the two-pass reference side by side on the same random frames and goals:
    [(actions, reference actions, reference scores, act info)] per step, and both final states."""
    guided_act = two_pass_guided_act

    rng = np.random.default_rng(seed)
    s1, s2 = policy.initial_state(4), policy.initial_state(4)
    steps = []
    for f in firsts:
        img = torch.from_numpy(rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8))
        goal = torch.from_numpy(rng.standard_normal((2, TINY_EMBED)).astype(np.float32))
        first = torch.tensor(f)
        a1, s1, info = policy.act(img, goal, first, s1, cond_scale=scale, stochastic=False)
        a2, s2, scores = guided_act(policy, img, goal, first, s2, scale, stochastic=False)
        steps.append((a1, a2, scores, info))
    return steps, s1, s2


def test_guided_act_matches_policy_act(agent):
    steps, s1, s2 = _act_both_ways(agent.policy, 3, [(t == 0, t == 2) for t in range(4)], 4.0)
    for a1, a2, scores, info in steps:
        torch.testing.assert_close(scores["action"], info["logits"]["action"], rtol=1e-5, atol=1e-5)
        assert torch.equal(a1["action"], a2["action"])
    for l1, l2 in zip(s1, s2):
        for x, y in zip(l1, l2):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_first_resets_memory_per_slot(agent):
    """A slot flagged first acts like a fresh agent, whatever the other slot did before."""
    agent.stochastic = False
    try:
        rng = np.random.default_rng(2)
        warm = rng.integers(0, 255, (5, 2, 64, 64, 3), dtype=np.uint8)
        goals = agent.text_goals(["x", "y"], [0, 1])
        probe = rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
        agent.reset(2)
        for t in range(5):
            agent.act(warm[t], goals, np.array([t == 0, t == 0]))
        logits_after = _logits(agent, probe, goals, np.array([True, False]))
        agent.reset(2)
        logits_fresh = _logits(agent, probe, goals, np.array([True, True]))
        torch.testing.assert_close(logits_after[0], logits_fresh[0])
        assert not torch.allclose(logits_after[1], logits_fresh[1])
    finally:
        agent.stochastic = True


def _logits(agent, frames, goals, first):
    img = agent._prepare(frames)
    _, agent.state, info = agent.policy.act(img, torch.as_tensor(goals), torch.as_tensor(first), agent.state,
                                            cond_scale=agent.cond_scale, stochastic=False)
    return info["logits"]["action"]


def test_prompt_schedule_and_errors():
    s = PromptSchedule(["a", " b ", ""], 3)
    assert [s.prompt_at(i) for i in range(8)] == ["a", "a", "a", "b", "b", "b", "a", "a"]
    with pytest.raises(UserError):
        PromptSchedule([""], 3)
    with pytest.raises(UserError):
        PromptSchedule(["a"], 0)
    r = RandomAgent({"buttons": 8641, "camera": 121}, seed=0)
    a = r.act(np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 1)), np.ones(4, bool))
    assert a["buttons"].shape == (4,) and a["camera"].max() < 121


def test_overlay_and_video_roundtrip(tmp_path):
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:, :32] = 200
    img = overlay(frame, "collect wood", 7, scale=3)
    assert img.shape[1] == 192 and img.shape[0] % 2 == 0 and img.shape[0] > 192
    bar = img.shape[0] - 192
    assert img[:bar].max() > 100  # the caption text is drawn in the bar
    np.testing.assert_array_equal(img[bar:, :96], 200)  # the frame itself is untouched, scaled
    with VideoWriter(tmp_path / "v.mp4", fps=10, scale=3) as v:
        for t in range(6):
            v.add(frame, "种一棵树苗 plant a sapling", t)  # Chinese renders (boxes without a CJK font), never crashes
    out = read_video(tmp_path / "v.mp4")
    assert out.shape == (6, img.shape[0], 192, 3)
    assert not list(tmp_path.glob(".*.tmp"))


def test_overlay_without_any_truetype_font(monkeypatch):
    import aimc.agent.video as video

    video.find_font_path.cache_clear()
    video._font.cache_clear()
    monkeypatch.setattr(video, "find_font_path", lambda cjk_only=False: None)
    try:
        img = video.overlay(np.zeros((32, 32, 3), np.uint8), "挖石头 mine stone", 1, scale=4)
        assert img[:20].max() > 0
    finally:
        video._font.cache_clear()


def test_guided_act_matches_policy_act_with_film_conditioning():
    from aimc.models.vpt import PolicyConfig, STEVE1Policy

    torch.manual_seed(0)
    policy = STEVE1Policy(PolicyConfig.tiny(action_heads={"action": 17}, mineclip_embed_dim=TINY_EMBED, goal_conditioning="film"))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    steps, _, _ = _act_both_ways(policy, 4, [(t == 0, t == 0) for t in range(3)], 2.0)
    for _, _, scores, info in steps:
        torch.testing.assert_close(scores["action"], info["logits"]["action"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b,renormalize", [(1, False), (3, False), (3, True)])
def test_one_guidance_path_equals_two_pass_guidance(b, renormalize):
    """``STEVE1Policy.act`` (one CNN pass, one trunk pass over [cond ; uncond]) gives what running the
    conditional and the unconditional rows separately through the whole network gave, sampling included."""
    from aimc.models.vpt import PolicyConfig, STEVE1Policy, guided_scores

    torch.manual_seed(1)
    policy = STEVE1Policy(PolicyConfig.tiny(action_heads={"buttons": 9, "camera": 11}, mineclip_embed_dim=TINY_EMBED,
                                            renormalize_guided_logits=renormalize))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rng = np.random.default_rng(5)
    s1, s2 = policy.initial_state(2 * b), policy.initial_state(2 * b)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for step in range(5):
        img = torch.from_numpy(rng.integers(0, 255, (b, 64, 64, 3), dtype=np.uint8))
        goal = torch.from_numpy(rng.standard_normal((b, TINY_EMBED)).astype(np.float32))
        first = torch.from_numpy(rng.random(b) < 0.3) if step else torch.ones(b, dtype=torch.bool)
        a1, s1, info = policy.act(img, goal, first, s1, cond_scale=3.0, stochastic=True, generator=g1)
        a2, s2, scores = two_pass_guided_act(policy, img, goal, first, s2, 3.0, stochastic=True, generator=g2)
        tol = 1e-5 * (1 + 2 * 3.0)  # guidance amplifies float rounding (a single frame's CNN rounds differently)
        for k in scores:
            torch.testing.assert_close(info["logits"][k], scores[k], rtol=tol, atol=tol)
            assert torch.equal(a1[k], a2[k]), f"step {step} {k}"
        normalised = {k: torch.log_softmax(v, -1) for k, v in scores.items()}
        torch.testing.assert_close(info["sampled_log_prob"], policy.log_prob(normalised, a2), rtol=tol, atol=tol)
        torch.testing.assert_close(info["log_prob"], policy.log_prob(scores, a2), rtol=tol, atol=tol)
    for l1, l2 in zip(s1, s2):
        for x, y in zip(l1, l2):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    # the pure function itself
    lc, lu = {"a": torch.log_softmax(torch.randn(2, 4), -1)}, {"a": torch.log_softmax(torch.randn(2, 4), -1)}
    torch.testing.assert_close(guided_scores(lc, lu, 2.0)["a"], 3 * lc["a"] - 2 * lu["a"])
    torch.testing.assert_close(guided_scores(lc, lu, 0.0)["a"], lc["a"])
    assert torch.allclose(guided_scores(lc, lu, 2.0, renormalize=True)["a"].exp().sum(-1), torch.ones(2))


def test_agent_act_returns_what_the_policy_computed(agent):
    """``act(..., return_info=True)``: the sampled actions' log-probs under the guided, normalised
    distribution, the value head's estimate and the goals; the actions are those of a plain call."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    goals = agent.text_goals(["a", "b"], [0, 1])
    agent.generator.manual_seed(11)
    agent.reset(2)
    plain = agent.act(frames, goals, np.ones(2, bool))
    agent.generator.manual_seed(11)
    agent.reset(2)
    actions, info = agent.act(frames, goals, np.ones(2, bool), return_info=True)
    np.testing.assert_array_equal(actions["action"], plain["action"])
    assert set(info) == {"log_prob", "value", "goal"}
    np.testing.assert_array_equal(info["goal"], goals)
    # the same step straight through the policy
    state = agent.policy.initial_state(4)
    _, _, ref = agent.policy.act(agent._prepare(frames), torch.as_tensor(goals), torch.ones(2, dtype=torch.bool), state,
                                 cond_scale=agent.cond_scale, stochastic=False)
    lp = torch.log_softmax(ref["logits"]["action"], -1)[torch.arange(2), torch.as_tensor(actions["action"])]
    np.testing.assert_allclose(info["log_prob"], lp.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(info["value"], ref["vpred"].numpy(), rtol=1e-5, atol=1e-5)
    assert (info["log_prob"] <= 0).all() and info["log_prob"].dtype == np.float32


def test_agent_load_is_the_library_call_behind_the_cli(tmp_path):
    """``Agent.load`` finds MineCLIP and the prior beside the weights, and builds what the CLI flags build."""
    import argparse

    from aimc.agent.agent import find_companion
    from aimc.agent.commands import add_agent_arguments, build_agent

    weights = make_bundle(tmp_path)
    assert find_companion(weights, "mineclip") == tmp_path / "run" / "mineclip.safetensors"
    agent = Agent.load(weights, device="cpu", cond_scale=2.0, seed=3)
    assert agent.mineclip is not None and agent.prior is not None
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    cli = build_agent(parser.parse_args(["--weights", str(weights), "--cond-scale", "2", "--seed", "3", "--device", "cpu"]))
    assert agent.describe() == cli.describe() and agent.describe()["weights"] == str(weights.resolve())
    np.testing.assert_array_equal(agent.text_goals(["chop"], [1]), cli.text_goals(["chop"], [1]))
    bare = Agent.load(weights, device="cpu", companions=False)
    assert bare.mineclip is None and bare.prior is None
    (tmp_path / "run" / "mineclip.safetensors").unlink()
    with pytest.raises(UserError, match="no MineCLIP checkpoint"):
        Agent.load(weights, device="cpu", need_text=True)


def test_an_episode_plays_the_same_whatever_else_is_in_the_batch(agent):
    """Per-episode sampling streams: the same weights on the same worlds play the same episodes,
    action for action, with 1 or 3 episodes at once (other slots, other neighbours); another
    agent seed plays other ones."""
    from aimc.agent.rollout import Episode, RolloutCollector

    def play(num_envs: int, seed: int, worlds: list[int]) -> dict[int, list[int]]:
        todo = [Episode({"name": "crafter", "size": 64}, w, horizon=30, instruction="collect wood") for w in worlds]
        agent.seed = seed
        out: dict[int, list[int]] = {}
        with RolloutCollector(agent, num_envs, lambda _s: todo.pop(0) if todo else None, workers=0) as col:
            for r in col.run():
                out.setdefault(r.episode.seed, []).append(int(r.action["action"]))
        return out

    agent.cond_scale = 1.0
    try:
        one = play(1, 0, [900, 901, 902, 903])
        three = play(3, 0, [903, 902, 901, 900])
        other = play(3, 1, [900, 901, 902, 903])
    finally:
        agent.cond_scale, agent.seed = 6.0, 0
    assert one == three and len(one) == 4 and all(len(v) == 30 for v in one.values())
    assert all(other[w] != one[w] for w in one)

    # the streams themselves: row 1's draws do not depend on row 0's stream
    logits = {"action": torch.zeros(2, 17)}
    a = agent.policy.sample(logits, [torch.Generator().manual_seed(5), torch.Generator().manual_seed(7)])
    b = agent.policy.sample(logits, [torch.Generator().manual_seed(6), torch.Generator().manual_seed(7)])
    assert int(a["action"][1]) == int(b["action"][1])
    with pytest.raises(ValueError, match="generators"):
        agent.policy.sample(logits, [torch.Generator()])
