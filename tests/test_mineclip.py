"""MineCLIP model, fast episode embedding and attn.pth checkpoints on a tiny random model."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from aimc.checkpoints.mineclip import (
    CheckpointMismatchError,
    alias_map,
    load_mineclip,
    official_to_state_dict,
    save_mineclip,
)
from aimc.errors import UserError
from aimc.models.mineclip import (
    MineCLIP,
    MineCLIPConfig,
    embed_episode,
    embed_episode_naive,
    preprocess_frames,
)


def tiny_config(**kw) -> MineCLIPConfig:
    base = dict(resolution=(16, 24), patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                base_image_resolution=16, embed_dim=16, text_width=8, text_layers=1, text_heads=2,
                vocab_size=49408, pool_heads=2, pool_dim_head=8)
    base.update(kw)
    return MineCLIPConfig(**base)


@pytest.fixture(scope="module")
def model() -> MineCLIP:
    torch.manual_seed(3)
    m = MineCLIP(tiny_config()).eval()
    with torch.no_grad():  # non-trivial adapter mix so that reloading it is checked
        m.reward_head.video_residual_weight.fill_(0.3)
    return m


def _frames(n: int, cfg: MineCLIPConfig, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, *cfg.resolution), dtype=np.uint8)


def test_fast_path_equals_naive_path(model):
    frames = _frames(37, model.cfg)
    fast, valid = embed_episode(model, frames, batch_size=5)  # batch sizes that do not divide N
    naive, valid_naive = embed_episode_naive(model, frames, batch_size=3)
    assert fast.dtype == np.float32 and fast.shape == (37, model.cfg.embed_dim)
    assert valid.tolist() == valid_naive.tolist() == [t >= 15 for t in range(37)]
    assert np.abs(fast[:15]).max() == 0
    np.testing.assert_allclose(fast, naive, rtol=1e-5, atol=1e-5)
    # row t is the window ending at t
    with torch.no_grad():
        direct = model.encode_video(torch.from_numpy(frames[20 - 15 : 21])[None]).numpy()[0]
    np.testing.assert_allclose(fast[20], direct, rtol=1e-5, atol=1e-5)


def test_episode_shorter_than_a_window(model):
    emb, valid = embed_episode(model, _frames(10, model.cfg))
    assert emb.shape == (10, model.cfg.embed_dim) and not valid.any() and not emb.any()
    emb, valid = embed_episode(model, _frames(16, model.cfg))
    assert valid.tolist() == [False] * 15 + [True]


def test_embed_episode_accepts_torch_and_bf16(model):
    frames = torch.from_numpy(_frames(18, model.cfg))
    ref, _ = embed_episode(model, frames)
    low, valid = embed_episode(model, frames, amp_dtype="bf16")
    assert low.dtype == np.float32 and valid.sum() == 3
    assert np.abs(low[15:] - ref[15:]).max() < 0.1 * np.abs(ref[15:]).max()


def test_wrong_frame_size_is_explained(model):
    with pytest.raises(ValueError, match="preprocess_frames"):
        model.forward_image_features(torch.zeros(1, 3, 32, 32))


def test_preprocess_frames_resizes_and_moves_channels():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 36, 64, 3), dtype=np.uint8)
    out = preprocess_frames(frames, resolution=(16, 24))
    assert out.shape == (2, 3, 16, 24) and out.dtype == np.uint8
    same = preprocess_frames(rng.integers(0, 256, (1, 16, 24, 3), dtype=np.uint8), resolution=(16, 24))
    assert same.shape == (1, 3, 16, 24)
    with pytest.raises(UserError):
        preprocess_frames(frames.astype(np.float32), resolution=(16, 24))


def test_encode_text_strings_equal_token_rows(model):
    from aimc.models.tokenizer import ClipTokenizer

    texts = ["chop a tree", "go swimming"]
    with torch.no_grad():
        a = model.encode_text(texts)
        b = model.encode_text(ClipTokenizer().tokenize(texts))
        assert torch.equal(a, b)
        logits = model.similarity(torch.randn(3, model.cfg.embed_dim), a)
    assert logits.shape == (3, 2)


def test_text_is_causal_and_read_at_eot(model):
    from aimc.models.tokenizer import ClipTokenizer

    ids = ClipTokenizer().tokenize(["dig a hole"])
    eot = int(ids.argmax())
    changed = ids.clone()
    changed[0, eot + 1 :] = 7  # tokens after EOT (below 49407) must not matter
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids), model.encode_text(changed), atol=1e-6)


def test_no_network_while_embedding(monkeypatch, model):
    from aimc.models import tokenizer

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    tokenizer.build_fast_tokenizer.cache_clear()
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with torch.no_grad():
        text = model.encode_text(["find a cave"])
    emb, _ = embed_episode(model, _frames(17, model.cfg))
    assert text.shape == (1, model.cfg.embed_dim) and emb.shape == (17, model.cfg.embed_dim)


def test_aliases_share_modules(model):
    assert model.image_encoder is model.clip_model.vision_model
    assert model.reward_head.clip_model is model.clip_model
    aliases = alias_map(model)
    assert aliases["clip_model.vision_model.conv1.weight"] == "image_encoder.conv1.weight"
    assert aliases["clip_model.logit_scale"] == "reward_head.clip_model.logit_scale"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_load_roundtrip(tmp_path, model, suffix):
    path = save_mineclip(model, tmp_path / f"m{suffix}")
    loaded = load_mineclip(path, model.cfg if suffix == ".pth" else None)
    assert loaded.cfg == model.cfg
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert loaded.image_encoder is loaded.clip_model.vision_model
    frames = torch.from_numpy(_frames(16, model.cfg))[None]
    with torch.no_grad():
        assert torch.equal(model.encode_video(frames), loaded.encode_video(frames))


def test_official_format_layout(tmp_path, model):
    path = save_mineclip(model, tmp_path / "attn.pth")
    ckpt = torch.load(path, weights_only=True)
    sd = ckpt["state_dict"]
    assert list(sd) == ["model." + k for k in model.state_dict()]
    # shared tensors are stored once
    assert sd["model.image_encoder.conv1.weight"].data_ptr() == sd["model.clip_model.vision_model.conv1.weight"].data_ptr()
    # keys without the model. prefix (e.g. a framework's extras) are ignored on load
    sd["loss_fn.weight"] = torch.zeros(1)
    assert set(official_to_state_dict({"state_dict": sd})) == set(model.state_dict())


def test_strict_load_names_missing_and_unexpected(tmp_path, model):
    sd = {"model." + k: v for k, v in model.state_dict().items()}
    del sd["model.temporal_encoder.attn.model.norm.weight"]
    sd["model.extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        load_mineclip(tmp_path / "bad.pth", model.cfg)
    msg = str(e.value)
    assert "temporal_encoder.attn.model.norm.weight" in msg and "extra.weight" in msg and "bad.pth" in msg


def test_wrong_shape_and_non_checkpoint(tmp_path, model):
    save_mineclip(model, tmp_path / "m.pth")
    with pytest.raises(CheckpointMismatchError, match="shape"):
        load_mineclip(tmp_path / "m.pth", tiny_config(embed_dim=8))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="model."):
        load_mineclip(tmp_path / "other.pth", model.cfg)
    with pytest.raises(FileNotFoundError):
        load_mineclip(tmp_path / "missing.pth")


def test_new_model_resizes_base_position_grid():
    torch.manual_seed(0)
    cfg = tiny_config(resolution=(16, 32), base_image_resolution=16)  # base grid 2x2 -> 2x4
    m = MineCLIP(cfg)
    assert m.image_encoder.pos_embed.shape == (1 + 2 * 4, cfg.vision_width)


def test_config_validation_and_original_names():
    with pytest.raises(ValueError, match="patch_size"):
        tiny_config(resolution=(17, 24))
    with pytest.raises(ValueError, match="pool_type"):
        MineCLIPConfig.from_original({"pool_type": "avg", "mlp_adapter_spec": "v0-2.t0"})
    with pytest.raises(ValueError, match="image adapters"):
        MineCLIPConfig.from_original({"pool_type": "attn.d2.nh8.glusw", "mlp_adapter_spec": "v2-2.t0"})
    cfg = MineCLIPConfig.from_original(
        {"pool_type": "attn.d3.nh4.glusw", "mlp_adapter_spec": "v0-1.t2", "resolution": [32, 64]},
        {"vision_patch_size": 16})
    assert (cfg.pool_depth, cfg.pool_heads, cfg.video_adapter_layers, cfg.text_adapter_layers) == (3, 4, 1, 2)
    m = MineCLIP(tiny_config(video_adapter_layers=3, text_adapter_layers=1))
    keys = set(m.state_dict())
    assert {"reward_head.video_adapter.6.weight", "reward_head.text_adapter.0.weight",
            "reward_head.text_residual_weight"} <= keys


def test_cli_embed_text_and_inspect(tmp_path, model, capsys):
    from aimc.checkpoints.prior import save_prior
    from aimc.cli import main
    from aimc.models.prior import PriorConfig, PriorCVAE

    save_mineclip(model, tmp_path / "m.safetensors")
    prior = PriorCVAE(PriorConfig(input_dim=model.cfg.embed_dim, hidden_dim=8, latent_dim=4))
    save_prior(prior, tmp_path / "prior.pt")
    assert main(["mineclip", "embed-text", "--weights", str(tmp_path / "m.safetensors"), "dig", "swim",
                 "--out", str(tmp_path / "t.npy")]) == 0
    with torch.no_grad():
        expected = model.encode_text(["dig", "swim"]).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), expected, rtol=1e-6, atol=1e-6)
    assert main(["mineclip", "embed-text", "--weights", str(tmp_path / "m.safetensors"), "--prior",
                 str(tmp_path / "prior.pt"), "--deterministic", "dig", "--out", str(tmp_path / "g.npy")]) == 0
    with torch.no_grad():
        goal = prior.eval()(torch.from_numpy(expected[:1]), deterministic=True).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"), goal, rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    save_mineclip(model, tmp_path / "attn.pth")
    assert main(["mineclip", "inspect", str(tmp_path / "attn.pth")]) == 0
    info = __import__("json").loads(capsys.readouterr().out)
    assert info["format"] == "MineCLIP attn.pth" and info["keys"] == len(model.state_dict())
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
