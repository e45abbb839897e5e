"""Contrastive training of a (small) MineCLIP on (16-frame clip, caption) pairs.

STEVE-1's goals are MineCLIP embeddings; for a world without an official MineCLIP (the
built-in Crafter world, or a user's own Minecraft domain) this trains one from an episode
store whose episodes carry text annotations (``aimc data generate --env crafter`` writes
them). Each annotation ``{"start", "end", "text"}`` becomes one pair: the 16 frames ending
at ``end - 1 + jitter`` and the text. The loss is CLIP's symmetric cross-entropy over the
batch, with one change: captions of the same event (annotation key ``event``, else the same
text) are all positives for each other, because a batch of a small world holds many clips
of the same thing and calling them negatives would teach noise.

    cfg = load_config(MineCLIPTrainConfig, None, ["store=runs/quickstart/store", "steps=2000"])
    model_path = train_mineclip(cfg, "runs/embedder")        # -> runs/embedder/mineclip.safetensors

The run directory holds ``config.yaml``, ``metrics.jsonl``, ``tb/`` and the model
(``mineclip.safetensors``, loadable with ``aimc.checkpoints.mineclip.load_mineclip``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aimc.config import save_config
from aimc.errors import ConfigError, UserError
from aimc.models.mineclip import WINDOW, MineCLIP, MineCLIPConfig


def crafter_mineclip_config(embed_dim: int = 64) -> MineCLIPConfig:
    """A MineCLIP small enough to train in minutes on a CPU, for 64x64 Crafter frames."""
    return MineCLIPConfig(
        resolution=(64, 64),
        patch_size=16,  # 4x4 patches of 2x2 tiles: the ViT is what embedding every frame costs
        vision_width=64,
        vision_layers=2,
        vision_heads=2,
        base_image_resolution=64,
        embed_dim=embed_dim,
        text_width=64,
        text_layers=1,
        text_heads=2,
        pool_depth=1,
        pool_heads=2,
        pool_dim_head=32,
        pool_ff_mult=2,
        video_adapter_layers=1,
        text_adapter_layers=0,
    )


@dataclass
class MineCLIPTrainConfig:
    """Contrastive MineCLIP training.

    store: episode store with annotated episodes.
    model: MineCLIPConfig fields overriding the small Crafter model (``crafter_mineclip_config``);
        ``{}`` keeps it. Resolution must match the store's frames (no resizing is done).
    embed_dim: joint embedding size (= the policy's goal size).
    langs: annotation languages to train on (empty = all).
    steps: optimizer steps.
    batch_size: (clip, caption) pairs per step.
    lr: AdamW peak learning rate (linear warmup over ``warmup_steps``, cosine to 10 % at
        ``steps``, or at the steps that ``time_limit_s`` allows when that comes first).
    warmup_steps: warmup length.
    weight_decay: AdamW weight decay.
    jitter: the clip ends 0..jitter frames after the annotation's last frame (the outcome of
        an event stays visible a little after it).
    max_episodes: read at most this many episodes (0 = all) to bound memory and time.
    seed: sampling and init seed.
    log_every: steps between metrics lines.
    time_limit_s: stop after this many seconds (0 = no limit); the quickstart's budget.
    """

    store: str = ""
    model: dict = field(default_factory=dict)
    embed_dim: int = 64
    langs: list[str] = field(default_factory=list)
    steps: int = 600
    batch_size: int = 96
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    jitter: int = 3
    max_episodes: int = 0
    seed: int = 0
    log_every: int = 25
    time_limit_s: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"MineCLIPTrainConfig.steps must be positive, got {self.steps}")
        if self.batch_size < 2:
            raise ConfigError(f"MineCLIPTrainConfig.batch_size must be at least 2 (contrastive pairs), got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"MineCLIPTrainConfig.lr must be positive, got {self.lr}")
        if self.embed_dim < 1:
            raise ConfigError(f"MineCLIPTrainConfig.embed_dim must be positive, got {self.embed_dim}")
        if self.jitter < 0 or self.max_episodes < 0 or self.warmup_steps < 0:
            raise ConfigError("MineCLIPTrainConfig.jitter, max_episodes and warmup_steps must be >= 0")

    def model_config(self) -> MineCLIPConfig:
        base = crafter_mineclip_config(self.embed_dim)
        fields = {**base.__dict__, **self.model}
        fields["embed_dim"] = self.embed_dim
        return MineCLIPConfig(**fields)


class ClipCaptionPairs:
    """Every annotation of a store as a (clip end frame, text, group) triple, frames in memory."""

    def __init__(self, store_root: str | Path, langs: list[str] | None = None, max_episodes: int = 0) -> None:
        from aimc.data.store import EpisodeStore

        store = EpisodeStore(store_root)
        ids = store.episode_ids()
        if max_episodes:
            ids = ids[:max_episodes]
        self.frames: list[np.ndarray] = []  # per episode (N, H, W, 3) uint8
        self.items: list[tuple[int, int, int, int]] = []  # (episode, start, end, text index)
        self.texts: list[str] = []
        self.groups: list[str] = []  # per text: the event it describes (same event = positives)
        text_index: dict[str, int] = {}
        for e, eid in enumerate(ids):
            ep = store.open(eid)
            anns = [a for a in ep.annotations() if not langs or a.get("lang", "en") in langs]
            if not anns:
                continue
            k = len(self.frames)
            self.frames.append(ep.frames(0, ep.num_frames))
            for a in anns:
                t = str(a["text"])
                if t not in text_index:
                    text_index[t] = len(self.texts)
                    self.texts.append(t)
                    self.groups.append(str(a.get("event", t)))
                self.items.append((k, int(a["start"]), int(a["end"]), text_index[t]))
        if not self.items:
            raise UserError(
                f"{store_root}: no annotated episodes{' in ' + '/'.join(langs) if langs else ''}; "
                "contrastive training needs text annotations (aimc data generate --env crafter writes them)"
            )
        group_ids = {g: i for i, g in enumerate(sorted(set(self.groups)))}
        self.text_group = np.asarray([group_ids[g] for g in self.groups], dtype=np.int64)  # (num_texts,)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return tuple(self.frames[0].shape[1:])  # type: ignore[return-value]

    def clip(self, item: int, jitter: int) -> np.ndarray:
        """The 16 frames ending ``jitter`` frames after the annotation (front-padded). # (16, H, W, 3)"""
        k, _start, end, _ = self.items[item]
        frames = self.frames[k]
        last = min(end - 1 + jitter, len(frames) - 1)
        idx = np.clip(np.arange(last - WINDOW + 1, last + 1), 0, None)
        return frames[idx]

    def batch(self, rng: np.random.Generator, batch_size: int, jitter: int) -> tuple[np.ndarray, np.ndarray]:
        """(clips uint8 (B, 16, 3, H, W), text indices (B,)), items drawn uniformly by event."""
        # draw events uniformly first so that rare events are seen as often as common ones
        item_groups = self.text_group[[it[3] for it in self.items]]
        groups = np.unique(item_groups)
        chosen_groups = rng.choice(groups, size=batch_size)
        picks = []
        for g in chosen_groups:
            cands = np.flatnonzero(item_groups == g)
            picks.append(int(cands[rng.integers(0, len(cands))]))
        clips = np.stack([self.clip(i, int(rng.integers(0, jitter + 1))) for i in picks])  # (B, 16, H, W, 3)
        texts = np.asarray([self.items[i][3] for i in picks], dtype=np.int64)
        return np.ascontiguousarray(clips.transpose(0, 1, 4, 2, 3)), texts


