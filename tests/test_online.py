"""``aimc online`` (DAgger-style rounds) on the built-in world with tiny models: the labeller follows
the agent's path, a round stores exactly what was played with its labels and goals, and a killed
run (between rounds, or SIGKILLed inside training) resumes without repeating or losing a round."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from aimc.agent.envs import LABEL_MEASURE
from aimc.data.store import EpisodeStore
from aimc.envs.crafter import CrafterEnv, CrafterEnvConfig
from aimc.envs.demonstrator import Demonstrator, DemonstratorConfig
from aimc.errors import UserError

from test_agent import TINY_EMBED, make_bundle


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run fastest on one thread; one thread also makes CPU training bit-reproducible."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------- the labeller


def test_labeller_labels_the_states_the_agent_reached(tmp_path):
    """Random agent actions in the labelled env (its worker process) get the labels of a demonstrator
    pinned to the goal, driven alongside in a second env of the same world replaying the same
    actions; those labels depend on the demonstrator's state along the path (a fresh demonstrator
    asked at the same states answers otherwise), so the env must keep one per episode."""
    from aimc.agent.agent import RandomAgent
    from aimc.agent.rollout import Episode, RolloutCollector

    plays = [("collect_drink", 700_001), ("eat_cow", 700_002)]
    todo = [Episode({"name": "crafter-labelled", "goal": g, "size": 64}, s, horizon=200, tag=g) for g, s in plays]
    starts: dict[str, dict] = {}
    with RolloutCollector(RandomAgent({"action": 17}, seed=4), 2, lambda _s: todo.pop(0) if todo else None, workers=1,
                          on_start=lambda s, ep, f, m: starts.__setitem__(ep.tag, m)) as col:
        records = list(col.run())
    for goal, seed in plays:
        mine = [r for r in records if r.episode.tag == goal]
        assert len(mine) >= 100 and mine[-1].last and not any(r.crash for r in mine)
        labels = [int(starts[goal][LABEL_MEASURE])] + [int(r.measures[LABEL_MEASURE]) for r in mine[:-1]]
        actions = [r.action["action"] for r in mine]
        env = CrafterEnv(CrafterEnvConfig(size=64))
        _, info = env.reset(seed=seed)
        cfg = DemonstratorConfig(noise=0.0)
        demo = Demonstrator(env, cfg, seed=seed)
        demo.reset(goal)
        reference, stateless = [], []
        for a, r in zip(actions, mine):
            reference.append(demo.act(info))
            fresh = Demonstrator(env, cfg, seed=seed)
            fresh.reset(goal)
            stateless.append(fresh.act(info))
            obs, _, _, _, info = env.step(a)
            demo.observe(info)
            assert np.array_equal(obs, r.frame)  # the same world, step by step, in both processes
        assert labels == reference
        assert np.mean(np.array(actions) != np.array(reference)) > 0.8  # the agent is far off the demonstrator's path
        assert sum(x != y for x, y in zip(reference, stateless)) >= 3  # the demonstrator's state matters


def test_expert_share_executes_the_labels_with_that_chance():
    """DAgger's mixing: with expert_share=1 the world follows the demonstrator's own play (the same
    frames as the pinned demonstrator playing alone); with 0.5 about half the steps execute the
    label, the measure says which, and the draws depend on the world seed only."""
    from aimc.agent.envs import EXPERT_MEASURE, make_env

    seed, goal = 700_003, "collect_wood"

    def play(share: float, agent_seed: int) -> tuple[list, list, list]:
        env = make_env({"name": "crafter-labelled", "goal": goal, "size": 64, "expert_share": share})
        frame, m = env.reset(seed)
        rng = np.random.default_rng(agent_seed)
        frames, took, labels = [frame], [], [int(m[LABEL_MEASURE])]
        for _ in range(60):
            frame, m, done = env.step({"action": int(rng.integers(0, 17))})
            frames.append(frame)
            took.append(int(m[EXPERT_MEASURE]))
            labels.append(int(m[LABEL_MEASURE]))
            if done:
                break
        env.close()
        return frames, took, labels

    frames, took, _ = play(1.0, 0)
    assert all(took)
    env = CrafterEnv(CrafterEnvConfig(size=64))
    obs, info = env.reset(seed=seed)
    demo = Demonstrator(env, DemonstratorConfig(noise=0.0), seed=seed)
    demo.reset(goal)
    for f in frames[1:]:
        obs, _, _, _, info = env.step(demo.act(info))
        demo.observe(info)
        assert np.array_equal(obs, f)
    _, took_a, _ = play(0.5, 1)
    _, took_b, _ = play(0.5, 2)
    assert took_a == took_b and 0.3 < np.mean(took_a) < 0.7  # the world's stream, not the agent's
    _, took0, _ = play(0.0, 1)
    assert not any(took0)
    with pytest.raises(UserError, match="expert_share"):
        make_env({"name": "crafter-labelled", "goal": goal, "expert_share": 1.5})


def test_takeover_steps_in_after_k_wrong_actions_and_drives_m_steps():
    """Gated DAgger: after K agent actions in a row outside the demonstrator's equally good ones,
    the demonstrator drives exactly M steps (label.in_control of those frames; the world executes
    their labels, checked by replaying in a second env), then hands back; steps=0 drives to the end."""
    from aimc.agent.envs import CONTROL_MEASURE, EXPERT_MEASURE, TIES_MEASURE, make_env

    seed, goal, k, m_steps = 700_004, "collect_stone", 3, 5

    def play(takeover: dict, n: int = 80):
        env = make_env({"name": "crafter-labelled", "goal": goal, "size": 64, "takeover": takeover})
        frame, m = env.reset(seed)
        rng = np.random.default_rng(7)
        frames, measures, actions = [frame], [m], []
        for _ in range(n):
            actions.append(int(rng.integers(0, 17)))
            frame, m, done = env.step({"action": actions[-1]})
            frames.append(frame)
            measures.append(m)
            if done:
                break
        env.close()
        return frames, measures, actions

    frames, measures, actions = play({"after": k, "steps": m_steps})
    control = [int(m[CONTROL_MEASURE]) for m in measures]
    assert [int(m[EXPERT_MEASURE]) for m in measures[1:]] == control[:len(actions)]  # driven = executed the label
    wrong, left, segments = 0, 0, 0
    for t, a in enumerate(actions):  # the gate, recomputed from the measures
        assert control[t] == (left > 0)
        if left:
            left -= 1
            continue
        wrong = 0 if (int(measures[t][TIES_MEASURE]) >> a) & 1 else wrong + 1
        if wrong == k:
            wrong, left, segments = 0, m_steps, segments + 1
    assert segments >= 2 and 0 < sum(control) < len(control)
    env = CrafterEnv(CrafterEnvConfig(size=64))
    env.reset(seed=seed)
    for t, a in enumerate(actions):
        obs, *_ = env.step(int(measures[t][LABEL_MEASURE]) if control[t] else a)
        assert np.array_equal(obs, frames[t + 1])
    _, to_end, _ = play({"after": k, "steps": 0}, n=60)
    first = next(t for t, m in enumerate(to_end) if m[CONTROL_MEASURE])
    assert first >= k and all(m[CONTROL_MEASURE] for m in to_end[first:])
    _, never, _ = play({}, n=30)
    assert not any(m[CONTROL_MEASURE] for m in never)
    for bad in ({"after": 0, "steps": 3}, {"after": 2, "steps": -1}, {"after": 2, "stepz": 3}):
        with pytest.raises(UserError, match="takeover"):
            make_env({"name": "crafter-labelled", "goal": goal, "takeover": bad})


def test_train_on_takeover_labels_only_the_driven_steps():
    """train_on=takeover: the mask is the steps the demonstrator drove, labelled with what it
    executed (ties=agent does not replace those); bind passes takeover to the env."""
    from aimc.agent.envs import CONTROL_MEASURE, LABEL_MEASURE, TIES_MEASURE
    from aimc.eval.suite import load_suite
    from aimc.online.labellers import PlayedEpisode, make_labeller

    opts = {"takeover": {"after": 2, "steps": 3}, "train_on": "takeover", "ties": "agent"}
    lab = make_labeller("crafter-demonstrator", opts)
    env = lab.bind(load_suite("crafter-core").env, load_suite("crafter-core").task("collect_stone"))
    assert env["takeover"] == {"after": 2, "steps": 3} and env["name"] == "crafter-labelled"
    label, control = [3, 4, 5, 6, 7], [0, 0, 1, 1, 0]
    agent = [3, 1, 1, 1, 1]
    ties = [1 << 3, (1 << 4) | (1 << 1), (1 << 5) | (1 << 1), 1 << 6, (1 << 7) | (1 << 1)]
    measures = [{LABEL_MEASURE: float(a), TIES_MEASURE: float(b), CONTROL_MEASURE: float(c)}
                for a, b, c in zip(label, ties, control)]
    ep = PlayedEpisode("collect_stone", "x", "en", 0, env, np.zeros((5, 4, 4, 3), np.uint8),
                       {"action": np.array(agent)}, np.zeros((5, 2), np.float32), measures)
    got = lab.label(ep)
    assert got.mask.tolist() == [False, False, True, True, False]
    assert got.actions["action"].tolist() == [3, 1, 5, 6, 1]  # driven steps keep the executed label
    assert make_labeller("crafter-demonstrator", {"takeover": {"after": 2, "steps": 3}}).label(ep).mask is None
    with pytest.raises(UserError, match="train_on"):
        make_labeller("crafter-demonstrator", {"train_on": "takeover"})
    with pytest.raises(UserError, match="train_on"):
        make_labeller("crafter-demonstrator", {"train_on": "some"})
    with pytest.raises(UserError, match="labeller.options.takeover must be"):
        make_labeller("crafter-demonstrator", {"takeover": {"after": True}})


def test_labeller_binding_and_errors():
    from aimc.eval.suite import load_suite
    from aimc.online.labellers import Labels, check_labels, labelled_segments, make_labeller

    suite = load_suite("crafter-core")
    lab = make_labeller("crafter-demonstrator", {"demonstrator": {"reflexes": False}})
    env = lab.bind(suite.env, suite.task("collect_stone"))
    assert env == {"name": "crafter-labelled", "size": 64, "goal": "collect_stone", "demonstrator": {"reflexes": False}}
    with pytest.raises(UserError, match="labels the built-in world"):
        lab.bind({"name": "minerl"}, suite.task("collect_stone"))
    with pytest.raises(UserError, match="unknown labeller"):
        make_labeller("nobody")
    with pytest.raises(UserError, match="bad labeller.options"):
        make_labeller("crafter-demonstrator", {"colour": 1})
    with pytest.raises(UserError, match="demonstrator"):
        make_labeller("crafter-demonstrator", {"demonstrator": {"no_such_field": 1}})
    assert labelled_segments(np.array([1, 1, 0, 0, 1, 0, 1, 1], bool), 8) == [(0, 2), (4, 5), (6, 8)]
    assert labelled_segments(None, 5) == [(0, 5)]
    from aimc.online.labellers import PlayedEpisode

    ep = PlayedEpisode("t", "x", "en", 0, {}, np.zeros((3, 4, 4, 3), np.uint8), {"action": np.zeros(3, np.int64)},
                       np.zeros((3, 2), np.float32), [{}] * 3)
    with pytest.raises(UserError, match="outside 0..16"):
        check_labels(Labels({"action": np.array([0, 17, 1])}), ep, {"action": 17}, "mine")
    with pytest.raises(UserError, match="heads"):
        check_labels(Labels({"buttons": np.zeros(3, np.int64)}), ep, {"action": 17}, "mine")


def test_own_successes_labels_the_agents_actions_up_to_its_success():
    from aimc.online.labellers import PlayedEpisode, make_labeller

    def played(success_step):
        return PlayedEpisode("t", "x", "en", 0, {"name": "minerl"}, np.zeros((6, 4, 4, 3), np.uint8),
                             {"buttons": np.arange(6), "camera": np.arange(6) + 10}, np.zeros((6, 2), np.float32),
                             [{}] * 6, success_step=success_step)

    lab = make_labeller("own-successes")
    assert lab.bind({"name": "minerl"}, None) == {"name": "minerl"}  # any world, nothing to watch
    got = lab.label(played(4))
    assert got.mask.tolist() == [True] * 4 + [False] * 2
    assert got.actions["buttons"].tolist() == list(range(6)) and got.actions["camera"].tolist() == list(range(10, 16))
    assert not lab.label(played(None)).mask.any()  # a failure teaches nothing
    assert not make_labeller("own-successes", {"max_steps": 3}).label(played(4)).mask.any()  # too slow
    assert make_labeller("own-successes", {"max_steps": 4}).label(played(4)).mask.sum() == 4
    with pytest.raises(UserError, match="max_steps"):
        make_labeller("own-successes", {"max_steps": -1})


def test_ties_agent_keeps_the_agents_action_where_it_is_as_good():
    """ties=agent: a step whose agent action has its bit in label.ties is labelled with the agent's
    action, any other with the demonstrator's; ties=demonstrator ignores the bits."""
    from aimc.agent.envs import TIES_MEASURE
    from aimc.online.labellers import PlayedEpisode, make_labeller

    label = [3, 3, 5, 2]  # the demonstrator's answers
    ties = [(1 << 3) | (1 << 4), 1 << 3, 1 << 5, (1 << 2) | (1 << 1)]
    agent = np.array([4, 4, 5, 0])  # tie, mistake, the label itself, mistake
    measures = [{LABEL_MEASURE: float(a), TIES_MEASURE: float(b)} for a, b in zip(label, ties)]
    ep = PlayedEpisode("t", "x", "en", 0, {}, np.zeros((4, 4, 4, 3), np.uint8), {"action": agent},
                       np.zeros((4, 2), np.float32), measures)
    got = make_labeller("crafter-demonstrator", {"ties": "agent"}).label(ep).actions["action"]
    assert got.tolist() == [4, 3, 5, 2]
    assert make_labeller("crafter-demonstrator").label(ep).actions["action"].tolist() == label
    with pytest.raises(UserError, match="ties"):
        make_labeller("crafter-demonstrator", {"ties": "nobody"})
    ep.measures = [{LABEL_MEASURE: 1.0}] * 4
    with pytest.raises(UserError, match="label.ties"):
        make_labeller("crafter-demonstrator", {"ties": "agent"}).label(ep)


