"""Prior CVAE, steve1_prior.pt checkpoints and the prior training loop on tiny sizes."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from aimc.checkpoints.prior import PriorCheckpointError, config_from_state_dict, load_prior, save_prior
from aimc.errors import UserError
from aimc.models.prior import PriorConfig, PriorCVAE
from aimc.train.prior import PriorTrainConfig, load_pairs, split_pairs, train_prior

CFG = PriorConfig(input_dim=8, hidden_dim=16, latent_dim=4)


def _pairs(n: int = 300, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(n, d)).astype(np.float32)
    visual = (np.tanh(text @ rng.normal(size=(d, d))) + 0.05 * rng.normal(size=(n, d))).astype(np.float32)
    return text, visual


def test_sampling_paths():
    torch.manual_seed(0)
    prior = PriorCVAE(CFG).eval()
    text = torch.randn(3, 8)
    with torch.no_grad():
        det = prior(text, deterministic=True)
        assert torch.equal(det, prior.decode(torch.zeros(3, 4), text))
        eps = torch.randn(3, 4)
        assert torch.equal(prior(text, eps=eps), prior.decode(eps, text))
        torch.manual_seed(5)
        a = prior(text)
        torch.manual_seed(5)
        assert torch.equal(a, prior(text))
        assert not torch.equal(a, det)
    with pytest.raises(ValueError, match="eps"):
        prior(text, eps=torch.zeros(3, 5))


def test_loss_is_summed_kl_plus_mean_mse():
    torch.manual_seed(0)
    prior = PriorCVAE(CFG)
    v, t, eps = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 4)
    loss, parts = prior.loss(v, t, beta=0.5, eps=eps)
    mu, logvar = prior.encode(v, t)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum()
    recon = ((prior.decode(mu + eps * (0.5 * logvar).exp(), t) - v) ** 2).mean()
    torch.testing.assert_close(parts["kl"], kl)
    torch.testing.assert_close(parts["recon"], recon)
    torch.testing.assert_close(loss, 0.5 * kl + recon)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_roundtrip(tmp_path, suffix):
    torch.manual_seed(1)
    prior = PriorCVAE(CFG)
    path = save_prior(prior, tmp_path / f"p{suffix}")
    loaded = load_prior(path)
    assert loaded.cfg == CFG and not loaded.training
    for (k, a), b in zip(prior.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    if suffix == ".pt":  # the official layout: flat dict, no prefix
        raw = torch.load(path, weights_only=True)
        assert list(raw) == list(prior.state_dict())


def test_compiled_prefix_and_errors(tmp_path):
    prior = PriorCVAE(CFG)
    torch.save({"_orig_mod." + k: v for k, v in prior.state_dict().items()}, tmp_path / "c.pt")
    assert load_prior(tmp_path / "c.pt").cfg == CFG
    sd = prior.state_dict()
    del sd["decoder.4.bias"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(PriorCheckpointError, match="decoder.4.bias"):
        load_prior(tmp_path / "missing.pt")
    with pytest.raises(PriorCheckpointError, match="shape"):
        load_prior(tmp_path / "c.pt", PriorConfig(input_dim=8, hidden_dim=16, latent_dim=6))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(PriorCheckpointError):
        load_prior(tmp_path / "list.pt")
    assert config_from_state_dict(prior.state_dict()) == CFG


def test_config_validation():
    with pytest.raises(ValueError, match="latent_dim"):
        PriorConfig(latent_dim=0)
    with pytest.raises(ValueError, match="val_fraction"):
        PriorTrainConfig(val_fraction=1.5)


def test_split_is_seeded_and_sized():
    text, visual = _pairs(50)
    (tr, trv), (va, vav) = split_pairs(text, visual, PriorTrainConfig(val_size=10, seed=3))
    assert len(tr) == 40 and len(va) == 10
    (tr2, _), _ = split_pairs(text, visual, PriorTrainConfig(val_size=10, seed=3))
    np.testing.assert_array_equal(tr, tr2)
    # pairs stay paired
    idx = [int(np.where((text == row).all(1))[0][0]) for row in tr[:5]]
    np.testing.assert_array_equal(trv[:5], visual[idx])
    _, (va_f, _) = split_pairs(text, visual, PriorTrainConfig(val_fraction=0.2))
    assert len(va_f) == 10


def test_train_prior_improves_and_keeps_best(tmp_path):
    text, visual = _pairs()
    cfg = PriorTrainConfig(prior=CFG, epochs=6, batch_size=32, lr=3e-3, val_size=60, seed=0, device="cpu")
    best = train_prior((text, visual), cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    best_epoch = min(rows, key=lambda r: r["val_loss"])["epoch"]
    assert [r["epoch"] for r in rows if r["best"]][-1] == best_epoch
    assert best.is_file() and best.with_suffix(".safetensors").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file() and any((tmp_path / "run" / "tb").iterdir())
    assert load_prior(best).cfg == CFG and load_prior(tmp_path / "run" / "checkpoints" / "prior_last.pt").cfg == CFG
    final = load_prior(tmp_path / "run" / "prior.safetensors")
    for a, b in zip(final.state_dict().values(), load_prior(best).state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(UserError, match="input_dim"):
        train_prior((text[:, :4], visual[:, :4]), cfg, tmp_path / "bad", progress=False)


def test_load_pairs_npz_and_original_pickle(tmp_path):
    text, visual = _pairs(20)
    np.savez(tmp_path / "pairs.npz", text_embeddings=text, visual_embeddings=visual)
    t, v = load_pairs(tmp_path / "pairs.npz")
    np.testing.assert_array_equal(t, text)
    with open(tmp_path / "data.pkl", "wb") as f:  # the original: sequences of (1, D) arrays / lists
        pickle.dump({"text_embeddings": [r[None] for r in text], "visual_embeddings": [r.tolist() for r in visual]}, f)
    t, v = load_pairs(tmp_path / "data.pkl")
    np.testing.assert_array_equal(t, text)
    np.testing.assert_allclose(v, visual)
    np.savez(tmp_path / "bad.npz", text=text)
    with pytest.raises(UserError, match="text_embeddings"):
        load_pairs(tmp_path / "bad.npz")


def test_cli_prior_train(tmp_path):
    from aimc.cli import main

    text, visual = _pairs(120)
    np.savez(tmp_path / "pairs.npz", text_embeddings=text, visual_embeddings=visual)
    rc = main(["prior", "train", "--data", str(tmp_path / "pairs.npz"), "--out", str(tmp_path / "run"),
               "--fast", "val_size=20", "batch_size=50"])
    assert rc == 0
    assert load_prior(tmp_path / "run" / "checkpoints" / "prior_best.pt").cfg.input_dim == 8
