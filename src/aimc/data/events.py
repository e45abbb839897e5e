"""Hindsight goals anchored at events: the built-in world's relabeling (``data.relabel=events``).

STEVE-1 relabels every step with the goal embedding of a *future* 16-frame window of the
same episode, at goal times drawn every U[min_btwn_goals, max_btwn_goals) steps (``relabel.py``).
In a small world that schedule mostly picks windows where nothing in particular happens, and
the few windows that show a rare achievement (a table placed) are swamped by frequent ones
(wood chopped). Here the goal times are chosen where things happen instead:

1. anchors = the frames where an event became visible (the ``event`` key of the episode's
   annotations, which ``aimc data generate --env crafter`` writes), shifted 0..``jitter``
   frames later so that the window shows the outcome. Events that complete the goal the
   demonstrator was pursuing are always kept; any other event is kept with probability
   ``keep(e) = (rarest count / count(e)) ** rarity_power``, so rare events are always visible
   and frequent ones only sometimes;
2. gaps longer than ``max_btwn_goals`` are filled with STEVE-1's random goal times;
3. step t is conditioned on the first anchor a with t <= a + 1 (held up to the step after
   it, as STEVE-1), and a whole sequence is unconditioned with probability ``p_uncond``.

The anchor windows are exactly what the prior learns to produce from a caption (the prior's
pairs are captions with the embedding of the window ending at their event), so the goals a
policy sees at test time look like the ones it was trained on.

Several stores (or splits) are mixed by weight exactly as the data loader mixes them
(``mixture.py``): item k draws its source with the mixture's probabilities, then an episode.

Episodes with acted goals (``relabel.has_acted_goals``: ``aimc online``'s labelled play) have
no events and are not relabeled: step t's goal is the goal the player acted on at frame t, as
stored (not standardized, never zeroed by ``p_uncond``). A store of such episodes needs no
event annotations.

    batches = EventGoalBatches(["runs/quickstart/store"], T=16, batch_size=64)
    b = batches.batch(0)   # {"img": uint8 (B,T,H,W,3), "goal": float (B,T,D), "actions": {...}, "first": bool (B,T)}
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aimc.data.loader import collate_sequences
from aimc.data.mixture import MixtureSource, resolve_sources, source_probabilities
from aimc.data.relabel import check_sequence_args, goal_index_per_step, has_acted_goals
from aimc.errors import UserError


class EventGoalBatches:
    """Training batches of embedded, captioned stores, stateless by index (``batch(k)``).

    stores: one store / a list of stores, ``"path:split"`` strings or :class:`MixtureSource`;
    weights: share of the items per source (None = by size); split: default split name;
    episode_ids: only these episodes (one store only). T, batch_size, p_uncond, min_btwn_goals,
    max_btwn_goals: as STEVE-1 (``min_btwn_goals >= 15``: the first 15 frames have no embedding).
    jitter: anchors are moved 0..jitter frames after the event. rarity_power: how strongly
    frequent events are thinned (0 = keep all). standardize: feed goals as (e - mean) / std per
    dimension over the valid frames (see :func:`goal_statistics`); a small embedder's raw
    embeddings share a large common component that hides the goal. The prior must then be
    trained on standardized embeddings too. switch_start: chance that a sequence starts where
    the demonstrator picked a new goal (a ``goal_segments`` start in the episode's meta) instead
    of anywhere: with no history yet, only the goal says where to go, as when an agent is first
    given an instruction. seed, rank: batch k of rank r is drawn from rng(seed, r, k).
    """

    def __init__(
        self,
        stores: str | Path | MixtureSource | Sequence[str | Path | MixtureSource],
        *,
        weights: Sequence[float] | None = None,
        split: str | None = "train",
        episode_ids: list[str] | None = None,
        T: int = 64,
        batch_size: int = 16,
        p_uncond: float = 0.2,
        min_btwn_goals: int = 15,
        max_btwn_goals: int = 60,
        jitter: int = 3,
        rarity_power: float = 1.0,
        standardize: bool = False,
        switch_start: float = 0.0,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        check_sequence_args(T, p_uncond, min_btwn_goals, max_btwn_goals)
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if jitter < 0 or rarity_power < 0:
            raise UserError(f"jitter and rarity_power must be >= 0, got {jitter}, {rarity_power}")
        if not 0.0 <= switch_start <= 1.0:
            raise UserError(f"switch_start must be in [0, 1], got {switch_start}")
        specs = [stores] if isinstance(stores, (str, Path, MixtureSource)) else list(stores)
        if episode_ids is not None and len(specs) != 1:
            raise UserError("episode_ids selects episodes of one store; give one store")
        self.T, self.batch_size, self.p_uncond = T, batch_size, p_uncond
        self.min_btwn_goals, self.max_btwn_goals, self.jitter = min_btwn_goals, max_btwn_goals, jitter
        self.switch_start, self.seed, self.rank, self.standardize = switch_start, seed, rank, standardize

        self.frames: list[np.ndarray] = []  # per episode (N, H, W, 3) uint8
        self.actions: list[dict[str, np.ndarray]] = []  # head -> (N,)
        self.emb: list[np.ndarray] = []  # (N, D) float32
        self.valid: list[np.ndarray] = []  # (N,) bool
        self.acted: list[bool] = []  # the episode's embeddings are the goals acted on: used as stored
        self.events: list[list[tuple[int, str, bool]]] = []  # (frame, event, completes the pursued goal)
        self.switches: list[np.ndarray] = []  # frames where a new goal was picked (sequence starts)
        self.sources = resolve_sources([str(s) if isinstance(s, Path) else s for s in specs], weights, split)
        self._members: list[np.ndarray] = []  # per source: its episodes' positions in the lists above
        for src in self.sources:
            first = len(self.frames)
            for eid in episode_ids if episode_ids is not None else src.episode_ids:
                self._load(src.store.open(eid))
            relabeled = [i for i in range(first, len(self.frames)) if not self.acted[i]]
            if relabeled and not any(self.events[i] for i in relabeled):
                raise UserError(
                    f"{src.store.root}: no episode has event annotations (an annotation's \"event\" key), which "
                    "data.relabel=events anchors goals at; record the store with `aimc data generate --env crafter` "
                    "(it writes them) or train with data.relabel=steve1"
                )
            self._members.append(np.arange(first, len(self.frames)))
        if not self.frames:
            raise UserError(f"{', '.join(str(s.store.root) for s in self.sources)}: no episode of the '{split}' split "
                            f"has more than T={T} frames")
        counts = Counter(e for evs in self.events for _, e, _ in evs)
        rarest = min(counts.values()) if counts else 1
        self.keep = {e: min(1.0, (rarest / n) ** rarity_power) for e, n in counts.items()}
        starts = [np.asarray([len(self.frames[i]) - T + 1 for i in m], dtype=np.float64) for m in self._members]
        self._episode_p = [s / s.sum() if len(s) else s for s in starts]  # episodes by their window count
        self._source_p = source_probabilities([float(s.sum()) for s in starts], [s.weight for s in self.sources])
        self.goal_dim = int(self.emb[0].shape[1])
        self.goal_mean = np.zeros(self.goal_dim, np.float32)
        self.goal_std = np.ones(self.goal_dim, np.float32)
        hindsight = [i for i, a in enumerate(self.acted) if not a]
        if standardize and hindsight:  # acted goals are already what the policy was fed: kept as they are
            self.goal_mean, self.goal_std = goal_statistics([self.emb[i] for i in hindsight],
                                                            [self.valid[i] for i in hindsight])
            for i in hindsight:
                self.emb[i] = ((self.emb[i] - self.goal_mean) / self.goal_std).astype(np.float32)
        self.num_frames = int(sum(len(f) for f in self.frames))

    def _load(self, ep) -> None:
        acted = has_acted_goals(ep.meta)
        if ep.num_frames < self.T + (0 if acted else 1):
            return
        got = ep.embeddings()
        if got is None:
            raise UserError(f"{ep.path}: no goal embeddings; run `aimc data embed` on its store first")
        n = ep.num_frames
        if acted and not np.asarray(got[1], dtype=bool).all():
            raise UserError(f"{ep.path}: an episode of acted goals must have a goal at every frame (embed_valid all true)")
        heads = ep.meta.get("policy_heads") or [k for k in ep.actions() if not k.startswith("env_")]
        self.frames.append(ep.frames(0, n))
        self.actions.append({k: np.array(ep.actions()[k], dtype=np.int64) for k in heads})  # a copy: in memory
        self.emb.append(np.asarray(got[0], dtype=np.float32))
        self.valid.append(np.asarray(got[1], dtype=bool))
        self.acted.append(acted)
        self.events.append([] if acted else _episode_events(ep))
        starts = {int(g[0]) for g in ep.meta.get("goal_segments", []) if int(g[0]) <= n - self.T}
        self.switches.append(np.asarray(sorted(starts), dtype=np.int64))

    def anchors(self, rng: np.random.Generator, i: int) -> np.ndarray:
        """Goal time steps of episode ``i`` (sorted, all with valid embeddings)."""
        n = len(self.frames[i])
        valid = self.valid[i]
        picked = []
        for f, e, completes in self.events[i]:
            if completes or rng.random() < self.keep.get(e, 1.0):
                a = min(f + int(rng.integers(0, self.jitter + 1)), n - 1)
                if valid[a]:
                    picked.append(a)
        picked = sorted(set(picked)) + [n - 1]
        out: list[int] = []
        cur = 0
        for a in picked:
            while a - cur > self.max_btwn_goals:  # fill long gaps as STEVE-1 would
                cur += int(rng.integers(self.min_btwn_goals, self.max_btwn_goals))
                if cur < n - 1 and valid[cur]:
                    out.append(cur)
            if not out or a > out[-1]:
                out.append(a)
            cur = a
        return np.asarray(sorted(set(out)), dtype=np.int64)

    def item(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One T-frame sequence: {"img" (T,H,W,3), "goal" (T,D), "actions" {head: (T,)}, "first" (T,)}."""
        s = int(rng.choice(len(self.sources), p=self._source_p)) if len(self.sources) > 1 else 0
        i = int(rng.choice(self._members[s], p=self._episode_p[s]))
        if self.switch_start and len(self.switches[i]) and rng.random() < self.switch_start:
            start = int(self.switches[i][rng.integers(0, len(self.switches[i]))])
        else:
            start = int(rng.integers(0, len(self.frames[i]) - self.T + 1))
        stop = start + self.T
        goal = np.zeros((self.T, self.goal_dim), dtype=np.float32)  # (T, D)
        if self.acted[i]:
            goal = self.emb[i][start:stop].copy()  # the goals acted on, frame by frame
        else:
            anchors = self.anchors(rng, i)
            if rng.random() >= self.p_uncond:
                goal = self.emb[i][goal_index_per_step(anchors, start, stop)]  # anchors end at the last frame
        first = np.zeros(self.T, dtype=bool)
        first[0] = True
        return {"img": self.frames[i][start:stop], "goal": goal,
                "actions": {k: v[start:stop] for k, v in self.actions[i].items()}, "first": first}

    def reseeded(self, seed: int) -> EventGoalBatches:
        """The same episodes (held in memory once) drawn from another random stream: batch k
        from rng(seed, rank, k). For several trainings over the same data."""
        other = copy.copy(self)
        other.seed = int(seed)
        return other

    def batch(self, index: int) -> dict:
        """Batch ``index``: {"img" (B,T,H,W,3) uint8, "goal" (B,T,D), "actions" {head: (B,T)}, "first" (B,T)}."""
        rng = np.random.default_rng([self.seed, self.rank, int(index)])
        return collate_sequences([self.item(rng) for _ in range(self.batch_size)])

    def describe(self) -> dict:
        """Sizes and probabilities, for logs (the same keys as ``SequenceDataset.describe``)."""
        return {
            "relabel": "events",
            "sources": [{"store": str(s.store.root), "episodes": len(s.episode_ids), "eligible": int(len(m)), "p": float(p)}
                        for s, m, p in zip(self.sources, self._members, self._source_p)],
            "usable_frames": self.num_frames,
            "acted_goal_episodes": int(sum(self.acted)),
            "goal_dim": self.goal_dim,
            "action_keys": list(self.actions[0]),
            "events": len(self.keep),
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