# ---------------------------------------------------------------------------- one round's data


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny random agent (policy, MineCLIP, prior; 16-d goals, 64x64 frames, 17 actions)."""
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def play_round(tmp_path: Path, bundle: Path, r: int, num_envs: int, overrides: list[str], preset: str = "online_crafter"):
    """Round ``r`` of ``preset`` with ``overrides``, played in this process:
    (jobs, collected rows, step records, labeller, agent, store, models)."""
    from aimc.config import load_config
    from aimc.eval.suite import load_suite
    from aimc.online.config import OnlineConfig
    from aimc.online.labellers import make_labeller
    from aimc.online.rounds import collect_round, load_models, make_agent, plan_collection

    cfg = load_config(OnlineConfig, preset, [f"init={bundle}", *overrides])
    labeller = make_labeller(cfg.labeller.name)
    jobs = plan_collection(cfg, load_suite(cfg.suite), labeller, r)
    models = load_models(cfg)
    agent = make_agent(str(bundle), models, cfg, seed=5)
    store = EpisodeStore(tmp_path / "store", embed_dtype="float32")
    records = []
    rows = collect_round(agent, jobs, labeller, store, tmp_path / f"r{r:03d}", r, heads=models.heads, num_envs=num_envs,
                         workers=0, stop_on_success=cfg.collect.stop_on_success, on_record=records.append)
    return jobs, rows, records, labeller, agent, store, models


def test_a_round_stores_exactly_the_visited_steps_with_labels_and_goals(tmp_path, bundle):
    from aimc.online.rounds import collect_round

    jobs, rows, records, labeller, agent, store, models = play_round(
        tmp_path, bundle, 2, 2, ["tasks=[collect_stone,eat_cow]", "collect.episodes=3", "collect.max_steps=12"])
    assert [(j.task.id, j.seed, j.instruction) for j in jobs] == [
        ("collect_stone", 700_003, "collect stone"), ("eat_cow", 700_004, "eat a cow"), ("collect_stone", 700_005, "mine stone")]
    assert store.episode_ids() == sorted(j.episode_id for j in jobs)
    assert [r["job"] for r in rows] == [j.episode_id for j in jobs]
    for job in jobs:
        mine = sorted((r for r in records if r.episode.tag is job), key=lambda r: r.t)
        assert [r.t for r in mine] == list(range(len(mine))) and mine[-1].last
        ep = store.open(job.episode_id)
        n = ep.num_frames
        assert n == len(mine)  # every visited step, nothing more
        acts = ep.actions()
        assert acts["agent_action"].tolist() == [r.action["action"] for r in mine]
        # labels: the demonstrator's answer in each state reached; state 0 is the world's start
        env = CrafterEnv(CrafterEnvConfig(size=64))
        _, info = env.reset(seed=job.seed)
        demo = Demonstrator(env, DemonstratorConfig(noise=0.0), seed=job.seed)
        demo.reset(job.task.id)
        assert acts["action"].tolist() == [demo.act(info)] + [int(r.measures[LABEL_MEASURE]) for r in mine[:-1]]
        goals, valid = ep.embeddings()
        np.testing.assert_array_equal(goals, np.stack([r.goal for r in mine]))  # the goals acted on, exactly
        assert valid.all() and goals.shape == (n, TINY_EMBED)
        np.testing.assert_array_equal(goals[0], agent.goal(job.instruction, job.seed))  # as aimc eval makes them
        frames = ep.frames()
        assert np.abs(frames[1:].astype(int) - np.stack([r.frame for r in mine[:-1]]).astype(int)).mean() < 3
        m = ep.meta
        assert (m["goal_source"], m["round"], m["task"], m["instruction"], m["world_seed"], m["policy_heads"]) == \
            ("acted", 2, job.task.id, job.instruction, job.seed, ["action"])
    lines = [json.loads(x) for x in (tmp_path / "r002" / "collected.jsonl").read_text().splitlines()]
    assert sum(x["labelled"] for x in lines) == len(records)
    # a second call (the round resumed after a kill) plays nothing again
    again = collect_round(agent, jobs, labeller, store, tmp_path / "r002", 2, heads=models.heads, num_envs=2, workers=0,
                          on_record=lambda r: pytest.fail("played again"))
    assert again == rows


def test_the_skill_recipe_lets_the_demonstrator_drive_on_after_the_first_success(tmp_path, bundle):
    """online_crafter_skill: every step executed is the label, and the episode goes on after the
    task's first success up to collect.max_steps, so the skill is labelled again and again."""
    from aimc.agent.envs import EXPERT_MEASURE
    from aimc.config import load_config
    from aimc.online.config import OnlineConfig

    cfg = load_config(OnlineConfig, "online_crafter_skill", [])
    assert (cfg.collect.expert_share, cfg.collect.stop_on_success, cfg.collect.max_steps) == ([1.0], False, 120)
    assert "optim.uncond_kl=1.0" in cfg.train.overrides and cfg.train.preset == "crafter_finetune"
    jobs, rows, records, *_ = play_round(tmp_path, bundle, 1, 1, ["tasks=[collect_wood]", "collect.episodes=1",
                                                                   "collect.max_steps=40"], preset="online_crafter_skill")
    mine = sorted(records, key=lambda r: r.t)
    assert len(mine) == 40 and mine[-1].last  # not cut at the first success
    assert all(r.measures[EXPERT_MEASURE] == 1.0 for r in mine)  # the demonstrator drove every step
    wood = [r.measures["achievement.collect_wood"] for r in mine]
    first = wood.index(1.0)
    assert first < 30 and wood[-1] >= 2  # it collected wood early, and again after
    assert rows[0]["labelled"] == 40


