"""Rollouts for PPO: whole episodes played by the rollout collector, cut into fragments, with GAE.

Each env slot of :class:`aimc.agent.rollout.RolloutCollector` plays a stream of episodes; the
batched step k is position k of every slot's stream. The policy's recurrent state is copied
for every slot at each fragment start (k = 0, F, 2F, ...), and ``first`` marks every
episode start, so that the update replays fragment (slot, f) from its stored state and gets
the same log-probabilities the rollout sampled from: the replay resets the state at every
``first`` inside a fragment (:func:`reset_at_every_first`), as step-by-step acting does.
Positions where a slot had nothing to play are masked (``valid`` False).

An update plays whole episodes (every episode of the update ends inside it), so no return is
ever bootstrapped across an update and a resumed run restarts at an update boundary with
nothing in flight. An episode ends when the env ends it, at its horizon or at its task's
success (``stop_on_success``); every end is terminal for GAE: after it the instructed task
can earn nothing more.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aimc.rl.rewards import TaskSuccessReward


@dataclass
class PlannedEpisode:
    """One episode of an update: a task (None = unconditioned) phrased one way, on one world."""

    index: int
    task: Any
    instruction: str | None
    seed: int
    env: dict
    horizon: int
    retries: int = 0


@dataclass
class Rollout:
    """An update's data, arrays indexed (slot, position) with positions padded to whole fragments."""

    img: np.ndarray  # (S, K, H, W, 3) uint8: the frame each action was chosen on
    goal: np.ndarray  # (S, K, D) float32
    first: np.ndarray  # (S, K) bool: an episode starts here
    actions: dict[str, np.ndarray]  # {head: (S, K) int64}
    log_prob: np.ndarray  # (S, K) the rollout's log-probability of each action
    value: np.ndarray  # (S, K) the value head's (denormalised) estimate
    reward: np.ndarray  # (S, K)
    terminal: np.ndarray  # (S, K) bool: the episode ended with this step
    valid: np.ndarray  # (S, K) bool
    states: list[Any]  # per fragment f: the policy's recurrent state (S rows) at position f x F
    fragment: int
    episodes: list[dict] = field(default_factory=list)  # one row per finished episode
    crashes: list[dict] = field(default_factory=list)
    ref_logits: dict[str, np.ndarray] | None = None  # {head: (S, K, n)} the reference policy's log-probs
    advantages: np.ndarray | None = None
    returns: np.ndarray | None = None
    features: np.ndarray | None = None  # (S, K, hidsize) the frozen CNN's features (model.freeze [cnn])

    @property
    def steps(self) -> int:
        return int(self.valid.sum())

    @property
    def fragments(self) -> list[tuple[int, int]]:
        """(slot, fragment index) of every fragment holding at least one valid step."""
        S, K = self.valid.shape
        F = self.fragment
        return [(s, f) for s in range(S) for f in range(K // F) if self.valid[s, f * F:(f + 1) * F].any()]


def clone_state(state: Any) -> Any:
    return [tuple(t.detach().clone() for t in layer) for layer in state]


def gather_states(states: list[Any], index: list[tuple[int, int]], device: torch.device) -> Any:
    """The stored start states of fragments ``index`` [(slot, f)], stacked into one batch."""
    layers = len(states[0])
    out = []
    for layer in range(layers):
        parts = len(states[0][layer])
        out.append(tuple(torch.stack([states[f][layer][p][s] for s, f in index]).to(device) for p in range(parts)))
    return out


@contextlib.contextmanager
def reset_at_every_first(policy: torch.nn.Module) -> Iterator[None]:
    """Within the block the policy resets its recurrent state at every ``first`` of a chunk, not
    only at the chunk's first frame (``PolicyConfig.reset_on_every_first``): a fragment holding
    an episode start is then replayed exactly as it was acted, one step at a time."""
    mods = [m for m in policy.modules() if hasattr(m, "every_first")]
    before = [m.every_first for m in mods]
    for m in mods:
        m.every_first = True
    try:
        yield
    finally:
        for m, b in zip(mods, before):
            m.every_first = b


def collect(agent: Any, planned: list[PlannedEpisode], *, num_envs: int, fragment: int,
            reward_factory: Callable[[Any, str | None], Any], stop_on_success: bool = True, workers: int = 0,
            vec: Any = None, max_retries: int = 2, on_episode: Callable[[dict], None] | None = None,
            keep_features: bool = False) -> Rollout:
    """Play every planned episode to its end with ``agent`` (an :class:`aimc.agent.Agent` at
    guidance 0) and return the update's :class:`Rollout`. A crashed env's episode is played
    again from its seed (at most ``max_retries`` times) and recorded in ``Rollout.crashes``.
    ``keep_features``: keep the image encoder's output of every step as acting computed it
    (``Rollout.features``; for a frozen CNN, so that the update never runs the CNN again)."""
    from aimc.agent.rollout import Episode, RolloutCollector

    queue = list(planned)
    S = num_envs
    current: list[dict | None] = [None] * S
    rows: list[dict[str, Any]] = []  # per batched step k: what each slot did
    episodes: list[dict] = []
    crashes: list[dict] = []
    states: list[Any] = []

    def next_episode(s: int) -> Episode | None:
        if not queue:
            return None
        p = queue.pop(0)
        current[s] = {"plan": p, "reward": reward_factory(p.task, p.instruction),
                      "success": TaskSuccessReward(p.task), "obs": None, "ret": 0.0, "steps": 0}
        goal = agent.zero_goal() if p.instruction is None else None
        return Episode(p.env, p.seed, instruction=p.instruction, goal=goal, horizon=p.horizon, tag=p)

    def started(s: int, ep: Episode, frame: np.ndarray, measures: dict) -> None:
        c = current[s]
        c["obs"] = frame
        c["reward"].reset(frame, measures)
        c["success"].reset(frame, measures)

    def crashed(cr) -> None:
        p = cr.episode.tag
        crashes.append({"episode": p.index, "seed": p.seed, "step": cr.step, "message": cr.message,
                        "replayed": p.retries < max_retries})
        if p.retries < max_retries:
            queue.insert(0, PlannedEpisode(p.index, p.task, p.instruction, p.seed, p.env, p.horizon, p.retries + 1))
        current[cr.slot] = None

    seen: list[Any] = [None]  # the image encoder's last output (B, 1, D)
    with contextlib.ExitStack() as stack:
        if keep_features:
            hook = agent.policy.net.img_process.register_forward_hook(lambda m, i, o: seen.__setitem__(0, o))
            stack.callback(hook.remove)
        collector = RolloutCollector(agent, S, next_episode, workers=workers, vec=vec, on_start=started,
                                     on_crash=crashed)
        stack.enter_context(collector)
        k = 0
        while True:
            collector.fill()  # free slots start their episodes now: their first frame is the one acted on
            if k % fragment == 0:  # the state the next act starts from
                if agent.state is None or agent.batch_size != S:
                    agent.reset(S)
                states.append(clone_state(agent.state))
            firsts = collector.first.copy()
            obs = [current[s]["obs"] if current[s] is not None else None for s in range(S)]
            records = collector.step()
            if not records and not collector.active():
                states.pop() if k % fragment == 0 else None
                break
            feats = seen[0][:, 0].float().cpu().numpy() if keep_features and seen[0] is not None else None
            if feats is not None and len(feats) != S:
                raise RuntimeError(f"the image encoder ran on {len(feats)} frames for {S} env slots: keep_features "
                                   "needs the unguided policy (cond_scale 0)")
            row: dict[int, dict] = {}
            for r in records:
                s = r.slot
                c = current[s]
                entry = {"img": obs[s], "goal": r.goal, "first": bool(firsts[s]) or r.t == 0, "action": r.action,
                         "log_prob": r.log_prob, "value": r.value, "reward": 0.0, "terminal": True,
                         "feat": feats[s] if feats is not None else None}
                if r.crash is None:
                    reward = float(c["reward"].step(r.frame, r.measures))
                    c["success"].step(r.frame, r.measures)
                    c["ret"] += reward
                    c["steps"] += 1
                    c["obs"] = r.frame
                    done = r.last or (stop_on_success and c["success"].succeeded)
                    entry.update(reward=reward, terminal=done)
                    if done:
                        p = c["plan"]
                        collector.end_episode(s)
                        ep_row = {"episode": p.index, "task": p.task.id if p.task is not None else None,
                                  "instruction": p.instruction, "seed": p.seed, "steps": c["steps"],
                                  "success": c["success"].succeeded, "return": c["ret"]}
                        episodes.append(ep_row)
                        if on_episode is not None:
                            on_episode(ep_row)
                        current[s] = None
                row[s] = entry
            rows.append(row)
            k += 1
    return _to_arrays(rows, states, S, fragment, episodes, crashes)


def _to_arrays(rows: list[dict], states: list[Any], S: int, F: int, episodes: list[dict],
               crashes: list[dict]) -> Rollout:
    K = max(1, math.ceil(len(rows) / F)) * F
    some = next(e for row in rows for e in row.values())
    H, W, C = np.asarray(some["img"]).shape
    D = len(some["goal"])
    heads = list(some["action"])
    img = np.zeros((S, K, H, W, C), np.uint8)
    goal = np.zeros((S, K, D), np.float32)
    first = np.zeros((S, K), bool)
    actions = {h: np.zeros((S, K), np.int64) for h in heads}
    log_prob, value, reward = (np.zeros((S, K), np.float32) for _ in range(3))
    terminal, valid = np.zeros((S, K), bool), np.zeros((S, K), bool)
    features = np.zeros((S, K, len(some["feat"])), np.float32) if some.get("feat") is not None else None
    from aimc.agent.rollout import fit_frame

    for k, row in enumerate(rows):
        for s, e in row.items():
            img[s, k] = fit_frame(np.asarray(e["img"]), (H, W, C))
            goal[s, k] = e["goal"]
            first[s, k] = e["first"]
            for h in heads:
                actions[h][s, k] = e["action"][h]
            log_prob[s, k], value[s, k], reward[s, k] = e["log_prob"], e["value"], e["reward"]
            terminal[s, k], valid[s, k] = e["terminal"], True
            if features is not None:
                features[s, k] = e["feat"]
    while len(states) < K // F:  # cannot happen with whole fragments; kept for safety
        states.append(clone_state(states[-1]))
    return Rollout(img, goal, first, actions, log_prob, value, reward, terminal, valid, states[:K // F], F,
                   episodes, crashes, features=features)


def gae(reward: np.ndarray, value: np.ndarray, terminal: np.ndarray, valid: np.ndarray, gamma: float,
        lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and returns (S, K), per slot stream; an episode's last step
    bootstraps nothing (every episode ends inside its update)."""
    S, K = reward.shape
    adv = np.zeros((S, K), np.float32)
    for s in range(S):
        last = 0.0
        for k in range(K - 1, -1, -1):
            if not valid[s, k]:
                last = 0.0
                continue
            end = terminal[s, k] or k + 1 >= K or not valid[s, k + 1]
            next_value = 0.0 if end else value[s, k + 1]
            delta = reward[s, k] + gamma * next_value - value[s, k]
            last = delta + (0.0 if end else gamma * lam * last)
            adv[s, k] = last
    return adv, (adv + value) * valid


def cnn_frozen(policy: torch.nn.Module) -> bool:
    """True when no parameter of the image encoder is trained (``model.freeze: [cnn]``)."""
    return not any(p.requires_grad for p in policy.net.img_process.parameters())


@torch.no_grad()
def cnn_features(policy: torch.nn.Module, ro: Rollout, device: torch.device, batch: int = 512,
                 amp: Any = None) -> np.ndarray:
    """The image encoder's features of every position (S, K, D), computed once per update: with a
    frozen CNN every epoch and the reference (same CNN weights) reuse them."""
    S, K = ro.valid.shape
    where = np.flatnonzero(ro.valid.reshape(-1))  # padding and idle slots need no features
    flat = ro.img.reshape(S * K, *ro.img.shape[2:])
    out = None
    for i in range(0, len(where), batch):
        idx = where[i:i + batch]
        img = torch.from_numpy(flat[idx]).to(device)[:, None]  # (b, 1, H, W, 3)
        with amp() if amp is not None else contextlib.nullcontext():
            f = policy.net.img_process(img)[:, 0].float().cpu().numpy()
        if out is None:
            out = np.zeros((S * K, f.shape[-1]), np.float32)
        out[idx] = f
    return out.reshape(S, K, -1)


def policy_forward(model: torch.nn.Module, policy: torch.nn.Module, c: dict[str, Any], state: Any):
    """(log-probs {head: (B, T, n)}, normalised value (B, T), new state) of chunk ``c``, with the
    state reset at every episode start; from cached CNN features when ``c`` holds them (``feat``)."""
    with reset_at_every_first(policy):
        if "feat" not in c:
            return model(c["img"], c["goal"], c["first"], state)
        latent, state = policy.net.recur(c["feat"], c["goal"], c["first"].bool(), state)
        return {k: head(latent) for k, head in policy.pi_head.items()}, policy.value_head(latent), state


@torch.no_grad()
def reference_log_probs(ref: torch.nn.Module, ro: Rollout, device: torch.device, batch: int = 64,
                        amp: Any = None) -> dict[str, np.ndarray]:
    """The reference policy's normalised log-probs of every head at every position, from its own
    recurrent state carried along each slot's stream (reset at every ``first``); from
    ``ro.features`` when the CNN is frozen (the reference's CNN is then the same)."""
    S, K = ro.valid.shape
    F = ro.fragment
    out: dict[str, np.ndarray] = {}
    for s0 in range(0, S, batch):
        rows = list(range(s0, min(S, s0 + batch)))
        state = ref.initial_state(len(rows), device)
        for f in range(K // F):
            sl = slice(f * F, (f + 1) * F)
            c = {"goal": torch.from_numpy(ro.goal[rows, sl]).to(device),
                 "first": torch.from_numpy(ro.first[rows, sl]).to(device)}
            if ro.features is not None:
                c["feat"] = torch.from_numpy(ro.features[rows, sl]).to(device)
            else:
                c["img"] = torch.from_numpy(ro.img[rows, sl]).to(device)
            with amp() if amp is not None else contextlib.nullcontext():
                logits, _, state = policy_forward(ref, getattr(ref, "policy", ref), c, state)
            for h, lp in logits.items():
                if h not in out:
                    out[h] = np.zeros((S, K, lp.shape[-1]), np.float32)
                out[h][rows, sl] = lp.float().cpu().numpy()
    return out
