"""`aimc data check` / `stats` logic: what is reported as a problem, and the numbers."""

from __future__ import annotations

import numpy as np

from aimc.data.check import check_store, store_stats
from aimc.data.split import make_split
from aimc.data.store import EpisodeStore, VideoSettings


def test_check_reports_each_kind_of_problem(tmp_path):
    store = EpisodeStore(tmp_path / "s", video=VideoSettings(crf=0))
    frames = np.zeros((30, 8, 8, 3), np.uint8)
    valid = np.arange(30) >= 15
    emb = np.ones((30, 4), np.float32)
    store.write_episode("good", frames, {"action": np.zeros(30, np.int64)}, {}, embeddings=emb, embed_valid=valid)
    hole = valid.copy()
    hole[20] = False
    store.write_episode("hole", frames, {"action": np.zeros(30, np.int64)}, {}, embeddings=emb, embed_valid=hole)
    store.write_episode("short", frames[:10], {"action": np.zeros(10, np.int64)}, {})
    make_split(store, val_frames=1, seed=0)
    assert check_store(store) == {"hole": ["1 frames after the first 15 have no valid embedding"]}
    bad = check_store(store, min_frames=20, require_embeddings=True)
    assert set(bad) == {"hole", "short"} and any("no embeddings" in p for p in bad["short"]) and "only 10 frames (< 20)" in bad["short"]
    store.delete_episode("good")
    (store.root / ".tmp-x.123").mkdir()
    bad = check_store(store)
    assert any("leftover" in p for p in bad["(store)"]) and any("missing episode" in p for p in bad["(store)"])

    stats = store_stats(store)
    assert stats["episodes"] == 2 and stats["frames"] == 40 and stats["embedded_episodes"] == 1
    assert stats["episode_frames"] == {"min": 10, "median": 20.0, "max": 30}
    assert stats["most_common_actions"] == ["action=0 (100.0%)"] and stats["bytes_per_frame"]["video"] > 0
