"""Train the STEVE-1 prior (text embedding -> visual goal embedding) on paired embeddings.

One loop, read top to bottom: shuffle the pairs once (seeded) and hold out a validation
set, then per epoch: shuffle, batch, ELBO (beta * summed KL + mean MSE), backward, AdamW
step, log; validate; keep the best model by validation loss (atomic write). As the
original ``train_vae.py``: AdamW lr 1e-4 with torch defaults, batch 256, 50 epochs,
beta 1, the last 200 pairs as validation, validation samples z like training does.
Differences: the shuffles are seeded, validation noise is drawn from a fixed generator so
epochs are compared on the same noise, and the last epoch is saved too.

Data files (``aimc prior train --data A [B ...]``, concatenated in order):
* ``.npz`` with ``text_embeddings`` and ``visual_embeddings``, both float (N, D), row i of
  one paired with row i of the other (``np.savez(path, text_embeddings=t, visual_embeddings=v)``;
  ``aimc prior pairs`` writes these, see :mod:`aimc.data.pairs`);
* or the original ``data.pkl``: a pickled dict of the same two names holding sequences of
  (1, D)/(D,) arrays or lists; read with the plain-data unpickler (no code runs).

Run directory: ``config.yaml``, ``metrics.jsonl`` (one JSON line per epoch), ``tb/``
(TensorBoard), ``checkpoints/prior_best.pt`` (official steve1_prior.pt format) +
``prior_best.safetensors``, ``checkpoints/prior_last.pt``, and ``prior.safetensors`` (a copy of
the best, written at the end).
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aimc.checkpoints.prior import save_prior
from aimc.checkpoints.safe_load import check_readable_file, load_plain_pickle
from aimc.config import save_config
from aimc.errors import ConfigError, UserError
from aimc.models.prior import PriorConfig, PriorCVAE
from aimc.utils.device import autocast as amp_autocast
from aimc.utils.device import resolve_device
from aimc.utils.io import atomic_write_bytes, atomic_write_text, make_dir


@dataclass
class PriorTrainConfig:
    """Training settings for the prior.

    Fields:
        prior: model sizes; ``prior.input_dim`` must equal the data's embedding size D.
        epochs: passes over the training pairs (original: 50).
        batch_size: pairs per step (original: 256).
        lr: AdamW learning rate (original: 1e-4).
        weight_decay: AdamW weight decay (torch default 0.01, as the original).
        beta: weight of the KL term in the loss (original: 1.0).
        val_size: number of pairs held out for validation, taken from the end after the
            shuffle (original: 200). Ignored when ``val_fraction`` > 0.
        val_fraction: if > 0, hold out this fraction of the pairs instead.
        seed: seeds the split, the epoch shuffles, the latent noise and the init.
        device: "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
        amp: run forward passes under fp16 autocast on CUDA (as the original, no GradScaler).
    """

    prior: PriorConfig = field(default_factory=PriorConfig)
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01
    beta: float = 1.0
    val_size: int = 200
    val_fraction: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"PriorTrainConfig.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"PriorTrainConfig.batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"PriorTrainConfig.lr must be > 0, got {self.lr}")
        if self.beta < 0:
            raise ConfigError(f"PriorTrainConfig.beta must be >= 0, got {self.beta}")
        if self.val_size < 0:
            raise ConfigError(f"PriorTrainConfig.val_size must be >= 0, got {self.val_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"PriorTrainConfig.val_fraction must be in [0, 1), got {self.val_fraction}")


def load_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a pairs file (.npz or the original data.pkl) -> (text (N, D), visual (N, D)) float32."""
    text, visual, _ = _read_pairs(path)
    return text, visual


