"""Contrastive MineCLIP training on (clip, caption) pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aimc.data.store import EpisodeStore
from aimc.errors import UserError
from aimc.train.mineclip import ClipCaptionPairs, MineCLIPTrainConfig, contrastive_loss, text_retrieval_accuracy, train_mineclip

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
TINY = {"resolution": (32, 32), "base_image_resolution": 32, "vision_width": 32, "vision_layers": 1, "vision_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2,
        "pool_heads": 1, "pool_dim_head": 16}


def toy_store(root, episodes=2):
    """Episodes of 16-frame coloured blocks, each captioned with its colour (two phrasings)."""
    store = EpisodeStore(root)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        frames, anns = [], []
        for k, name in enumerate(rng.permutation(list(COLOURS) * 2)):
            block = np.empty((16, 32, 32, 3), np.uint8)
            block[:] = COLOURS[name]
            block += rng.integers(0, 20, block.shape, dtype=np.uint8)  # some noise
            frames.append(block)
            text = f"{name} screen" if k % 2 else f"everything turns {name}"
            anns.append({"start": 16 * k, "end": 16 * (k + 1), "text": text, "lang": "en", "event": name})
        frames = np.concatenate(frames)
        store.write_episode(f"toy-{e}", frames, {"action": np.zeros(len(frames), np.int64)}, {"fps": 10}, annotations=anns)
    return root


def test_contrastive_training_reduces_loss(tmp_path):
    toy_store(tmp_path / "store")
    cfg = MineCLIPTrainConfig(store=str(tmp_path / "store"), model=dict(TINY), embed_dim=16, steps=30, batch_size=8,
                              lr=3e-3, warmup_steps=3, jitter=0, log_every=1)
    losses = []
    path = train_mineclip(cfg, tmp_path / "run", on_step=lambda s, loss: losses.append(loss))
    assert path.is_file() and (tmp_path / "run" / "config.yaml").is_file()
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.2, losses
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 30 and lines[0]["step"] == 0
    from aimc.checkpoints.mineclip import load_mineclip

    model = load_mineclip(path)
    assert model.cfg.embed_dim == 16 and model.cfg.resolution == (32, 32)
    pairs = ClipCaptionPairs(tmp_path / "store")
    assert text_retrieval_accuracy(model, pairs, n=48) > 0.5  # chance: 1/3


def test_same_event_captions_are_positives():
    torch.manual_seed(0)
    from aimc.models.mineclip import MineCLIP

    cfg = MineCLIPTrainConfig(model=dict(TINY), embed_dim=16)
    model = MineCLIP(cfg.model_config())
    clips = torch.randint(0, 255, (4, 16, 3, 32, 32), dtype=torch.uint8)
    tokens = torch.randint(1, 1000, (4, 77))
    with torch.no_grad():
        logits = model.similarity(model.encode_video(clips), model.encode_text(tokens))  # (4, 4)
    # distinct groups: exactly CLIP's symmetric cross-entropy
    clip_loss = 0.5 * (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.t(), torch.arange(4)))
    assert float(contrastive_loss(model, clips, tokens, torch.arange(4)).detach()) == pytest.approx(float(clip_loss), rel=1e-5)
    # one group: the target is uniform over the batch
    uniform = -0.5 * (F.log_softmax(logits, 1).mean(1).mean() + F.log_softmax(logits.t(), 1).mean(1).mean())
    assert float(contrastive_loss(model, clips, tokens, torch.zeros(4, dtype=torch.long)).detach()) == pytest.approx(float(uniform), rel=1e-5)


def test_store_without_captions_is_explained(tmp_path):
    store = EpisodeStore(tmp_path / "s")
    store.write_episode("e", np.zeros((20, 32, 32, 3), np.uint8), {"action": np.zeros(20, np.int64)}, {"fps": 10})
    with pytest.raises(UserError, match="annotat"):
        ClipCaptionPairs(tmp_path / "s")
    with pytest.raises(ValueError, match="batch_size"):
        MineCLIPTrainConfig(batch_size=1)


def test_time_limit_fits_the_schedule_to_the_steps_that_fit(tmp_path, monkeypatch):
    """When the time limit ends training, the learning rate has still annealed to lr/10."""
    import aimc.train.mineclip as tm

    from types import SimpleNamespace

    clock = [0.0]

    def fake_time():
        clock[0] += 0.25  # every call of the training loop = a quarter of a second
        return clock[0]

    toy_store(tmp_path / "store")
    cfg = MineCLIPTrainConfig(store=str(tmp_path / "store"), model=dict(TINY), embed_dim=16, steps=10_000, batch_size=8,
                              lr=1e-3, warmup_steps=2, jitter=0, log_every=1, time_limit_s=30.0)
    monkeypatch.setattr(tm, "time", SimpleNamespace(time=fake_time))
    tm.train_mineclip(cfg, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 10 < len(lines) < 100  # stopped by the (fake) clock, far before 10,000 steps
    assert lines[-1]["lr"] == pytest.approx(1e-4, rel=0.05)
    assert lines[-1]["lr"] < lines[len(lines) // 2]["lr"] < lines[3]["lr"]