def test_own_successes_round_stores_the_steps_before_each_success_only(tmp_path, bundle):
    _jobs, rows, records, _lab, _agent, store, _models = play_round(
        tmp_path, bundle, 1, 3, ["tasks=[collect_sapling]", "collect.episodes=6", "collect.max_steps=100",
                                 "labeller.name=own-successes", "collect.expert_share=[]"])
    won = [r for r in rows if r["success_step"] is not None]
    assert 0 < len(won) < len(rows)  # some of each
    assert sorted(store.episode_ids()) == sorted(r["job"] for r in won)
    for row in won:
        mine = sorted((r for r in records if r.episode.tag.episode_id == row["job"]), key=lambda r: r.t)
        acts = store.open(row["job"]).actions()
        assert len(acts["action"]) == row["success_step"] == row["labelled"]
        assert acts["action"].tolist() == acts["agent_action"].tolist() == [r.action["action"] for r in mine][:row["success_step"]]


# ---------------------------------------------------------------------------- whole runs


def earlier_store(root: Path, n: int = 60, episodes: int = 3) -> Path:
    """Demonstration-like data for the tiny agent: 64x64 frames, 16-d frame goals, events; with
    three episodes or more, one of them is the val split."""
    from aimc.data.split import make_split

    store = EpisodeStore(root)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        emb = rng.standard_normal((n, TINY_EMBED)).astype(np.float32)
        anns = [{"start": 10, "end": 31, "text": "collect wood", "lang": "en", "event": "collect_wood"}]
        store.write_episode(f"demo{e}", rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8),
                            {"action": rng.integers(0, 17, n)}, {"fps": 10}, annotations=anns, embeddings=emb,
                            embed_valid=np.arange(n) >= 15)
    if episodes >= 3:
        make_split(store, val_frames=1, seed=0)
    return root


