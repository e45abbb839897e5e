"""Acted goals in training (episodes ``aimc online`` writes): never relabeled by any relabeler, and
the labelled steps join the earlier data by an exact frame share (``SplitBatches``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aimc.data.store import EpisodeStore
from aimc.errors import UserError

D = 4
ONLINE_ACTION = 16  # every labelled step of the acted store has this label; the events store never does


def events_store(root, n=80, episodes=3, size=16):
    """Hindsight data: frame t embeds as [t + 1000 e, ...] (>= 15 where valid), actions 0..15, events."""
    store = EpisodeStore(root)
    for e in range(episodes):
        emb = np.tile(np.arange(n, dtype=np.float32)[:, None] + 1000 * e, (1, D))
        anns = [{"start": f - 15, "end": f + 1, "text": ev, "lang": "en", "event": ev}
                for f, ev in ((30, "collect_wood"), (60, "place_table"))]
        store.write_episode(f"demo{e}", np.full((n, size, size, 3), 10 * e, np.uint8), {"action": np.arange(n) % 16},
                            {"fps": 10}, annotations=anns, embeddings=emb, embed_valid=np.arange(n) >= 15)
    return root


def acted_store(root, lengths=(20, 33), size=16):
    """Labelled play: the goal acted on at frame t is [-(t + 1) - 100 k, ...] (negative: never a frame
    embedding of the events store), all frames valid, labels ONLINE_ACTION, the agent's own actions beside."""
    store = EpisodeStore(root, embed_dtype="float32")
    for k, n in enumerate(lengths):
        goals = np.tile(-(np.arange(n, dtype=np.float32)[:, None] + 1) - 100 * k, (1, D))
        store.write_episode(f"r001-w{k:07d}-task", np.full((n, size, size, 3), 200, np.uint8),
                            {"action": np.full(n, ONLINE_ACTION), "agent_action": np.zeros(n, np.int64)},
                            {"fps": 10, "goal_source": "acted", "policy_heads": ["action"], "round": 1},
                            embeddings=goals, embed_valid=np.ones(n, bool))
    return root


def _is_acted_goal_row(goal: np.ndarray) -> bool:
    """A (T, D) goal sequence of the acted store: consecutive frames -(t+1) - 100 k, all columns equal."""
    g = goal[:, 0]
    return bool(np.all(goal == g[:, None]) and np.all(g < 0) and np.all(np.diff(g) == -1))


def test_events_relabeler_uses_acted_goals_as_stored(tmp_path):
    from aimc.data.events import EventGoalBatches

    root = acted_store(tmp_path / "acted")
    # p_uncond=1 would zero every relabeled sequence; acted goals are never zeroed, and need no events
    b = EventGoalBatches(root, T=16, batch_size=32, p_uncond=1.0, split=None, standardize=True)
    assert b.describe()["acted_goal_episodes"] == 2
    batch = b.batch(0)
    starts = set()
    for row in range(32):
        goal = batch["goal"][row].numpy()
        assert _is_acted_goal_row(goal), goal[:, 0]
        assert set(batch["actions"]["action"][row].tolist()) == {ONLINE_ACTION}  # the label, not the agent's action
        starts.add(int(-goal[0, 0] - 1) % 100)
    assert 0 in starts  # windows may start at frame 0 (every frame has its goal)
    assert set(batch["actions"]) == {"action"}  # policy_heads: the agent's own action is not a training head
    # beside hindsight data in one mixture (aimc train data.stores=[...] data.weights=[...]): both kinds
    mix = EventGoalBatches([events_store(tmp_path / "demo"), root], weights=[0.5, 0.5], T=16, batch_size=64,
                           p_uncond=0.0, split=None, standardize=True)
    rows = mix.batch(1)["goal"].numpy()
    acted = [_is_acted_goal_row(g) for g in rows]
    assert 15 < sum(acted) < 49
    assert all(np.all(np.abs(g) < 10) for g, a in zip(rows, acted) if not a)  # the demonstrations are standardized


