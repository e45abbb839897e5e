"""MineCLIP, its tokenizer, frame preprocessing and the STEVE-1 prior against the original's goldens.

A case is any folder below the conformance root holding ``tiny_attn.pth``; every size, seed,
text and config comes from that folder's files (see its README). Floats must agree to 1e-4
relative to each array's scale, which a 1 % error fails (checked by ``assert_close`` itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import case_params, require_case

from aimc.checkpoints.mineclip import load_mineclip
from aimc.checkpoints.prior import load_prior
from aimc.models.mineclip import (
    MineCLIP,
    MineCLIPConfig,
    count_parameters,
    embed_episode,
    embed_episode_naive,
    normalize_pixels,
    preprocess_frames,
)
from aimc.models.prior import PriorConfig, PriorCVAE
from aimc.models.tokenizer import ClipTokenizer

MARKER = "tiny_attn.pth"
CASES = case_params(MARKER)
RTOL = 1e-4


def assert_close(actual, expected, name: str) -> None:
    """|actual - expected| <= 1e-4 * (|expected| + max|expected|); a 1 % error must fail this check."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.abs(expected).max()), 1e-12)
    tol = RTOL * (np.abs(expected) + scale)
    assert not np.all(np.abs(expected * 1.01 - expected) <= tol), f"{name}: tolerance too loose to catch a 1% error"
    err = np.abs(actual - expected)
    assert np.all(err <= tol), f"{name}: max abs error {err.max():.3g} (scale {scale:.3g})"


def _tiny(case: Path):
    cfg_json = json.loads((case / "tiny_config.json").read_text())
    cfg = MineCLIPConfig.from_original(
        cfg_json["mineclip_constructor_kwargs"], cfg_json["clip_config"], cfg_json["video_seq_len"]
    )
    return cfg_json, cfg, load_mineclip(case / MARKER, cfg)


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


@pytest.mark.parametrize("case", CASES)
def test_conformance_tiny_config_and_checkpoint(case):
    case = require_case(case, MARKER)
    cfg_json, cfg, model = _tiny(case)
    derived = cfg_json["derived"]
    assert cfg.vision_heads == derived["vision_heads"]
    assert list(cfg.grid) == derived["vision_grid"]
    assert model.image_encoder.pos_embed.shape[0] == derived["vision_tokens"]
    assert (cfg.pool_depth, cfg.pool_heads, cfg.pool_dim_head) == (
        derived["temporal_depth"], derived["temporal_heads"], derived["temporal_dim_head"])
    ck = cfg_json["checkpoint"]
    sd = model.state_dict()
    assert len(sd) == ck["state_dict_entries"]
    assert len({v.data_ptr() for v in sd.values()}) == ck["unique_tensors"]
    assert count_parameters(model) == ck["unique_parameters"]
    assert model.image_encoder is model.clip_model.vision_model
    assert model.reward_head.clip_model is model.clip_model


@pytest.mark.parametrize("case", CASES)
def test_conformance_io_tiny(case):
    case = require_case(case, MARKER)
    _, _, model = _tiny(case)
    io = np.load(case / "io_tiny.npz")
    videos = torch.from_numpy(io["videos_uint8"])  # (B, L, 3, H, W)
    with torch.no_grad():
        assert_close(normalize_pixels(videos[0]), io["video0_preprocessed"], "video0_preprocessed")
        image = model.forward_image_features(videos)  # (B, L, D)
        assert_close(image, io["image_features"], "image_features")
        video = model.forward_video_features(image)  # (B, D)
        assert_close(video, io["video_features"], "video_features")
        assert_close(model.encode_video(videos.float()), io["video_features"], "encode_video(float input)")
        assert_close(model.reward_head.adapt_video(video), io["video_features_adapted"], "video_features_adapted")
        ids = torch.from_numpy(io["text_token_ids"])
        np.testing.assert_array_equal(ids.argmax(-1).numpy(), io["text_eot_index"])
        text = model.encode_text(ids)  # (T, D)
        assert_close(text, io["text_features"], "text_features")
        per_video, per_text = model.forward_reward_head(video, text)
        assert_close(per_video, io["logits_per_video"], "logits_per_video")
        assert_close(per_text, io["logits_per_text"], "logits_per_text")
        assert_close(model.similarity(video, text), io["logits_per_video"], "similarity")
        assert_close(model.clip_model.logit_scale.exp(), io["logit_scale_exp"], "logit_scale_exp")
        assert_close(torch.sigmoid(model.reward_head.video_residual_weight), io["video_residual_sigmoid"], "video_residual_sigmoid")