RUN_ARGS = ["rounds=2", "tasks=[collect_stone]", "collect.episodes=2", "collect.max_steps=20", "collect.num_envs=2",
            "collect.workers=0", "train.preset=crafter_fast", "train.frames_per_round=640", "validate.episodes=2",
            "validate.max_steps=10", "validate.num_envs=2", "validate.workers=0", "agent.device=cpu"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """One earlier store for every run compared here (two encodes of the same frames may differ)."""
    return earlier_store(tmp_path_factory.mktemp("demo") / "store")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, bundle, demo) -> Path:
    """Two rounds in one go, through the command line."""
    from aimc.cli import main

    run = tmp_path_factory.mktemp("straight") / "run"
    assert main(["online", "--init", str(bundle), "--store", str(demo), "--out", str(run), "--quiet", *RUN_ARGS]) == 0
    return run


def test_online_command_runs_rounds_and_writes_readme_and_exports(straight):
    state = json.loads((straight / "online.json").read_text())
    assert sorted(state["rounds"]) == ["1", "2"] and state["initial"]["success"]["n"] == 2
    for r in ("1", "2"):
        rs = state["rounds"][r]
        assert rs["collect"]["episodes"] == 2 and rs["train"]["frames"] == 640 and rs["validate"]["success"]["n"] == 2
    readme = (straight / "README.md").read_text()
    assert "| 0 (start) |" in readme and "\n| 1 | 2 |" in readme and "\n| 2 | 2 |" in readme
    assert "validation success [95 % CI]" in readme and "Best round:" in readme
    from dataclasses import replace

    from aimc.config import load_config
    from aimc.online.config import OnlineConfig
    from aimc.online.rounds import readme_text

    cfg = load_config(OnlineConfig, str(straight / "config.yaml"), [])
    kept_later = {**state, "best": {**state["best"], "round": 2}}
    assert "often the luckiest one" in readme_text(cfg, kept_later)  # 2 validation episodes: noise picks the round
    assert "often the luckiest one" not in readme_text(replace(cfg, validate=replace(cfg.validate, episodes=60)), kept_later)
    assert "often the luckiest one" not in readme_text(cfg, {**state, "best": {**state["best"], "round": 0}})
    for name in ("final.safetensors", "final.yaml", "best.safetensors", "best.yaml", "config.yaml"):
        assert (straight / name).is_file(), name
    final = load_file(str(straight / "final.safetensors"))
    round2 = load_file(state["rounds"]["2"]["train"]["weights"])
    assert all(torch.equal(final[k], round2[k]) for k in round2)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(straight / "tb"))
    tb.Reload()
    assert [e.step for e in tb.Scalars("online/val_success")] == [0, 1, 2]  # the start weights, then each round
    labelled = [state["rounds"][r]["collect"]["labelled"] for r in ("1", "2")]
    assert [(e.step, e.value) for e in tb.Scalars("online/labelled_steps_total")] == [(1, labelled[0]), (2, sum(labelled))]
    store = EpisodeStore(straight / "store")
    ids = store.episode_ids()
    assert ids == ["r001-w0700000-collect_stone", "r001-w0700001-collect_stone",
                   "r002-w0700002-collect_stone", "r002-w0700003-collect_stone"]
    # round 2 trained on both rounds' labelled steps beside the earlier data, half and half
    notes = (straight / "rounds" / "002" / "train" / "README.md").read_text()
    assert str(straight / "store") in notes and "share of frames 0.50" in notes