def load_pair_files(paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Several pairs files concatenated in order, e.g. the quickstart's pairs plus new ones.

    All must have the same embedding size D; files written by ``aimc prior pairs`` record their
    embedder (``embedder_sha256``), and two that record different ones are refused too.
    """
    if not paths:
        raise UserError("no pairs file given")
    texts, visuals = [], []
    first: tuple[Path, int] | None = None
    embedder: tuple[Path, str] | None = None
    for path in map(Path, paths):
        text, visual, sha = _read_pairs(path)
        if first is not None and text.shape[1] != first[1]:
            raise UserError(f"{path}: embeddings of size D={text.shape[1]}, but {first[0]} has D={first[1]}: "
                            "pairs made with different embedders cannot be mixed; remake one with the other's "
                            "embedder (aimc prior pairs ... --mineclip EMBEDDER)")
        if sha and embedder is not None and sha != embedder[1]:
            raise UserError(f"{path}: made with another embedder (sha256 {sha[:12]}…) than {embedder[0]} "
                            f"(sha256 {embedder[1][:12]}…): their text and goal embeddings live in different "
                            "spaces; remake one with the other's embedder (aimc prior pairs ... --mineclip EMBEDDER)")
        first = first or (path, text.shape[1])
        embedder = embedder or ((path, sha) if sha else None)
        texts.append(text)
        visuals.append(visual)
    return np.concatenate(texts), np.concatenate(visuals)


def _read_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(text (N, D), visual (N, D), the embedder's sha256 if the file records it)."""
    path = check_readable_file(Path(path), "pairs file (.npz or data.pkl)")
    sha = None
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = {"text_embeddings", "visual_embeddings"} - set(f.files)
                if missing:
                    raise UserError(f"{path}: missing array(s) {sorted(missing)}; found {f.files}. "
                                    "Write it with aimc prior pairs, or np.savez(path, text_embeddings=..., visual_embeddings=...)")
                text, visual = f["text_embeddings"], f["visual_embeddings"]
                if "embedder_sha256" in f.files:
                    sha = str(f["embedder_sha256"])
        except UserError:
            raise
        except Exception as e:  # not an .npz archive, truncated, or arrays of Python objects
            raise UserError(f"{path}: not a readable .npz of embeddings ({type(e).__name__}: {e}); "
                            "is it the right file?") from None
    else:
        data = load_plain_pickle(path)
        if not isinstance(data, dict) or not {"text_embeddings", "visual_embeddings"} <= set(data):
            raise UserError(f"{path}: expected a dict with 'text_embeddings' and 'visual_embeddings' (STEVE-1 data.pkl)")
        text, visual = (_stack(data[k], f"{path}:{k}") for k in ("text_embeddings", "visual_embeddings"))
    text, visual = np.asarray(text, np.float32), np.asarray(visual, np.float32)
    if text.ndim != 2 or text.shape != visual.shape:
        raise UserError(f"{path}: text {text.shape} and visual {visual.shape} embeddings must both be (N, D)")
    if len(text) == 0:
        raise UserError(f"{path}: holds no pairs (N = 0)")
    if not (np.isfinite(text).all() and np.isfinite(visual).all()):
        raise UserError(f"{path}: embeddings contain NaN or inf")
    return text, visual, sha


def _stack(seq, where: str) -> np.ndarray:
    if isinstance(seq, np.ndarray):
        return seq.reshape(-1, seq.shape[-1]).astype(np.float32)
    rows = [np.asarray(x, np.float32) for x in seq]
    if not rows:
        raise UserError(f"{where}: empty")
    D = rows[0].shape[-1]
    return np.concatenate([r.reshape(-1, D) for r in rows])  # each item (1, D) or (D,) -> (N, D)


def split_pairs(text: np.ndarray, visual: np.ndarray, cfg: PriorTrainConfig):
    """Seeded joint shuffle, then the last ``val_size`` (or ``val_fraction``) pairs are validation."""
    N = len(text)
    order = np.random.default_rng(cfg.seed).permutation(N)
    n_val = int(round(N * cfg.val_fraction)) if cfg.val_fraction > 0 else min(cfg.val_size, N - 1)
    if N - n_val < 1:
        raise UserError(f"only {N} pairs: nothing left to train on after holding out {n_val} for validation")
    tr, va = order[: N - n_val], order[N - n_val :]
    return (text[tr], visual[tr]), (text[va], visual[va])


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@torch.no_grad()
def evaluate(model: PriorCVAE, text: torch.Tensor, visual: torch.Tensor, cfg: PriorTrainConfig, autocast) -> dict[str, float]:
    """Mean per-batch validation loss parts, latent noise from a fixed generator."""
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    sums = {"loss": 0.0, "kl": 0.0, "recon": 0.0}
    n = 0
    for i in range(0, len(text), cfg.batch_size):
        t, v = text[i : i + cfg.batch_size], visual[i : i + cfg.batch_size]
        eps = torch.randn(len(t), model.cfg.latent_dim, generator=gen).to(t.device)
        with autocast():
            loss, parts = model.loss(v, t, cfg.beta, eps=eps)
        sums["loss"] += float(loss)
        sums["kl"] += float(parts["kl"])
        sums["recon"] += float(parts["recon"])
        n += 1
    model.train()
    return {k: s / max(n, 1) for k, s in sums.items()}


def train_prior(
    pairs: tuple[np.ndarray, np.ndarray],
    cfg: PriorTrainConfig,
    run_dir: str | Path,
    progress: bool = True,
) -> Path:
    """Train a prior on ``pairs = (text_emb (N, D), visual_emb (N, D))``; returns the best checkpoint path."""
    from rich.progress import Progress
    from torch.utils.tensorboard import SummaryWriter

    text_np, visual_np = (np.asarray(a, np.float32) for a in pairs)
    if text_np.ndim != 2 or text_np.shape != visual_np.shape:
        raise UserError(f"pairs must be two (N, D) arrays of equal shape, got {text_np.shape} and {visual_np.shape}")
    if text_np.shape[1] != cfg.prior.input_dim:
        raise UserError(f"embeddings have D={text_np.shape[1]} but prior.input_dim={cfg.prior.input_dim}; "
                        f"set prior.input_dim={text_np.shape[1]}")
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    make_dir(run_dir, "run directory (--out)")
    ckpt_dir.mkdir(exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    atomic_write_text(run_dir / "run.json", json.dumps({"git_revision": _git_revision(), "n_pairs": len(text_np)}) + "\n")

    # 1. data: seeded split, tensors on the device (embeddings are small)
    device = resolve_device(cfg.device)
    (tr_t, tr_v), (va_t, va_v) = split_pairs(text_np, visual_np, cfg)
    tr_t, tr_v, va_t, va_v = (torch.from_numpy(a).to(device) for a in (tr_t, tr_v, va_t, va_v))

    # 2. model and optimizer
    torch.manual_seed(cfg.seed)
    model = PriorCVAE(cfg.prior).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"

    def autocast():
        return amp_autocast(device, torch.float16 if use_amp else None)

    writer = SummaryWriter(str(run_dir / "tb"))
    best_val, best_path = math.inf, ckpt_dir / "prior_best.pt"
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(tr_t) / cfg.batch_size)
    step = 0
    with Progress(disable=not progress) as bar, open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as metrics:
        task = bar.add_task("prior", total=cfg.epochs * steps_per_epoch)
        for epoch in range(cfg.epochs):
            # 3. one epoch: shuffle, batch, loss, backward, step
            t0 = time.time()
            perm = torch.randperm(len(tr_t), generator=gen).to(device)
            sums: dict[str, torch.Tensor | float] = {"loss": 0.0, "kl": 0.0, "recon": 0.0}
            for i in range(0, len(perm), cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                with autocast():
                    loss, parts = model.loss(tr_v[idx], tr_t[idx], cfg.beta)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                for k, v in (("loss", loss), ("kl", parts["kl"]), ("recon", parts["recon"])):
                    sums[k] = sums[k] + v.detach().float()  # stays on the device: no sync per step
                if step % 10 == 0:
                    writer.add_scalar("train/loss", loss.item(), step)
                bar.advance(task)
            train = {k: float(v) / steps_per_epoch for k, v in sums.items()}

            # 4. validate, keep the best
            val = evaluate(model, va_t, va_v, cfg, autocast) if len(va_t) else dict(train)
            improved = val["loss"] < best_val
            if improved:
                best_val = val["loss"]
                save_prior(model, best_path)
                save_prior(model, best_path.with_suffix(".safetensors"))
            row = {"epoch": epoch + 1, "step": step, **{f"train_{k}": v for k, v in train.items()},
                   **{f"val_{k}": v for k, v in val.items()}, "best": improved, "seconds": round(time.time() - t0, 3)}
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            for k, v in val.items():
                writer.add_scalar(f"val/{k}", v, epoch + 1)
            for k, v in train.items():
                writer.add_scalar(f"train_epoch/{k}", v, epoch + 1)
    save_prior(model, ckpt_dir / "prior_last.pt")
    writer.close()
    # the run's product beside its config, where `aimc run` looks for a prior (<run>/prior.safetensors)
    atomic_write_bytes(run_dir / "prior.safetensors", best_path.with_suffix(".safetensors").read_bytes())
    return best_path


__all__ = ["PriorTrainConfig", "train_prior", "load_pairs", "load_pair_files", "split_pairs"]
