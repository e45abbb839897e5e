"""Loader: relabeling semantics (property tests), p_uncond rate, determinism, resume, sharding,
mixture weights, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aimc.data.loader import AugmentConfig, SequenceDataset, augment_sequence, make_loader
from aimc.data.mixture import recipe_finetune
from aimc.data.relabel import draw_goal_timesteps, goal_index_per_step, relabel_window
from aimc.data.store import EpisodeStore, VideoSettings
from aimc.errors import UserError


def make_store(root, n_episodes=3, length=120, ep_offset=0, size=8, embed=True):
    """Episodes whose pixels, actions and embeddings encode (episode, frame) exactly."""
    store = EpisodeStore(root, video=VideoSettings(crf=0, chunk_frames=32), embed_dtype="float32")
    for e in range(n_episodes):
        n = length + 7 * e
        idx = np.arange(n)
        frames = np.zeros((n, size, size, 3), np.uint8)
        frames[..., 0] = (idx % 256)[:, None, None]
        frames[..., 1] = (idx // 256)[:, None, None]
        frames[..., 2] = e + ep_offset
        emb = np.stack([np.full(n, e + ep_offset), idx, np.ones(n)], 1).astype(np.float32)
        valid = idx >= 15
        store.write_episode(
            f"ep{e + ep_offset}", frames, {"action": idx % 17, "env_x": idx.astype(np.float32)}, {"source": "test"},
            embeddings=emb if embed else None, embed_valid=valid if embed else None,
        )
    return store


@settings(max_examples=200, deadline=None, database=None)
@given(
    extra=st.integers(0, 3000), lo=st.integers(15, 60), span=st.integers(1, 200), seed=st.integers(0, 2**32 - 1), data=st.data()
)
def test_goal_always_in_future_window_of_same_episode(extra, lo, span, seed, data):
    hi = lo + span
    n = lo + 15 + extra  # the shortest episode the loader accepts
    start = data.draw(st.integers(15, n - 1))
    stop = data.draw(st.integers(start + 1, n))
    rng = np.random.default_rng(seed)
    idx, _ = relabel_window(rng, n, start, stop, lo, hi, 0.0)
    t = np.arange(start, stop)
    assert idx.shape == t.shape
    assert (idx >= t - 1).all()  # held until the step after the goal
    # within max_btwn_goals, except the final goal, moved to the last frame (up to lo - 2 further)
    assert (idx[idx < n - 1] - t[idx < n - 1] < hi).all() and (idx - t < hi + lo - 2).all()
    assert (idx >= lo).all() and (idx >= 15).all() and (idx <= n - 1).all()  # never the first 15
    assert (np.diff(idx) >= 0).all()
    # a goal changes only on the step after it was reached
    changes = np.nonzero(np.diff(idx))[0] + 1
    assert (t[changes] == idx[changes - 1] + 2).all()


@settings(max_examples=100, deadline=None, database=None)
@given(extra=st.integers(0, 2000), lo=st.integers(15, 40), span=st.integers(1, 100), seed=st.integers(0, 1000))
def test_truncated_goal_drawing_matches_full_drawing(extra, lo, span, seed):
    n = lo + 15 + extra
    full = draw_goal_timesteps(np.random.default_rng(seed), n, lo, lo + span)
    assert full[-1] == n - 1
    steps = np.diff(np.concatenate([[0], full]))
    assert ((steps[:-1] >= lo) & (steps[:-1] < lo + span)).all()  # U[lo, hi) draws
    assert lo - 1 <= steps[-1] < lo + span + lo - 2  # the last goal is moved to the final frame
    stop = n // 2 + 1
    part = draw_goal_timesteps(np.random.default_rng(seed), n, lo, lo + span, until=stop)
    np.testing.assert_array_equal(goal_index_per_step(part, 0, stop), goal_index_per_step(full, 0, stop))


def _reference_goals(rng_goals, n, lo, hi):
    """The original's loop, step by step, for comparison."""
    goals = []
    g = 0
    while g < n - 1:
        g += int(rng_goals.integers(lo, hi))
        if n - g < lo:
            g = n - 1
        goals.append(g)
    out, c = [], 0
    for t in range(n):
        out.append(goals[c])
        if t == goals[c] + 1:
            c += 1
    return np.array(out)


@pytest.mark.parametrize("seed", range(20))
def test_matches_original_loop(seed):
    n = 500
    ref = _reference_goals(np.random.default_rng(seed), n, 15, 60)
    ours = goal_index_per_step(draw_goal_timesteps(np.random.default_rng(seed), n, 15, 60), 0, n)
    np.testing.assert_array_equal(ours, ref)


