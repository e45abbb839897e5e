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

Fine-tuning (``init=EMBEDDER``) starts from an existing embedder instead: the official
``attn.pth`` or a file this module wrote. The architecture is the file's (``model``/``embed_dim``
settings that contradict it are errors), the store's frames must have its resolution, the
learning rate defaults lower, and by default only the text side learns (``freeze_video``), so
that video embeddings, and with them stores embedded, priors and policies trained on the old
embedder, stay valid.

The run directory holds ``config.yaml`` (as run: learning rate and sizes resolved),
``metrics.jsonl``, ``tb/``, ``summary.json`` and the model (``mineclip.safetensors``, loadable
with ``aimc.checkpoints.mineclip.load_mineclip``), which records the languages of the captions it
was trained on (with ``init``, together with the init's).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aimc.config import save_config
from aimc.errors import ConfigError, UserError
from aimc.models.mineclip import WINDOW, MineCLIP, MineCLIPConfig, count_parameters
from aimc.utils.io import atomic_write_text

NEW_MODEL_LR = 2e-3  # a small model trained from scratch
FINETUNE_LR = 2e-4  # fine-tuning a small (aimc-trained) embedder: a tenth of that
FINETUNE_LR_LARGE = 1e-5  # fine-tuning a CLIP-sized embedder (the official MineCLIP), as CLIP fine-tuning does
LARGE_MODEL_PARAMETERS = 20_000_000


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
    """Contrastive MineCLIP training, from scratch or (``init``) from an existing embedder.

    store: episode store with annotated episodes.
    init: embedder to fine-tune: the official ``attn.pth`` or a ``.safetensors`` written by
        ``aimc mineclip train``; empty = a new model. With init the architecture comes from the file.
    model: MineCLIPConfig fields overriding the small Crafter model (``crafter_mineclip_config``);
        ``{}`` keeps it. Resolution must match the store's frames (no resizing is done). With
        ``init``, fields that contradict the file are an error; an official-format file does not
        store its frame size or head counts, so ``model.resolution`` and ``model.*_heads`` say
        them for a file that is not laid out like the official one.
    embed_dim: joint embedding size (= the policy's goal size); unset: 64, or the init's.
    langs: annotation languages to train on (empty = all). The languages actually seen are
        recorded in the model (with ``init``, together with the init's).
    steps: optimizer steps.
    batch_size: (clip, caption) pairs per step.
    lr: AdamW peak learning rate (linear warmup over ``warmup_steps``, cosine to 10 % at
        ``steps``, or at the steps that ``time_limit_s`` allows when that comes first). Unset:
        2e-3 for a new model; with ``init`` 2e-4, or 1e-5 for a CLIP-sized embedder (over 20 M
        parameters, e.g. the official MineCLIP).
    freeze_video: keep the video side (ViT, temporal pooling, video adapter) fixed and train only
        the text side. Unset: true with ``init`` (video embeddings, and the stores, priors and
        policies made with them, stay valid), false for a new model.
    warmup_steps: warmup length.
    weight_decay: AdamW weight decay.
    jitter: the clip ends 0..jitter frames after the annotation's last frame (the outcome of
        an event stays visible a little after it).
    max_episodes: read at most this many episodes (0 = all) to bound memory and time.
    seed: sampling and init seed.
    log_every: steps between metrics lines.
    time_limit_s: stop after this many seconds (0 = no limit); the quickstart's budget.
    device: auto (CUDA if present), cpu, cuda, cuda:1 ...
    """

    store: str = ""
    init: str = ""
    model: dict = field(default_factory=dict)
    embed_dim: int | None = None
    langs: list[str] = field(default_factory=list)
    steps: int = 600
    batch_size: int = 96
    lr: float | None = None
    freeze_video: bool | None = None
    warmup_steps: int = 50
    weight_decay: float = 0.05
    jitter: int = 3
    max_episodes: int = 0
    seed: int = 0
    log_every: int = 25
    time_limit_s: float = 0.0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"MineCLIPTrainConfig.steps must be positive, got {self.steps}")
        if self.batch_size < 2:
            raise ConfigError(f"MineCLIPTrainConfig.batch_size must be at least 2 (contrastive pairs), got {self.batch_size}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"MineCLIPTrainConfig.lr must be positive (or unset for the default), got {self.lr}")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ConfigError(f"MineCLIPTrainConfig.embed_dim must be positive, got {self.embed_dim}")
        if self.jitter < 0 or self.max_episodes < 0 or self.warmup_steps < 0:
            raise ConfigError("MineCLIPTrainConfig.jitter, max_episodes and warmup_steps must be >= 0")
        if self.freeze_video and not self.init:
            raise ConfigError("MineCLIPTrainConfig.freeze_video=true needs init=EMBEDDER: a new model's video side must learn")
        from aimc.checkpoints.mineclip import check_lang_code

        for code in self.langs:
            check_lang_code(code, "MineCLIPTrainConfig.langs entry")

    def model_config(self) -> MineCLIPConfig:
        """The architecture of a new model (without ``init``)."""
        base = crafter_mineclip_config(self.embed_dim or 64)
        fields = {**base.__dict__, **self.model}
        fields["embed_dim"] = self.embed_dim or 64
        return MineCLIPConfig(**fields)


@dataclass
class InitModel:
    """The model training starts from, and where it came from."""

    model: MineCLIP
    langs: tuple[str, ...] | None  # the init's languages (None: a new model, or not recorded)
    init: dict | None  # {"path", "md5", "langs"} of the init file
    notes: list[str]


def build_model(cfg: MineCLIPTrainConfig) -> InitModel:
    """A new model (seeded) or, with ``cfg.init``, the init file's model with exactly its weights."""
    if not cfg.init:
        torch.manual_seed(cfg.seed)
        return InitModel(MineCLIP(cfg.model_config()), None, None, [])
    from aimc.checkpoints.mineclip import (
        check_config_matches,
        config_from_state_dict,
        load_state_dict_strict,
        md5sum,
        read_mineclip_file,
    )
    from aimc.checkpoints.safe_load import check_readable_file

    check_readable_file(cfg.init, "embedder to fine-tune (--init / init=: the official attn.pth or a mineclip.safetensors)")
    f = read_mineclip_file(cfg.init)
    source = f"MineCLIPTrainConfig.init {cfg.init}"
    given = dict(cfg.model)
    if cfg.embed_dim is not None:
        given["embed_dim"] = cfg.embed_dim
    if f.config is not None:
        check_config_matches(f.config, given, source)
        mcfg = f.config
    else:
        mcfg = config_from_state_dict(f.state_dict, source, given)
    model = MineCLIP(mcfg)
    load_state_dict_strict(model, f.state_dict, str(f.path))
    model.langs = f.langs
    notes = []
    if f.langs_source == "official":
        notes.append(f"{cfg.init}: an official-format file without aimc's language record: the official MineCLIP, English only")
    elif f.langs is None:
        notes.append(f"{cfg.init} records no languages (written before aimc recorded them); the new model records only the captions' languages")
    init = {"path": str(Path(cfg.init).resolve()), "md5": md5sum(f.path), "langs": list(f.langs) if f.langs is not None else None}
    return InitModel(model, f.langs, init, notes)


def resolved_lr(cfg: MineCLIPTrainConfig, model: MineCLIP) -> float:
    """``cfg.lr``, or the default for a new model / a fine-tune of this model's size."""
    if cfg.lr is not None:
        return cfg.lr
    if not cfg.init:
        return NEW_MODEL_LR
    return FINETUNE_LR_LARGE if count_parameters(model) > LARGE_MODEL_PARAMETERS else FINETUNE_LR


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
        seen_langs: set[str] = set()
        text_index: dict[str, int] = {}
        for e, eid in enumerate(ids):
            ep = store.open(eid)
            anns = [a for a in ep.annotations() if not langs or _lang(a) in langs]
            if not anns:
                continue
            k = len(self.frames)
            self.frames.append(ep.frames(0, ep.num_frames))
            for a in anns:
                seen_langs.add(_lang(a))
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
        self.langs = tuple(sorted(seen_langs))  # the languages of the captions read
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


def _lang(annotation: dict) -> str:
    """An annotation's language: its ``lang``, else guessed from the text (Chinese characters: zh)."""
    from aimc.checkpoints.mineclip import guess_lang

    return str(annotation.get("lang") or guess_lang(str(annotation.get("text", ""))))


def contrastive_loss(
    model: MineCLIP, clips: torch.Tensor, tokens: torch.Tensor, groups: torch.Tensor, freeze_video: bool = False
) -> torch.Tensor:
    """Symmetric CLIP loss where every pair of the same group is a positive.

    clips: (B, 16, 3, H, W) 0..255; tokens: (B, 77); groups: (B,) int. ``freeze_video``: the
    video embeddings are computed without gradients (only the text side learns).
    """
    if freeze_video:
        with torch.no_grad():
            video = model.encode_video(clips)  # (B, D)
    else:
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
    on_note: Callable[[str], None] | None = None,
) -> Path:
    """Train a MineCLIP contrastively; returns the path of ``mineclip.safetensors``.

    One loop: draw a batch of (clip, caption) pairs, encode both, contrastive loss, backward,
    clip the gradient, step, log. ``on_step(step, loss)`` reports progress to a caller;
    ``on_note(text)`` gets remarks worth reading (default: printed to stderr).
    """
    from torch.utils.tensorboard import SummaryWriter

    from aimc.checkpoints.mineclip import save_mineclip
    from aimc.models.tokenizer import ClipTokenizer
    from aimc.utils.device import resolve_device
    from aimc.utils.io import make_dir

    note = on_note or (lambda text: print(f"note: {text}", file=sys.stderr, flush=True))
    run_dir = Path(run_dir)
    make_dir(run_dir, "run directory (--out)")
    if pairs is None:
        if not cfg.store:
            raise UserError("mineclip training needs a store: set store=PATH (an episode store with annotations)")
        pairs = ClipCaptionPairs(cfg.store, cfg.langs or None, cfg.max_episodes)
    start = build_model(cfg)
    model = start.model
    mcfg = model.cfg
    h, w, _ = pairs.frame_shape
    if (h, w) != tuple(mcfg.resolution):
        if cfg.init:
            raise UserError(
                f"{cfg.store or 'the store'}: frames are {h}x{w} (height x width) but the embedder {cfg.init} takes "
                f"{mcfg.resolution[0]}x{mcfg.resolution[1]} frames; fine-tune it on a store recorded or converted at "
                f"{mcfg.resolution[0]}x{mcfg.resolution[1]} (training does not resize, so the embedder learns frames as it sees them)"
            )
        raise UserError(f"{cfg.store}: frames are {h}x{w} but the model's resolution is {mcfg.resolution}; set model.resolution")
    freeze_video = bool(cfg.init) if cfg.freeze_video is None else cfg.freeze_video
    lr = resolved_lr(cfg, model)
    ran = dataclasses.replace(cfg, lr=lr, freeze_video=freeze_video, embed_dim=mcfg.embed_dim)
    save_config(ran, run_dir / "config.yaml")
    for text in start.notes:
        note(text)
    if start.langs is not None and set(pairs.langs) - set(start.langs):
        note(f"{cfg.init} knows {'/'.join(start.langs)}; these captions add {'/'.join(sorted(set(pairs.langs) - set(start.langs)))}")
    device = resolve_device(cfg.device)
    model.to(device)
    if freeze_video:
        for p in model.video_parameters():
            p.requires_grad_(False)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokens_all = ClipTokenizer().tokenize(pairs.texts).to(device)  # (num_texts, 77)
    groups_all = torch.from_numpy(pairs.text_group).to(device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    trainable = decay + no_decay
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    tb = SummaryWriter(str(run_dir / "tb"))
    t0 = time.time()
    total_steps = cfg.steps
    first = last = float("nan")
    step = -1
    model.train()
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as log:
        for step in range(cfg.steps):
            if cfg.time_limit_s and step == _TIMING_STEPS:
                per_step = (time.time() - t0) / _TIMING_STEPS
                total_steps = max(step + 1, min(cfg.steps, int(cfg.time_limit_s / per_step)))
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, ran, total_steps)
            clips, text_idx = pairs.batch(rng, cfg.batch_size, cfg.jitter)
            idx = torch.from_numpy(text_idx).to(device)
            loss = contrastive_loss(model, torch.from_numpy(clips).to(device), tokens_all[idx], groups_all[idx], freeze_video)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, 1.0))
            opt.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise UserError(f"mineclip training diverged at step {step} (loss {value}); lower lr (it was {lr:g})")
            first = value if step == 0 else first
            last = value
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
    model.eval().cpu()
    model.langs = tuple(sorted(set(pairs.langs) | set(start.langs or ())))
    path = save_mineclip(model, run_dir / "mineclip.safetensors", init=start.init)
    summary = {
        "model": str(path), "langs": list(model.langs), "init": start.init, "steps": step + 1, "first_loss": first,
        "last_loss": last, "lr": lr, "freeze_video": freeze_video, "pairs": len(pairs), "captions": len(pairs.texts),
        "seconds": round(time.time() - t0, 1), "notes": start.notes,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return path


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