def _assert_same_run(run: Path, straight: Path) -> None:
    a, b = json.loads((run / "online.json").read_text()), json.loads((straight / "online.json").read_text())
    for r in ("1", "2"):
        for key in ("episodes", "labelled", "agreement", "success"):
            assert a["rounds"][r]["collect"][key] == b["rounds"][r]["collect"][key], (r, key)
        assert a["rounds"][r]["validate"]["success"] == b["rounds"][r]["validate"]["success"]
    assert EpisodeStore(run / "store").episode_ids() == EpisodeStore(straight / "store").episode_ids()
    for r in ("001", "002"):
        lines = (run / "rounds" / r / "collected.jsonl").read_text().splitlines()
        assert len(lines) == 2  # each episode played and stored once
    x, y = load_file(str(run / "final.safetensors")), load_file(str(straight / "final.safetensors"))
    assert all(torch.equal(x[k], y[k]) for k in y)  # nothing lost, nothing repeated: the same weights


def _run(run: Path, store: Path, bundle: Path, phases: list | None = None, stop_at: tuple | None = None,
         extra: tuple = ()):
    from aimc.config import load_config
    from aimc.online.config import OnlineConfig
    from aimc.online.rounds import run_online

    cfg = load_config(OnlineConfig, "online_crafter", [f"init={bundle}", f"stores=[{store}]", *RUN_ARGS, *extra])

    def on_phase(r: int, phase: str) -> None:
        if phases is not None:
            phases.append((r, phase))
        if (r, phase) == stop_at:
            raise KeyboardInterrupt  # as Ctrl-C between two phases

    return run_online(cfg, run, progress=False, on_phase=on_phase)


