"""Splits: frame budgets by whole episodes, seeded, readable YAML; loader reads a split."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from aimc.data.split import SPLIT_FILE, load_split, make_split
from aimc.data.store import EpisodeStore, VideoSettings
from aimc.errors import UserError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = EpisodeStore(tmp_path_factory.mktemp("split") / "s", video=VideoSettings(crf=0))
    frames = np.zeros((40, 8, 8, 3), np.uint8)
    for i, n in enumerate([10, 20, 30, 40, 15, 25]):
        s.write_episode(f"e{i}", frames[:n], {"action": np.zeros(n, np.int64)}, {})
    return s


def test_budgets_and_determinism(store):
    doc = make_split(store, val_frames=30, seed=3, command="aimc data split s --val-frames 30 --seed 3")
    lengths = {f"e{i}": n for i, n in enumerate([10, 20, 30, 40, 15, 25])}
    val, train = doc["splits"]["val"], doc["splits"]["train"]
    assert set(val) | set(train) == set(lengths) and not set(val) & set(train)
    assert doc["frames"]["val"] == sum(lengths[e] for e in val) >= 30
    # val stops at the first episode that reaches the budget
    assert doc["frames"]["val"] - max(lengths[e] for e in val) < 30
    text = (store.root / SPLIT_FILE).read_text()
    assert text.startswith("# aimc data split s --val-frames 30 --seed 3\n")
    assert yaml.safe_load(text)["splits"]["val"] == val
    assert load_split(store, "val") == val and load_split(store, "all") == store.episode_ids()
    assert make_split(store, val_frames=30, seed=3)["splits"] == doc["splits"]
    others = [make_split(store, val_frames=30, seed=s)["splits"]["val"] for s in range(4, 10)]
    assert any(o != val for o in others)


def test_train_cap_fraction_and_errors(store):
    doc = make_split(store, val_fraction=0.25, train_frames=50, seed=0)
    assert doc["frames"]["val"] >= 0.25 * 140 and 50 <= doc["frames"]["train"] < 50 + 40
    with pytest.raises(UserError, match="not both"):
        make_split(store, val_frames=10, val_fraction=0.1)
    with pytest.raises(UserError, match="no split"):
        load_split(store, "test")
    with pytest.raises(UserError, match="no episode for train"):
        make_split(store, val_frames=10_000)
