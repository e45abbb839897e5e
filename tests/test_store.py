"""Episode store: round trip, compression quality, idempotence, verification, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from aimc.data.store import EpisodeStore, StoreError, VideoSettings
from aimc.errors import UserError


def smooth_frames(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Blocky panning 'world' frames: video-like content (random noise would not be)."""
    rng = np.random.default_rng(seed)
    world = np.repeat(np.repeat(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), 8, 0), 8, 1)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        y, x = (i * 2) % (128 - size), (i * 3) % (128 - size)
        out[i] = world[y : y + size, x : x + size]
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_round_trip_windows_across_chunks(tmp_path):
    frames = smooth_frames(50)
    store = EpisodeStore(tmp_path / "s", video=VideoSettings(chunk_frames=16))
    acts = {"action": np.arange(50) % 17, "camera": np.arange(100).reshape(50, 2)}
    store.write_episode("ep-a", frames, acts, {"source": "test", "fps": 10}, annotations=[{"start": 3, "end": 9, "text": "dig"}])
    ep = store.open("ep-a")
    assert ep.num_frames == 50 and ep.frame_shape == (32, 32, 3) and ep.fps == 10
    assert len(list((ep.path / "video").iterdir())) == 4
    for start, stop in [(0, 50), (15, 17), (16, 32), (20, 49), (49, 50), (7, 7)]:
        got = ep.frames(start, stop)
        assert got.shape == (stop - start, 32, 32, 3)
        if stop > start:
            assert psnr(got, frames[start:stop]) >= 40
    np.testing.assert_array_equal(ep.actions()["camera"], acts["camera"])
    assert ep.annotations() == [{"start": 3, "end": 9, "text": "dig", "lang": "en"}]
    assert ep.meta["source"] == "test" and ep.meta["format_version"] == 1
    assert ep.embeddings() is None
    assert store.episode_ids() == ["ep-a"]
    with pytest.raises(IndexError):
        ep.frames(10, 51)


def test_lossless_setting_is_exact(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    store = EpisodeStore(tmp_path, video=VideoSettings(crf=0))
    store.write_episode("x", frames, {"action": np.zeros(5, np.int64)}, {})
    np.testing.assert_array_equal(store.open("x").frames(), frames)


def test_embeddings_and_idempotent_write(tmp_path):
    store = EpisodeStore(tmp_path)
    frames = smooth_frames(20)
    emb = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    valid = np.arange(20) >= 15
    p = store.write_episode("e", frames, {"action": np.zeros(20, np.int64)}, {}, embeddings=emb, embed_valid=valid)
    mtime = (p / "meta.json").stat().st_mtime_ns
    store.write_episode("e", frames, {"action": np.zeros(20, np.int64)}, {}, embeddings=emb, embed_valid=valid)
    assert (p / "meta.json").stat().st_mtime_ns == mtime  # same data: nothing rewritten
    e, v = store.open("e").embeddings()
    np.testing.assert_array_equal(v, valid)
    np.testing.assert_allclose(np.asarray(e[15:], np.float32), emb[15:], atol=2e-3)
    assert not np.asarray(e[:15]).any()
    store.set_embeddings("e", emb * 2, np.ones(20, bool), {"model": "m"})
    ep = store.open("e")
    assert ep.meta["embeddings"]["model"] == "m" and ep.verify(deep=True) == []
    np.testing.assert_allclose(ep.embedding_rows(np.array([0, 19])), emb[[0, 19]] * 2, atol=4e-3)
    # different data under the same id replaces the episode
    store.write_episode("e", frames[:10], {"action": np.ones(10, np.int64)}, {})
    assert store.open("e").num_frames == 10 and store.open("e").embeddings() is None


def test_verify_finds_damage_and_bad_input_is_reported(tmp_path):
    store = EpisodeStore(tmp_path, video=VideoSettings(chunk_frames=8))
    store.write_episode("e", smooth_frames(20), {"action": np.zeros(20, np.int64)}, {})
    chunk = tmp_path / "e" / "video" / "000008.mp4"
    chunk.write_bytes(chunk.read_bytes()[:100])
    problems = store.open("e").verify()
    assert problems and "000008.mp4" in problems[0]
    assert not store.has_episode("e")
    with pytest.raises(UserError, match="rows"):
        store.write_episode("f", smooth_frames(4), {"action": np.zeros(3)}, {})
    with pytest.raises(UserError, match="invalid episode id"):
        store.write_episode("../x", smooth_frames(4), {"action": np.zeros(4)}, {})
    with pytest.raises(StoreError, match="no complete episode"):
        store.open("nope")


_WRITER = """
import sys, numpy as np
from aimc.data.store import EpisodeStore, VideoSettings
frames = np.random.default_rng(0).integers(0, 256, (4000, 32, 32, 3), dtype=np.uint8)
EpisodeStore(sys.argv[1], video=VideoSettings(chunk_frames=64)).write_episode("big", frames, {"action": np.zeros(4000, np.int64)}, {})
"""


def test_sigkill_mid_write_leaves_no_episode_and_resume_works(tmp_path):
    root = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)])
    try:
        deadline = time.time() + 60
        # wait until the writer is inside the temporary episode directory
        while time.time() < deadline:
            tmps = [p for p in root.glob(".tmp-big.*") if (p / "video").is_dir() and any((p / "video").iterdir())]
            if tmps:
                break
            assert proc.poll() is None, "writer finished before it could be interrupted"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = EpisodeStore(root)
    assert store.episode_ids() == [] and "big" not in store
    assert store.clean_tmp() >= 1
    assert not list(root.glob(".tmp-*"))
    store.write_episode("big", smooth_frames(10), {"action": np.zeros(10, np.int64)}, {})
    assert store.has_episode("big")
    meta = json.loads((root / "big" / "meta.json").read_text())
    assert meta["num_frames"] == 10