def test_a_run_stopped_between_rounds_continues_with_the_next_round(tmp_path, bundle, demo, straight):
    store = demo
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run", store, bundle, stop_at=(2, "collect"))
    state = json.loads((tmp_path / "run" / "online.json").read_text())
    assert state["rounds"]["1"].get("validate") and not state["rounds"].get("2")
    phases: list = []
    _run(tmp_path / "run", store, bundle, phases)
    assert phases == [(2, "collect"), (2, "train"), (2, "validate")]
    _assert_same_run(tmp_path / "run", straight)


def test_a_time_budget_starts_no_round_it_cannot_finish_and_a_rerun_continues(tmp_path, bundle, demo, straight):
    """max_minutes: round 1 always runs; round 2 is not started when the time left is shorter than
    round 1 took; the README says so, and the same command without the budget adds round 2."""
    phases: list = []
    state = _run(tmp_path / "run", demo, bundle, phases, extra=("max_minutes=0.0001",))
    assert [p for p in phases if p[0] == 2] == [] and sorted(state["rounds"]) == ["1"]
    assert "max_minutes=0.0001" in state["stopped"] and "round 2 was not started" in state["stopped"]
    assert "Stopped early: max_minutes" in (tmp_path / "run" / "README.md").read_text()
    phases.clear()
    state = _run(tmp_path / "run", demo, bundle, phases)
    assert phases == [(2, "collect"), (2, "train"), (2, "validate")] and "stopped" not in state
    _assert_same_run(tmp_path / "run", straight)