def test_items_hold_their_window_and_goals(tmp_path):
    store = make_store(tmp_path / "s")
    ds = SequenceDataset([store.root], T=40, min_btwn_goals=15, max_btwn_goals=30, p_uncond=0.0, seed=3, num_items=30)
    assert ds.goal_dim == 3 and ds.action_keys == ["action"]
    for i in range(len(ds)):
        item = ds[i]
        img, goal, act, first = item["img"].numpy(), item["goal"].numpy(), item["actions"]["action"].numpy(), item["first"].numpy()
        assert img.shape == (40, 8, 8, 3) and img.dtype == np.uint8 and goal.dtype == np.float32
        t = img[:, 0, 0, 0].astype(int) + 256 * img[:, 0, 0, 1].astype(int)
        ep = img[0, 0, 0, 2]
        assert (np.diff(t) == 1).all() and t[0] >= 15 and (img[..., 2] == ep).all()
        np.testing.assert_array_equal(act, t % 17)
        assert (goal[:, 0] == ep).all()  # goals from the same episode
        last = 120 + 7 * ep - 1  # the episode's final frame: the last goal may sit up to 13 further
        assert (goal[:, 1] >= t - 1).all() and ((goal[:, 1] < t + 30) | ((goal[:, 1] == last) & (goal[:, 1] < t + 43))).all()
        assert first[0] and not first[1:].any()


def test_p_uncond_rate_and_determinism(tmp_path):
    store = make_store(tmp_path / "s", n_episodes=2, length=80)
    kw = dict(T=20, min_btwn_goals=15, max_btwn_goals=25, p_uncond=0.3, num_items=600)
    ds = SequenceDataset([store.root], seed=1, **kw)
    rates = []
    for i in range(len(ds)):
        s, p, start, rng = ds.locate(i)
        n = int(ds.sources[s].lengths[p])
        _idx, uncond = relabel_window(rng, n, start, start + 20, 15, 25, 0.3)
        rates.append(uncond)
    rate = float(np.mean(rates))
    assert abs(rate - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 600)
    # the items themselves: zeroed whole or not at all, at the same flags
    for i in range(0, 40):
        g = ds[i]["goal"].numpy()
        assert (g == 0).all() or (g[:, 2] == 1).all()
    a = [ds[i]["goal"] for i in range(10)]
    b = [SequenceDataset([store.root], seed=1, **kw)[i]["goal"] for i in range(10)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = [SequenceDataset([store.root], seed=2, **kw)[i]["img"] for i in range(10)]
    assert not all(torch.equal(ds[i]["img"], c[i]) for i in range(10))


def test_resume_and_sharding_and_worker_independence(tmp_path):
    store = make_store(tmp_path / "s", n_episodes=2, length=60)
    kw = dict(T=16, min_btwn_goals=15, max_btwn_goals=20, p_uncond=0.2, seed=5)
    full = SequenceDataset([store.root], num_items=12, **kw)
    resumed = SequenceDataset([store.root], num_items=4, start_item=8, **kw)
    for i in range(4):
        assert torch.equal(full[8 + i]["img"], resumed[i]["img"]) and torch.equal(full[8 + i]["goal"], resumed[i]["goal"])
    r1 = SequenceDataset([store.root], num_items=12, rank=1, world_size=2, **kw)
    assert not all(torch.equal(full[i]["img"], r1[i]["img"]) for i in range(12))
    b0 = [b for b in make_loader(full, batch_size=4, num_workers=0)]
    b2 = [b for b in make_loader(full, batch_size=4, num_workers=2)]
    assert len(b0) == 3 and b0[0]["img"].shape == (4, 16, 8, 8, 3) and b0[0]["actions"]["action"].dtype == torch.int64
    assert b0[0]["first"].shape == (4, 16) and b0[0]["goal"].shape == (4, 16, 3)
    for x, y in zip(b0, b2):
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["goal"], y["goal"])
    # the default collate (e.g. a plain DataLoader) gives the same batches
    plain = [b for b in torch.utils.data.DataLoader(full, batch_size=4)]
    for x, y in zip(b0, plain):
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["actions"]["action"], y["actions"]["action"])
        assert torch.equal(x["goal"], y["goal"]) and torch.equal(x["first"], y["first"])


def test_batch_is_decoded_in_place(tmp_path):
    from aimc.data.loader import collate_sequences

    store = make_store(tmp_path / "s", n_episodes=1, length=60)
    ds = SequenceDataset([store.root], T=16, min_btwn_goals=15, max_btwn_goals=20, num_items=6)
    items = ds.__getitems__([0, 1, 2])
    batch = collate_sequences(items)
    assert batch["img"].untyped_storage().data_ptr() == items[0]["img"].untyped_storage().data_ptr()  # no copy
    for j in range(3):
        assert torch.equal(batch["img"][j], ds[j]["img"])
    mixed = collate_sequences([ds[0], ds[1]])  # separate tensors: stacked
    assert torch.equal(mixed["img"], batch["img"][:2])


def test_episode_sharding_gives_ranks_disjoint_episodes(tmp_path):
    store = make_store(tmp_path / "s", n_episodes=4, length=60)
    kw = dict(T=16, min_btwn_goals=15, max_btwn_goals=20, num_items=40, shard="episodes", world_size=2)
    seen = []
    for r in range(2):
        ds = SequenceDataset([store.root], rank=r, **kw)
        seen.append({int(ds[i]["img"][0, 0, 0, 2]) for i in range(len(ds))})
    assert seen[0] and seen[1] and not seen[0] & seen[1] and seen[0] | seen[1] == {0, 1, 2, 3}


