"""Event-anchored hindsight goals (aimc.data.events, ``data.relabel=events``)."""

from __future__ import annotations

import numpy as np

from aimc.data.store import EpisodeStore
from aimc.data.events import EventGoalBatches
from aimc.utils.io import atomic_write_text


def store_with_events(root, n=120, d=4, episodes=2):
    """Episodes whose frame t embeds as the vector [t, t, ...] (+ episode offset), with events."""
    store = EpisodeStore(root)
    for e in range(episodes):
        emb = np.tile(np.arange(n, dtype=np.float32)[:, None] + 1000 * e, (1, d))
        valid = np.arange(n) >= 15
        anns = [{"start": f - 15, "end": f + 1, "text": ev, "lang": "en", "event": ev}
                for f, ev in ((30, "collect_wood"), (32, "collect_wood"), (70, "place_table"))]
        store.write_episode(f"ep{e}", np.zeros((n, 16, 16, 3), np.uint8), {"action": np.arange(n) % 17},
                            {"fps": 10, "goal_segments": [[0, 70, "place_table"], [70, n, "collect_wood"]]},
                            annotations=anns, embeddings=emb, embed_valid=valid)
    return root


def test_goals_come_from_anchors_at_or_after_each_step(tmp_path):
    root = store_with_events(tmp_path / "s")
    batches = EventGoalBatches(root, T=24, batch_size=6, p_uncond=0.0, min_btwn_goals=15, max_btwn_goals=40, jitter=2,
                               split=None, episode_ids=["ep0"])
    assert batches.keep["place_table"] == 1.0 and batches.keep["collect_wood"] == 0.5  # rarer kept more
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = batches.anchors(rng, 0)
        assert 70 <= a[np.searchsorted(a, 70)] <= 72  # the pursued goal's event is always an anchor
        assert np.all(np.diff(np.concatenate([[0], a])) <= 40) and a[-1] == 119 and a.min() >= 15
    b = batches.batch(3)
    assert b["img"].shape == (6, 24, 16, 16, 3) and b["goal"].shape == (6, 24, 4) and b["first"][:, 0].all()
    for row in range(6):
        assert np.all(np.diff(b["goal"][row, :, 0].numpy()) >= 0)  # goals only move forward in time
    # the same index gives the same batch (stateless), p_uncond=1 gives zero goals
    assert np.array_equal(batches.batch(3)["goal"], b["goal"])
    zero = EventGoalBatches(root, T=24, batch_size=4, p_uncond=1.0, split=None, episode_ids=["ep0"])
    assert float(zero.batch(0)["goal"].abs().sum()) == 0.0


def test_goal_is_never_in_the_past(tmp_path):
    root = store_with_events(tmp_path / "s")
    batches = EventGoalBatches(root, T=30, batch_size=1, p_uncond=0.0, split=None, episode_ids=["ep0"])
    rng = np.random.default_rng(1)
    for _ in range(30):
        item = batches.item(rng)
        t = item["actions"]["action"]  # == frame index mod 17; recover the start from the goal of step 0
        g = item["goal"][:, 0]  # embedding = frame index of the goal
        assert np.all(g >= 15)
        assert np.all(np.diff(g) >= 0)
        assert len(t) == 30


def test_standardize_and_mixture(tmp_path):
    root = store_with_events(tmp_path / "s")
    s = EventGoalBatches(root, T=16, batch_size=8, p_uncond=0.0, standardize=True, split=None, episode_ids=["ep0"])
    allv = np.concatenate([e[v] for e, v in zip(s.emb, s.valid)])
    assert abs(float(allv.mean())) < 1e-4 and abs(float(allv.std()) - 1.0) < 1e-3
    # the mixture of data.stores / data.weights: sources "store:split" (split a = ep0, split b = ep1)
    atomic_write_text(root / "splits.yaml", "splits: {a: [ep0], b: [ep1]}\n")
    mix = EventGoalBatches([f"{root}:a", f"{root}:b"], weights=[0.8, 0.2], T=16, batch_size=8, p_uncond=0.0, seed=0)
    rows = np.concatenate([mix.batch(k)["goal"][:, 0, 0].numpy() for k in range(25)])
    from_b = (rows >= 1000).mean()  # ep1's embeddings are offset by 1000
    assert 0.1 < from_b < 0.3


def test_switch_start_begins_sequences_where_a_new_goal_was_picked(tmp_path):
    root = store_with_events(tmp_path / "s")  # goal segments start at frames 0 and 70
    rng = np.random.default_rng(0)
    sw = EventGoalBatches(root, T=24, batch_size=1, p_uncond=0.0, switch_start=1.0, split=None)
    starts = {int(sw.item(rng)["actions"]["action"][0]) for _ in range(40)}  # action = frame index % 17
    assert starts == {0, 70 % 17}
    anywhere = EventGoalBatches(root, T=24, batch_size=1, p_uncond=0.0, split=None)
    assert len({int(anywhere.item(rng)["actions"]["action"][0]) for _ in range(40)}) > 5
    late = EventGoalBatches(root, T=60, batch_size=1, p_uncond=0.0, switch_start=1.0, split=None)
    assert {int(late.item(rng)["actions"]["action"][0]) for _ in range(20)} == {0}  # 70 + 60 > 120 frames


def test_a_store_without_event_annotations_is_a_clear_error(tmp_path):
    root = tmp_path / "plain"
    store = EpisodeStore(root)
    n = 60
    store.write_episode("ep0", np.zeros((n, 16, 16, 3), np.uint8), {"action": np.arange(n) % 17}, {"fps": 10},
                        annotations=[{"start": 10, "end": 30, "text": "walk", "lang": "en"}],
                        embeddings=np.ones((n, 4), np.float32), embed_valid=np.arange(n) >= 15)
    import pytest

    from aimc.errors import UserError

    with pytest.raises(UserError, match=r"plain: no episode has event annotations.*data.relabel=steve1"):
        EventGoalBatches(root, T=16, batch_size=2, split=None)