@pytest.mark.parametrize("case", CASES)
def test_conformance_episode_embeds(case):
    case = require_case(case, MARKER)
    cfg_json, _, model = _tiny(case)
    io = np.load(case / "io_tiny.npz")
    ep = cfg_json["episode"]
    frames = io["episode_frames_uint8"]  # (N, 3, H, W)
    assert len(frames) == ep["n_frames"]
    steps = io["episode_embed_timesteps"]
    for name, fn in (("fast", embed_episode), ("naive", embed_episode_naive)):
        emb, valid = fn(model, frames, batch_size=ep["embed_batch_size"])
        assert valid.tolist() == [t >= ep["none_prefix"] for t in range(len(frames))], name
        assert steps[0] == ep["first_embed_timestep"] and valid[steps].all()
        assert_close(emb[steps], io["episode_embeds"], f"episode_embeds ({name})")


@pytest.mark.parametrize("case", CASES)
def test_conformance_texts_tiny(case, tokenizer):
    case = require_case(case, MARKER)
    texts = json.loads((case / "texts_tiny.json").read_text())
    cfg_json = json.loads((case / "tiny_config.json").read_text())
    assert texts["texts"] == cfg_json["texts"]
    ids = tokenizer.tokenize(texts["texts"])
    assert ids.dtype == torch.int64
    np.testing.assert_array_equal(ids.numpy(), np.asarray(texts["token_ids_77"]))
    np.testing.assert_array_equal(ids.numpy(), np.load(case / "io_tiny.npz")["text_token_ids"])


@pytest.mark.parametrize("case", CASES)
def test_conformance_tokenizer_cases(case, tokenizer):
    case = require_case(case, MARKER)
    spec = json.loads((case / "tokenizer_cases.json").read_text())
    special = spec["special_ids"]
    from aimc.models import tokenizer as tok_mod

    assert (tok_mod.SOT_ID, tok_mod.EOT_ID, tok_mod.PAD_ID, tok_mod.CONTEXT_LENGTH, tok_mod.VOCAB_SIZE) == (
        special["sot_bos"], special["eot_eos"], special["pad"], special["context_length"], special["vocab_size"])
    assert tok_mod.BPE_SHA256 == spec["route"]["bpe_sha256"]
    texts = [c["text"] for c in spec["cases"]]
    rows = tokenizer.tokenize(texts)
    assert rows.shape == (len(texts), special["context_length"]) and rows.dtype == torch.int64
    for c, row in zip(spec["cases"], rows.tolist()):
        assert tokenizer.encode(c["text"]) == c["bpe_ids"], c["text"]
        assert row == c["ids_77"], c["text"]
    for c in spec["edge_cases_hf_fast_vs_openai_simple"]:
        assert tokenizer.encode(c["text"]) == c["mineclip_hf_fast_bpe_ids"], c["text"]


@pytest.mark.parametrize("case", CASES)
def test_conformance_vocabulary_files(case):
    """The derived vocab.json / merges.txt are byte-identical to the route's (sha256 recorded)."""
    import hashlib

    from aimc.models.tokenizer import load_vocab_and_merges

    case = require_case(case, MARKER)
    route = json.loads((case / "tokenizer_cases.json").read_text())["route"]
    vocab, merges = load_vocab_and_merges()
    vocab_json = json.dumps(vocab, ensure_ascii=False).encode("utf-8")
    merges_txt = ("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n").encode("utf-8")
    assert hashlib.sha256(vocab_json).hexdigest() == route["derived_vocab_json_sha256"]
    assert hashlib.sha256(merges_txt).hexdigest() == route["derived_merges_txt_sha256"]


@pytest.mark.parametrize("case", CASES)
def test_conformance_preprocess(case):
    case = require_case(case, MARKER)
    io = np.load(case / "io_preprocess.npz")
    out = preprocess_frames(io["raw_frame_rgb_hwc"][None])  # OpenCV INTER_LINEAR: exact
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], io["mineclip_frame_chw"])
    np.testing.assert_array_equal(preprocess_frames(io["passthrough_frame_rgb_hwc"][None])[0], io["passthrough_frame_chw"])