def _killable_child(run: str, store: str, bundle: str) -> None:
    """The same run in a forked child, its training batches slowed so that the parent can kill it
    inside round 2's training."""
    from aimc.train.data import SplitBatches

    torch.set_num_threads(1)
    slow = SplitBatches.batch

    def batch(self, index):
        time.sleep(0.3)
        return slow(self, index)

    SplitBatches.batch = batch
    _run(Path(run), Path(store), Path(bundle))


def test_a_run_killed_inside_training_resumes_that_training(tmp_path, bundle, demo, straight):
    store = demo
    run = tmp_path / "run"
    proc = mp.get_context("fork").Process(target=_killable_child, args=(str(run), str(store), str(bundle)))
    proc.start()
    progress = run / "rounds" / "002" / "train" / "checkpoints" / "latest" / "progress.json"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            if progress.is_file():
                break
            if not proc.is_alive():
                pytest.fail(f"the run ended (exit code {proc.exitcode}) before it could be killed")
            time.sleep(0.05)
        else:
            pytest.fail("round 2's training wrote no checkpoint in time")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join()
    assert proc.exitcode == -signal.SIGKILL
    state = json.loads((run / "online.json").read_text())
    assert state["rounds"]["2"].get("collect") and not state["rounds"]["2"].get("train")
    phases: list = []
    state = _run(run, store, bundle, phases)
    assert phases == [(2, "train"), (2, "validate")]  # round 1 and round 2's play are not repeated
    assert state["rounds"]["2"]["train"]["resumed"]
    assert "## Resumed" in (run / "rounds" / "002" / "train" / "README.md").read_text()
    _assert_same_run(run, straight)