def test_steve1_loader_uses_acted_goals_as_stored(tmp_path):
    from aimc.data.loader import SequenceDataset

    root = acted_store(tmp_path / "acted")
    ds = SequenceDataset([root], split=None, T=16, p_uncond=1.0, goal_dim=D, num_items=40, min_btwn_goals=15,
                         max_btwn_goals=30)
    assert ds.describe()["acted_goal_episodes"] == 2
    assert ds.usable_frames == 20 + 33  # from frame 0: acted goals exist at every frame
    starts = set()
    for i in range(40):
        item = ds[i]
        goal = item["goal"].numpy()
        assert _is_acted_goal_row(goal)
        assert set(item["actions"]["action"].tolist()) == {ONLINE_ACTION}
        starts.add(int(-goal[0, 0] - 1) % 100)
    assert min(starts) < 15  # windows start before frame 15 (hindsight data cannot)


def test_embedding_a_store_never_replaces_acted_goals(tmp_path):
    from test_agent import tiny_mineclip_config

    from aimc.data.embed import embed_store
    from aimc.models.mineclip import MineCLIP

    root = acted_store(tmp_path / "acted")
    before = EpisodeStore(root).open("r001-w0000000-task").embeddings()[0].copy()
    counts = embed_store(EpisodeStore(root), MineCLIP(tiny_mineclip_config()), force=True, progress=False)
    assert counts["embedded"] == 0
    np.testing.assert_array_equal(EpisodeStore(root).open("r001-w0000000-task").embeddings()[0], before)


def test_split_batches_give_the_configured_share_of_every_batch(tmp_path):
    """The round's mixture as aimc online builds it: mix.online_share of every batch's sequences from
    the labelled steps (goals as acted), the rest from the earlier data (relabeled, p_uncond applies)."""
    from aimc.config import load_config
    from aimc.online.config import OnlineConfig
    from aimc.online.rounds import EarlierData, round_sources, round_train_config
    from aimc.train.data import SplitBatches, split_counts

    from aimc.data.split import make_split

    demo = events_store(tmp_path / "demo")
    make_split(EpisodeStore(demo), val_frames=1, seed=0)  # one episode for the earlier data's validation
    run = tmp_path / "run"
    acted_store(run / "store")
    cfg = load_config(OnlineConfig, "online_crafter", [f"init={tmp_path / 'w.safetensors'}", f"stores=[{demo}]",
                                                       "mix.online_share=0.25", "train.preset=crafter_fast",
                                                       "train.overrides=[optim.batch_size=8]"])
    tcfg = round_train_config(cfg, run, 1, str(tmp_path / "w.safetensors"), D)
    assert tcfg.data.stores == [str(demo), str(run / "store")] and tcfg.data.weights == pytest.approx([0.75, 0.25])
    src, val = round_sources(cfg, tcfg, run, EarlierData())
    assert isinstance(src, SplitBatches)
    for vb in val():  # validation: the earlier data's val split only (a measure of forgetting)
        assert not any(_is_acted_goal_row(g) for g in vb["goal"].numpy())
    parts = src.describe()["parts"]
    assert [(p["name"], p["sequences"]) for p in parts] == [("earlier data", 6), ("labelled steps", 2)]
    uncond = 0
    for k in range(30):
        b = src.batch(k)
        assert b["img"].shape[:2] == (8, 16) and b["goal"].shape == (8, 16, D)
        acted = [_is_acted_goal_row(g) for g in b["goal"].numpy()]
        assert acted == [False] * 6 + [True] * 2  # exactly 2 of 8 sequences = 25 % of the frames, every batch
        labels = b["actions"]["action"].numpy()
        assert (labels[6:] == ONLINE_ACTION).all() and (labels[:6] != ONLINE_ACTION).all()
        uncond += int((b["goal"][:6].abs().sum(dim=(1, 2)) == 0).sum())
    assert 0 < uncond < 6 * 30  # the earlier data's p_uncond still zeroes some of its sequences
    assert torch.equal(src.batch(3)["goal"], src.batch(3)["goal"])  # stateless by index
    # another round re-seeds the earlier data without loading it again: other batches
    src2, _ = round_sources(cfg, round_train_config(cfg, run, 2, "w", D), run, EarlierData())
    assert not torch.equal(src2.batch(3)["goal"][:6], src.batch(3)["goal"][:6])
    assert split_counts(64, [0.5, 0.5]) == [32, 32] and split_counts(10, [0.25, 0.75]) == [3, 7]
    with pytest.raises(UserError, match="gets no sequence"):
        split_counts(8, [0.05, 0.95], ["the labelled steps"])
