"""`aimc data embed`: segmented embedding equals one pass, resume skips embedded episodes, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aimc.checkpoints.mineclip import save_mineclip
from aimc.cli import main as cli_main
from aimc.data.embed import embed_frames, embed_store, model_fingerprint
from aimc.data.store import EpisodeStore, VideoSettings
from aimc.errors import UserError
from aimc.models.mineclip import MineCLIP, MineCLIPConfig, embed_episode, preprocess_frames


def tiny_mineclip() -> MineCLIP:
    cfg = MineCLIPConfig(resolution=(32, 48), patch_size=16, vision_width=32, vision_layers=1, vision_heads=2,
                         base_image_resolution=32, embed_dim=16, text_width=16, text_layers=1, text_heads=2,
                         vocab_size=49408, pool_depth=1, pool_heads=2, pool_dim_head=8, video_adapter_layers=1)
    torch.manual_seed(0)
    return MineCLIP(cfg).eval()


def test_segments_match_one_pass():
    model = tiny_mineclip()
    frames = np.random.default_rng(0).integers(0, 256, (50, 24, 24, 3), dtype=np.uint8)
    emb, valid = embed_frames(model, frames, batch_size=8, segment=20)
    ref, ref_valid = embed_episode(model, preprocess_frames(frames, (32, 48)), batch_size=8)
    np.testing.assert_array_equal(valid, ref_valid)
    assert not valid[:15].any() and valid[15:].all()
    np.testing.assert_allclose(emb, ref, atol=1e-5)


def test_embed_store_resumes_and_cli(tmp_path, capsys):
    store = EpisodeStore(tmp_path / "s", video=VideoSettings(crf=0))
    rng = np.random.default_rng(1)
    for i, n in enumerate([20, 18]):
        store.write_episode(f"e{i}", rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), {"action": np.zeros(n, np.int64)}, {})
    model = tiny_mineclip()
    res = embed_store(store, model, episode_ids=["e0"], batch_size=8, progress=False)
    assert res["embedded"] == 1
    ep = store.open("e0")
    emb, valid = ep.embeddings()
    assert emb.shape == (20, 16) and valid[15:].all() and ep.meta["embeddings"]["model"] == "mineclip"
    ref, _ = embed_frames(model, ep.frames(), batch_size=8)
    np.testing.assert_allclose(np.asarray(emb[15:], np.float32), ref[15:], atol=2e-3)  # stored as float16
    weights = save_mineclip(model, tmp_path / "mc.safetensors")
    rc = cli_main(["data", "embed", str(store.root), "--mineclip", str(weights), "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "embedded 1 episode(s)" in out and "skipped 1 already embedded" in out
    assert store.open("e1").has_embeddings


def test_contractor_conversion_embeds_full_resolution_frames(tmp_path):
    from test_converters import make_recording

    from aimc.actions.contractor import load_contractor_episode
    from aimc.data.converters.base import run_jobs
    from aimc.data.converters.contractor import convert_recording, find_recordings

    model = tiny_mineclip()
    weights = save_mineclip(model, tmp_path / "mc.safetensors")
    make_recording(tmp_path / "rec", "r0", n=28, seed=7)
    jobs, _ = find_recordings(tmp_path / "rec")
    for j in jobs:
        j.options.update(mineclip=str(weights), batch_size=8)
    store = EpisodeStore(tmp_path / "s")
    assert run_jobs(jobs, convert_recording, store, workers=1, progress=False).converted == 1
    ep = store.open("r0")
    emb, valid = ep.embeddings()
    src = load_contractor_episode(tmp_path / "rec" / "r0.mp4", tmp_path / "rec" / "r0.jsonl", mineclip_size=(32, 48))
    ref, ref_valid = embed_episode(model, src.frames_mineclip, batch_size=8)
    np.testing.assert_array_equal(valid, ref_valid)
    np.testing.assert_allclose(np.asarray(emb, np.float32), ref, atol=3e-3)
    assert ep.meta["embeddings"]["from"] == "source frames"


def test_embeddings_from_another_model_are_not_mixed(tmp_path):
    store = EpisodeStore(tmp_path / "s", video=VideoSettings(crf=0))
    rng = np.random.default_rng(2)
    for i in range(2):
        store.write_episode(f"e{i}", rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8), {"action": np.zeros(20, np.int64)}, {})
    a = tiny_mineclip()
    embed_store(store, a, episode_ids=["e0"], batch_size=8, progress=False)
    assert store.open("e0").meta["embeddings"]["model_sha256"] == model_fingerprint(a)
    torch.manual_seed(123)
    b = type(a)(a.cfg)  # same architecture, other weights
    with pytest.raises(UserError, match="another MineCLIP.*--force"):
        embed_store(store, b, batch_size=8, progress=False)
    assert not store.open("e1").has_embeddings  # refused before writing anything
    before = np.asarray(store.open("e0").embeddings()[0]).copy()
    res = embed_store(store, b, batch_size=8, progress=False, force=True)
    assert res["embedded"] == 2 and store.open("e0").meta["embeddings"]["model_sha256"] == model_fingerprint(b)
    assert not np.array_equal(before, np.asarray(store.open("e0").embeddings()[0]))
    assert embed_store(store, b, batch_size=8, progress=False)["skipped"] == 2  # same model: resumes
