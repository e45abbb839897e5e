"""Hindsight goals anchored at events: the built-in world's training batches.

STEVE-1 relabels every step with the goal embedding of a *future* 16-frame window of the
same episode, at goal times drawn every U[min_btwn_goals, max_btwn_goals) steps. In a small
world that schedule mostly picks windows where nothing in particular happens, and the few
windows that show a rare achievement (a table placed) are swamped by frequent ones (wood
chopped). Here the goal times are chosen where things happen instead:

1. anchors = the frames where an event became visible (from the episode's captions),
   shifted 0..``jitter`` frames later so that the window shows the outcome. Events that
   complete the goal the demonstrator was pursuing are always kept; any other event is
   kept with probability ``keep(e) = (rarest count / count(e)) ** rarity_power``, so rare
   events are always visible and frequent ones only sometimes;
2. gaps longer than ``max_btwn_goals`` are filled with STEVE-1's random goal times;
3. step t is conditioned on the first anchor a with t <= a + 1 (held up to the step after
   it, as STEVE-1), and a whole sequence is unconditioned with probability ``p_uncond``.

The anchor windows are exactly what the prior learns to produce from a caption (the prior's
pairs are captions with the embedding of the window ending at their event), so the goals a
policy sees at test time look like the ones it was trained on.

    batches = EventGoalBatches(store_root, cfg, split="train")
    b = batches.batch(0)   # {"img": uint8 (B,T,H,W,3), "goal": float (B,T,D), "actions": {...}, "first": bool (B,T)}
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aimc.errors import UserError


@dataclass
class EventGoalConfig:
    """Event-anchored hindsight relabeling.

    T: frames per sequence. batch_size: sequences per batch. p_uncond: chance that a whole
    sequence's goals are zero. min_btwn_goals / max_btwn_goals: STEVE-1 goal spacing used
    to fill gaps between events (min >= 15: the first 15 frames have no embedding).
    jitter: anchors are moved 0..jitter frames after the event. rarity_power: how strongly
    frequent events are thinned (0 = keep all). standardize: feed goals as (e - mean) / std per
    dimension over the store's valid frames (see :func:`goal_statistics`); a small embedder's
    raw embeddings share a large common component that hides the goal. The prior must then be
    trained on standardized embeddings too. switch_start: chance that a sequence starts where the
    demonstrator picked a new goal (a ``goal_segments`` start in the episode's meta) instead of
    anywhere: with no history yet, only the goal says where to go, as when an agent is first
    given an instruction. seed: the batch stream (batch k from rng(seed, k)).
    """

    T: int = 64
    batch_size: int = 16
    p_uncond: float = 0.2
    min_btwn_goals: int = 15
    max_btwn_goals: int = 60
    jitter: int = 3
    rarity_power: float = 1.0
    standardize: bool = False
    switch_start: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.T < 1 or self.batch_size < 1:
            raise ValueError("T and batch_size must be positive")
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {self.p_uncond}")
        if not 15 <= self.min_btwn_goals < self.max_btwn_goals:
            raise ValueError(f"need 15 <= min_btwn_goals < max_btwn_goals, got {self.min_btwn_goals}, {self.max_btwn_goals}")
        if self.jitter < 0 or self.rarity_power < 0:
            raise ValueError("jitter and rarity_power must be >= 0")
        if not 0.0 <= self.switch_start <= 1.0:
            raise ValueError(f"switch_start must be in [0, 1], got {self.switch_start}")


class EventGoalBatches:
    """Training batches of an embedded, captioned store, stateless by index (``batch(k)``)."""

    def __init__(self, store_root: str | Path, cfg: EventGoalConfig, split: str | None = "train",
                 episode_ids: list[str] | None = None) -> None:
        from aimc.data.split import load_split
        from aimc.data.store import EpisodeStore

        self.cfg = cfg
        store = EpisodeStore(store_root)
        ids = episode_ids if episode_ids is not None else load_split(store, split)
        self.frames: list[np.ndarray] = []  # (N, H, W, 3) uint8
        self.actions: list[dict[str, np.ndarray]] = []  # head -> (N,)
        self.emb: list[np.ndarray] = []  # (N, D) float32
        self.valid: list[np.ndarray] = []  # (N,) bool
        self.events: list[list[tuple[int, str, bool]]] = []  # (frame, event, completes the pursued goal)
        self.switches: list[np.ndarray] = []  # frames where a new goal was picked (sequence starts)
        for eid in ids:
            ep = store.open(eid)
            if ep.num_frames < cfg.T + 1:
                continue
            got = ep.embeddings()
            if got is None:
                raise UserError(f"{ep.path}: no goal embeddings; run aimc data embed on {store_root} first")
            self.frames.append(ep.frames(0, ep.num_frames))
            self.actions.append({k: np.asarray(v, dtype=np.int64) for k, v in ep.actions().items()})
            self.emb.append(np.asarray(got[0], dtype=np.float32))
            self.valid.append(np.asarray(got[1], dtype=bool))
            self.events.append(_episode_events(ep))
            n = ep.num_frames
            self.switches.append(np.asarray(sorted({int(g[0]) for g in ep.meta.get("goal_segments", []) if int(g[0]) <= n - cfg.T}),
                                            dtype=np.int64))
        if not self.frames:
            raise UserError(f"{store_root}: no episode of the '{split}' split has more than T={cfg.T} frames")
        counts = Counter(e for evs in self.events for _, e, _ in evs)
        rarest = min(counts.values()) if counts else 1
        self.keep = {e: min(1.0, (rarest / n) ** cfg.rarity_power) for e, n in counts.items()}
        lengths = np.asarray([len(f) - cfg.T + 1 for f in self.frames], dtype=np.float64)
        self._p = lengths / lengths.sum()
        self.goal_dim = int(self.emb[0].shape[1])
        self.goal_mean = np.zeros(self.goal_dim, np.float32)
        self.goal_std = np.ones(self.goal_dim, np.float32)
        if cfg.standardize:
            self.goal_mean, self.goal_std = goal_statistics(self.emb, self.valid)
            self.emb = [((e - self.goal_mean) / self.goal_std).astype(np.float32) for e in self.emb]
        self.num_frames = int(sum(len(f) for f in self.frames))

    def anchors(self, rng: np.random.Generator, i: int) -> np.ndarray:
        """Goal time steps of episode ``i`` (sorted, all with valid embeddings)."""
        c = self.cfg
        n = len(self.frames[i])
        valid = self.valid[i]
        picked = []
        for f, e, completes in self.events[i]:
            if completes or rng.random() < self.keep.get(e, 1.0):
                a = min(f + int(rng.integers(0, c.jitter + 1)), n - 1)
                if valid[a]:
                    picked.append(a)
        picked = sorted(set(picked)) + [n - 1]
        out: list[int] = []
        cur = 0
        for a in picked:
            while a - cur > c.max_btwn_goals:  # fill long gaps as STEVE-1 would
                cur += int(rng.integers(c.min_btwn_goals, c.max_btwn_goals))
                if cur < n - 1 and valid[cur]:
                    out.append(cur)
            if not out or a > out[-1]:
                out.append(a)
            cur = a
        return np.asarray(sorted(set(out)), dtype=np.int64)

    def item(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.cfg
        i = int(rng.choice(len(self.frames), p=self._p))
        if c.switch_start and len(self.switches[i]) and rng.random() < c.switch_start:
            start = int(self.switches[i][rng.integers(0, len(self.switches[i]))])
        else:
            start = int(rng.integers(0, len(self.frames[i]) - c.T + 1))
        stop = start + c.T
        goal = np.zeros((c.T, self.goal_dim), dtype=np.float32)  # (T, D)
        anchors = self.anchors(rng, i)
        if rng.random() >= c.p_uncond:
            t = np.arange(start, stop)
            which = np.minimum(np.searchsorted(anchors + 1, t, side="left"), len(anchors) - 1)
            goal = self.emb[i][anchors[which]]
        return {"img": self.frames[i][start:stop], "goal": goal,
                "actions": {k: v[start:stop] for k, v in self.actions[i].items()}}

    def batch(self, index: int) -> dict:
        """Batch ``index``: {"img" (B,T,H,W,3) uint8, "goal" (B,T,D), "actions" {head: (B,T)}, "first" (B,T)}."""
        rng = np.random.default_rng([self.cfg.seed, int(index)])
        return stack_items([self.item(rng) for _ in range(self.cfg.batch_size)], self.cfg.T)



def stack_items(items: list[dict], T: int) -> dict:
    """Items of T frames -> a batch; every sequence starts fresh (``first`` at t=0)."""
    first = np.zeros((len(items), T), dtype=bool)
    first[:, 0] = True
    return {
        "img": torch.from_numpy(np.stack([x["img"] for x in items])),  # (B, T, H, W, 3)
        "goal": torch.from_numpy(np.stack([x["goal"] for x in items])),  # (B, T, D)
        "actions": {k: torch.from_numpy(np.stack([x["actions"][k] for x in items])) for k in items[0]["actions"]},
        "first": torch.from_numpy(first),  # (B, T)
    }

def goal_statistics(embs: list[np.ndarray], valids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (float32 (D,)) of the valid goal embeddings of episodes."""
    allv = np.concatenate([e[v] for e, v in zip(embs, valids)]).astype(np.float64)
    return allv.mean(0).astype(np.float32), (allv.std(0) + 1e-6).astype(np.float32)


def _episode_events(ep) -> list[tuple[int, str, bool]]:
    """(frame the event became visible, event, whether it completed the pursued goal)."""
    seen = set()
    events = []
    for a in ep.annotations():
        e = a.get("event")
        f = int(a["end"]) - 1
        if e is None or (f, e) in seen:
            continue
        seen.add((f, e))
        events.append((f, str(e)))
    ends = {(int(s[1]), str(s[2])) for s in ep.meta.get("goal_segments", [])}
    return [(f, e, (f, e) in ends) for f, e in sorted(events)]


class MixedBatches:
    """Several batch sources mixed by weight, item by item (the 80 % old / 20 % new recipe).

    Batch ``k`` draws, for each of its rows, a source with probability ``weights`` and takes a
    row from that source's batch stream; stateless by index like its sources.
    """

    def __init__(self, sources: list[EventGoalBatches], weights: list[float], seed: int = 0) -> None:
        if not sources or len(sources) != len(weights) or min(weights) < 0 or sum(weights) <= 0:
            raise UserError("MixedBatches needs one non-negative weight per source, with a positive sum")
        self.sources = sources
        self.p = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.seed = seed
        self.cfg = sources[0].cfg

    def batch(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, 7, int(index)])
        B = self.cfg.batch_size
        which = rng.choice(len(self.sources), size=B, p=self.p)
        return stack_items([self.sources[int(w)].item(rng) for w in which], self.cfg.T)