def test_pickles_without_open_episodes(tmp_path):
    import pickle

    store = make_store(tmp_path / "s", n_episodes=1, length=60)
    ds = SequenceDataset([f"{store.root}:all"], T=16, min_btwn_goals=15, max_btwn_goals=20, num_items=3)
    first = ds[0]
    assert ds._cache
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._cache and torch.equal(clone[0]["img"], first["img"])


def test_mixture_weights_respected(tmp_path):
    big = make_store(tmp_path / "big", n_episodes=3, length=200, ep_offset=0)
    small = make_store(tmp_path / "small", n_episodes=1, length=60, ep_offset=10)
    mix = recipe_finetune(str(big.root), str(small.root), original_share=0.8)
    ds = SequenceDataset(mix, T=20, min_btwn_goals=15, max_btwn_goals=25, num_items=2000, seed=0)
    src = np.array([ds.locate(i)[0] for i in range(len(ds))])
    assert abs((src == 0).mean() - 0.8) < 0.04
    ds2 = SequenceDataset([big.root, small.root], weights=[0.5, 0.5], T=20, min_btwn_goals=15, max_btwn_goals=25, num_items=2000)
    src2 = np.array([ds2.locate(i)[0] for i in range(len(ds2))])
    assert abs((src2 == 0).mean() - 0.5) < 0.04
    # without weights: proportional to usable frames
    ds3 = SequenceDataset([big.root, small.root], T=20, min_btwn_goals=15, max_btwn_goals=25, num_items=3000)
    src3 = np.array([ds3.locate(i)[0] for i in range(len(ds3))])
    usable = np.array([200 + 207 + 214 - 45, 60 - 15], float)
    assert abs((src3 == 0).mean() - usable[0] / usable.sum()) < 0.03


def test_chunk_windows_like_the_original(tmp_path):
    store = make_store(tmp_path / "s", n_episodes=1, length=100)
    ds = SequenceDataset([store.root], T=40, min_btwn_goals=15, max_btwn_goals=25, num_items=200, window="chunks")
    starts = {ds.locate(i)[2] for i in range(len(ds))}
    assert starts == {15, 55, 60}


def test_missing_embeddings_and_bad_settings_are_reported(tmp_path):
    store = make_store(tmp_path / "s", n_episodes=1, length=60, embed=False)
    with pytest.raises(UserError, match="aimc data embed"):
        SequenceDataset([store.root], T=20, min_btwn_goals=15, max_btwn_goals=25)
    ds = SequenceDataset([store.root], T=20, min_btwn_goals=15, max_btwn_goals=25, require_embeddings=False, goal_dim=4, num_items=2)
    assert ds[0]["goal"].shape == (20, 4) and not ds[0]["goal"].any()
    with pytest.raises(UserError, match=">= 15"):
        SequenceDataset([store.root], T=20, min_btwn_goals=10, max_btwn_goals=25)
    with pytest.raises(UserError, match="long enough"):
        SequenceDataset([store.root], T=60, min_btwn_goals=15, max_btwn_goals=25, require_embeddings=False)


def test_augmentation_is_consistent_over_time():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1, 6, 6, 3), dtype=np.uint8)
    seq = np.repeat(base, 5, 0)
    out = augment_sequence(seq, np.random.default_rng(1), AugmentConfig(enabled=True, grayscale_p=0.0))
    assert out.shape == seq.shape and out.dtype == np.uint8
    assert all((out[i] == out[0]).all() for i in range(5)) and not (out == seq).all()
    gray = augment_sequence(seq, np.random.default_rng(1), AugmentConfig(enabled=True, grayscale_p=1.0))
    assert (np.abs(gray.astype(int)[..., 0] - gray[..., 1]) <= 1).all()
    ident = augment_sequence(seq, np.random.default_rng(1), AugmentConfig(True, 0.0, 0.0, 0.0, 0.0, 0.0))
    assert (np.abs(ident.astype(int) - seq) <= 1).all()


def test_every_sequence_of_a_batch_is_augmented(tmp_path):
    """Batches are decoded in place into one buffer (``__getitems__``): the augmented frames must
    land there for every item, not only for the first one."""
    store = make_store(tmp_path / "s")
    gray = AugmentConfig(True, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=1.0)
    ds = SequenceDataset([store.root], T=20, min_btwn_goals=15, max_btwn_goals=25, num_items=8, augment=gray)
    for batch in make_loader(ds, batch_size=4, num_workers=0):
        img = batch["img"].int()  # (B, T, H, W, 3); unaugmented, channel 0 is the frame index, 2 the episode
        for b in range(img.shape[0]):
            assert (img[b, ..., 0] - img[b, ..., 2]).abs().max() <= 1, f"sequence {b} was not augmented"