def contrastive_loss(model: MineCLIP, clips: torch.Tensor, tokens: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss where every pair of the same group is a positive.

    clips: (B, 16, 3, H, W) 0..255; tokens: (B, 77); groups: (B,) int.
    """
    video = model.encode_video(clips)  # (B, D)
    text = model.encode_text(tokens)  # (B, D)
    logits = model.similarity(video, text)  # (B, B)
    pos = (groups[:, None] == groups[None, :]).float()  # (B, B)
    target = pos / pos.sum(1, keepdim=True)
    loss_v = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (loss_v + loss_t)


def _lr_at(step: int, cfg: MineCLIPTrainConfig, total_steps: int | None = None) -> float:
    """Linear warmup, then cosine from lr to lr/10 at ``total_steps`` (default ``cfg.steps``)."""
    total = cfg.steps if total_steps is None else total_steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


# With a time limit, the schedule is fitted to the steps that the limit allows, measured
# over the first steps (so the learning rate still anneals when time, not steps, ends the run).
_TIMING_STEPS = 10


def train_mineclip(
    cfg: MineCLIPTrainConfig,
    run_dir: str | Path,
    pairs: ClipCaptionPairs | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Path:
    """Train a MineCLIP contrastively; returns the path of ``mineclip.safetensors``.

    One loop: draw a batch of (clip, caption) pairs, encode both, contrastive loss, backward,
    clip the gradient, step, log. ``on_step(step, loss)`` reports progress to a caller.
    """
    from torch.utils.tensorboard import SummaryWriter

    from aimc.checkpoints.mineclip import save_mineclip
    from aimc.models.tokenizer import ClipTokenizer
    from aimc.utils.io import make_dir

    run_dir = Path(run_dir)
    make_dir(run_dir, "run directory (--out)")
    save_config(cfg, run_dir / "config.yaml")
    if pairs is None:
        if not cfg.store:
            raise UserError("mineclip training needs a store: set store=PATH (an episode store with annotations)")
        pairs = ClipCaptionPairs(cfg.store, cfg.langs or None, cfg.max_episodes)
    mcfg = cfg.model_config()
    h, w, _ = pairs.frame_shape
    if (h, w) != tuple(mcfg.resolution):
        raise UserError(f"{cfg.store}: frames are {h}x{w} but the model's resolution is {mcfg.resolution}; set model.resolution")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = MineCLIP(mcfg)
    tokens_all = ClipTokenizer().tokenize(pairs.texts)  # (num_texts, 77)
    groups_all = torch.from_numpy(pairs.text_group)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    tb = SummaryWriter(str(run_dir / "tb"))
    t0 = time.time()
    total_steps = cfg.steps
    model.train()
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as log:
        for step in range(cfg.steps):
            if cfg.time_limit_s and step == _TIMING_STEPS:
                per_step = (time.time() - t0) / _TIMING_STEPS
                total_steps = max(step + 1, min(cfg.steps, int(cfg.time_limit_s / per_step)))
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg, total_steps)
            clips, text_idx = pairs.batch(rng, cfg.batch_size, cfg.jitter)
            loss = contrastive_loss(model, torch.from_numpy(clips), tokens_all[text_idx], groups_all[text_idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
            opt.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise UserError(f"mineclip training diverged at step {step} (loss {value}); lower lr")
            if on_step is not None:
                on_step(step, value)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                rec = {"step": step, "loss": value, "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm, "seconds": time.time() - t0}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                for k in ("loss", "lr", "grad_norm"):
                    tb.add_scalar(f"mineclip/{k}", rec[k], step)
            if cfg.time_limit_s and time.time() - t0 > cfg.time_limit_s:
                break
    tb.close()
    model.eval()
    return save_mineclip(model, run_dir / "mineclip.safetensors")


@torch.no_grad()
def text_retrieval_accuracy(model: MineCLIP, pairs: ClipCaptionPairs, n: int = 256, seed: int = 1) -> float:
    """Share of clips whose best-scoring caption (among all captions) names the right event."""
    from aimc.models.tokenizer import ClipTokenizer

    rng = np.random.default_rng(seed)
    clips, text_idx = pairs.batch(rng, n, 0)
    text = model.encode_text(ClipTokenizer().tokenize(pairs.texts))  # (num_texts, D)
    video = model.encode_video(torch.from_numpy(clips))  # (n, D)
    best = model.similarity(video, text).argmax(1).numpy()  # (n,)
    return float((pairs.text_group[best] == pairs.text_group[text_idx]).mean())