@pytest.mark.parametrize("case", CASES)
def test_conformance_keys_attn(case):
    """The real configuration has exactly attn.pth's keys, shapes, aliases and parameter counts."""
    case = require_case(case, MARKER)
    spec = json.loads((case / "keys_attn.json").read_text())
    cfg = MineCLIPConfig.from_original(spec["mineclip_constructor_kwargs"], spec["hardcoded_clip_config"],
                                       spec["derived"]["video_seq_len_max"])
    assert cfg == MineCLIPConfig.official()
    with torch.device("meta"):
        model = MineCLIP(cfg)
    sd = model.state_dict(prefix="model.", keep_vars=True)
    entries = spec["entries"]
    assert list(sd) == [e["key"] for e in entries]
    for e in entries:
        assert list(sd[e["key"]].shape) == e["shape"], e["key"]
        assert str(sd[e["key"]].dtype).removeprefix("torch.") == e["dtype"], e["key"]
        if e["same_tensor_as"] is not None:
            assert sd[e["key"]] is sd[e["same_tensor_as"]], e["key"]
    counts = spec["param_counts"]
    assert len(sd) == counts["state_dict_entries"]
    assert len({id(v) for v in sd.values()}) == counts["state_dict_unique_tensors"]
    assert count_parameters(model) == counts["unique_parameters_total"]
    assert count_parameters(model.image_encoder) == counts["vision_encoder"]
    assert count_parameters(model.clip_model.text_model) == counts["text_encoder"]
    assert count_parameters(model.temporal_encoder) == counts["temporal_encoder"]
    head = sum(p.numel() for n, p in model.reward_head.named_parameters() if not n.startswith("clip_model."))
    assert head == counts["reward_head_excluding_shared_clip"]
    assert sum(b.numel() for b in model.buffers()) == counts["buffers_total"]


@pytest.mark.parametrize("case", CASES)
def test_conformance_keys_prior(case):
    case = require_case(case, MARKER)
    spec = json.loads((case / "keys_prior.json").read_text())
    cfg = PriorConfig(**spec["constructor"])
    assert cfg == PriorConfig.official()
    with torch.device("meta"):
        prior = PriorCVAE(cfg)
    sd = prior.state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(e["key"], e["shape"]) for e in spec["entries"]]
    assert sum(p.numel() for p in prior.parameters()) == spec["param_count"]


@pytest.mark.parametrize("case", CASES)
def test_conformance_prior(case):
    case = require_case(case, MARKER)
    spec = json.loads((case / "prior_config.json").read_text())
    prior = load_prior(case / spec["file"], PriorConfig(**spec["constructor"]))
    assert sum(p.numel() for p in prior.parameters()) == spec["param_count"]
    assert load_prior(case / spec["file"]).cfg == prior.cfg  # sizes inferred from the tensors
    io = np.load(case / "io_prior.npz")
    text = torch.from_numpy(io["text_embeddings"])
    visual = torch.from_numpy(io["visual_embeddings"])
    with torch.no_grad():
        assert_close(prior(text, deterministic=True), io["deterministic_out"], "deterministic_out")
        assert_close(prior.decode(torch.zeros(len(text), prior.cfg.latent_dim), text), io["decode_zero_latent"], "decode_zero_latent")
        for i, seed in enumerate(io["sample_torch_seeds"]):
            torch.manual_seed(int(seed))
            eps = torch.randn(len(text), prior.cfg.latent_dim)
            np.testing.assert_array_equal(eps.numpy(), io["sample_eps"][i])
            assert_close(prior(text, eps=eps), io["sample_out"][i], f"sample_out[{i}] (given eps)")
            torch.manual_seed(int(seed))
            assert_close(prior(text), io["sample_out"][i], f"sample_out[{i}] (global RNG)")
        enc = prior.encoder(torch.cat([visual, text], dim=-1))
        assert_close(enc, io["train_encoder_out"], "train_encoder_out")
        mu, logvar = prior.encode(visual, text)
        assert_close(mu, io["train_mu"], "train_mu")
        assert_close(logvar, io["train_logvar"], "train_logvar")
        eps = torch.from_numpy(io["train_eps"])
        z = mu + eps * torch.exp(0.5 * logvar)
        assert_close(z, io["train_z"], "train_z")
        assert_close(prior.decode(z, text), io["train_recon"], "train_recon")
        loss, parts = prior.loss(visual, text, beta=float(io["train_beta"]), eps=eps)
        assert_close(parts["kl"], io["train_kl_loss"], "train_kl_loss")
        assert_close(parts["recon"], io["train_recon_loss"], "train_recon_loss")
        assert_close(loss, io["train_loss"], "train_loss")