def test_online_errors_name_the_setting_and_the_fix(tmp_path, bundle, capsys):
    from aimc.cli import main
    from aimc.config import load_config
    from aimc.errors import ConfigError
    from aimc.online.config import OnlineConfig

    with pytest.raises(ConfigError, match="validate.seed must be >= 4,000,000"):
        load_config(OnlineConfig, "online_crafter", ["validate.seed=3000000"])
    with pytest.raises(ConfigError, match="schedule.n_frames is set by aimc online.*train.frames_per_round"):
        load_config(OnlineConfig, "online_crafter", ["train.overrides=[schedule.n_frames=5]"])
    with pytest.raises(ConfigError, match="threads must be >= 0"):
        load_config(OnlineConfig, "online_crafter", ["threads=-1"])
    with pytest.raises(ConfigError, match="quote an override"):
        load_config(OnlineConfig, "online_crafter", ["train.overrides=[checkpoint.export=[.weights]]"])
    with pytest.raises(ConfigError, match="training worlds end below 1,000,000"):
        load_config(OnlineConfig, "online_crafter", ["collect.seed=999990"])
    out = str(tmp_path / "run")
    cases = [
        (["--init", str(bundle)], "no --store was given"),
        (["--init", str(tmp_path / "nope.safetensors"), "mix.online_share=1"], "nope.safetensors"),
        (["--init", str(bundle), "mix.online_share=1", "tasks=[fly]"], "no task 'fly'"),
        (["--init", str(bundle), "mix.online_share=1", "train.overrides=[optim.lr=-1]"], "optim.lr must be > 0"),
    ]
    for extra, message in cases:
        assert main(["online", "--out", out, "--quiet", *extra]) == 2
        assert message in capsys.readouterr().err
    store = earlier_store(tmp_path / "demo", episodes=1)
    args = ["online", "--init", str(bundle), "--store", str(store), "--out", out, "--quiet", *RUN_ARGS, "rounds=1",
            "validate.episodes=0",
            'train.overrides=["checkpoint.export=[.weights]","validation.enabled=false"]']  # one earlier episode: no val split
    assert main(args) == 0
    assert not (tmp_path / "run" / "rounds" / "000").exists()  # no validation asked: none made
    for name in ("final.safetensors", "final.weights", "best.safetensors", "best.weights"):  # the rounds need .safetensors
        assert (tmp_path / "run" / name).is_file(), name
    capsys.readouterr()
    assert main([*args, "mix.online_share=0.3"]) == 2  # another mixture in the same run: refused
    assert "started with mix.online_share=0.5, now 0.3" in capsys.readouterr().err
    assert main(args) == 0  # the same settings: nothing left to do
