"""The agent: a goal-conditioned policy plus the ways to give it a goal.

STEVE-1 acts towards a *visual* goal, a MineCLIP video embedding. A goal comes from

* text: MineCLIP's text encoder, then the prior (a CVAE) that maps text embeddings to visual
  ones; sampled (a fresh latent per episode, seeded) or deterministic (latent 0);
* a goal video: the MineCLIP embedding of a short clip of the wanted behaviour;
* nothing: the zero embedding, i.e. the unconditioned policy.

Acting uses classifier-free guidance in one batched forward: the recurrent state holds a
conditional and an unconditional row per environment, and the policy mixes their scores as
``(1 + s) * cond - s * uncond`` with ``s = cond_scale`` (see ``STEVE1Policy.act``).

    agent = Agent.load("run/final.safetensors", mineclip="mineclip.safetensors",
                       prior="prior.safetensors", cond_scale=6.0)   # None: found beside the weights
    agent.reset(batch_size=4)
    goals = agent.text_goals(["chop a tree"] * 4, seeds=[0, 1, 2, 3])   # (4, D)
    actions = agent.act(frames, goals, first)                              # {"action": (4,)}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aimc.errors import UserError
from aimc.utils.device import autocast, resolve_device

# STEVE-1 embeds the last 16 frames as a goal clip (the MineCLIP window it was trained with).
GOAL_CLIP_FRAMES = 16


_COMPANIONS = {
    "mineclip": ("mineclip.safetensors", "mineclip/model.safetensors", "mineclip/checkpoints/last.safetensors",
                 "mineclip/mineclip.safetensors", "attn.pth"),
    "prior": ("prior.safetensors", "prior/model.safetensors", "prior/checkpoints/last.safetensors",
              "prior/prior.safetensors", "steve1_prior.pt"),
}


def find_companion(weights: str | Path, kind: str) -> Path | None:
    """The MineCLIP (``kind="mineclip"``) or prior (``"prior"``) checkpoint that belongs to
    ``weights``: the first known file name in the weights' folder or the three above it."""
    start = Path(weights).resolve().parent
    for folder in [start, *list(start.parents)[:3]]:
        for name in _COMPANIONS[kind]:
            if (folder / name).is_file():
                return folder / name
    return None


class GraphedGuidedAct:
    """The guided ``STEVE1Policy.act`` step for a fixed batch, captured in a CUDA graph (GPU only).

    Inputs are copied into static buffers, the recurrent state is updated in place inside the
    graph, and one ``replay`` runs the whole step with no host synchronisation; the actions
    (and ``info``, the step's log-probs and values) come back in static buffers that the next
    replay overwrites. ``amp_dtype`` (e.g. bfloat16) runs it under autocast. Sampling uses the
    default CUDA generator (seed it with ``torch.cuda.manual_seed``).
    """

    def __init__(self, policy: Any, batch_size: int, cond_scale: float, stochastic: bool = True,
                 amp_dtype: torch.dtype | None = None) -> None:
        device = next(policy.parameters()).device
        h, w = (int(v) for v in policy.cfg.img_shape[:2])
        self.policy, self.cond_scale, self.stochastic, self.amp_dtype = policy, cond_scale, stochastic, amp_dtype
        self.img = torch.zeros(batch_size, h, w, 3, dtype=torch.uint8, device=device)
        self.goal = torch.zeros(batch_size, policy.cfg.mineclip_embed_dim, device=device)
        self.first = torch.ones(batch_size, dtype=torch.bool, device=device)
        self.state = policy.initial_state(2 * batch_size, device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up (cuBLAS handles, autocast) outside the capture
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.actions, self.info = self._step()
        self.reset_state()

    def _step(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        with autocast("cuda", self.amp_dtype, cache_enabled=False):
            actions, new_state, info = self.policy.act(self.img, self.goal, self.first, self.state,
                                                       cond_scale=self.cond_scale, stochastic=self.stochastic)
        for old, new in zip(self.state, new_state):
            for o, n in zip(old, new):
                o.copy_(n)
        return actions, info

    def reset_state(self) -> None:
        fresh = self.policy.initial_state(self.img.shape[0] * 2, self.img.device)
        for old, new in zip(self.state, fresh):
            for o, n in zip(old, new):
                o.copy_(n)

    def __call__(self, img: torch.Tensor, goal: torch.Tensor, first: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step; the actions {head: (B,)} (``self.info`` holds the step's info)."""
        self.img.copy_(img, non_blocking=True)
        self.goal.copy_(goal, non_blocking=True)
        self.first.copy_(first, non_blocking=True)
        self.graph.replay()
        return self.actions


class Agent:
    """Policy + goal sources + guided batched acting (implements ``aimc.eval.runner.EvalAgent``).

    policy: an ``aimc.models.vpt.STEVE1Policy`` (anything with its ``initial_state``/``act``).
    mineclip: ``aimc.models.mineclip.MineCLIP`` for text and video goals (None: only zero goals).
    prior: ``aimc.models.prior.PriorCVAE`` mapping text to visual embeddings (None: the text
      embedding is used as the goal directly).
    cond_scale: guidance strength s (0 = plain conditional policy, one row per env).
    stochastic: sample actions (True, as STEVE-1) or take the argmax.
    deterministic_prior: use the prior's mean latent instead of sampling one per episode.
    device: where the networks run. amp_dtype: e.g. torch.bfloat16 for autocast on GPU.
    seed: seeds action sampling.
    cuda_graph: on a GPU, capture each guided step in a CUDA graph (:class:`GraphedGuidedAct`).

    Sampling streams: each episode started with :meth:`begin_episode` (the rollout collector
    does it for every episode) draws its actions from a stream of its own, seeded by ``seed``
    and the episode's world seed. So the same weights on the same world play the same episode
    whatever else is in the batch (slot, batch size, workers, the order of the episodes, a
    resumed evaluation), and two checkpoints compared on the same worlds see the same random
    numbers (their results differ only where their choices do). Without ``begin_episode``, and
    with ``cuda_graph``, the batch shares one stream seeded by ``seed``.
    """

    def __init__(
        self,
        policy: Any,
        mineclip: Any = None,
        prior: Any = None,
        cond_scale: float = 6.0,
        stochastic: bool = True,
        deterministic_prior: bool = False,
        device: str | torch.device | None = None,
        amp_dtype: torch.dtype | None = None,
        seed: int = 0,
        name: str = "",
        cuda_graph: bool = False,
    ) -> None:
        self.device = torch.device(device) if device is not None else next(policy.parameters()).device
        self.policy = policy.to(self.device).eval()
        self.mineclip = mineclip.to(self.device).eval() if mineclip is not None else None
        self.prior = prior.to(self.device).eval() if prior is not None else None
        self.cond_scale = float(cond_scale)
        self.stochastic = stochastic
        self.deterministic_prior = deterministic_prior
        self.amp_dtype = amp_dtype
        self.name = name
        self.embed_dim = int(policy.cfg.mineclip_embed_dim)
        self.img_size = tuple(int(v) for v in policy.cfg.img_shape[:2])  # (H, W)
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self._streams: list[torch.Generator] | None = None  # one per slot, from begin_episode
        self.state: Any = None
        self.batch_size = 0
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self._graph: GraphedGuidedAct | None = None
        if self.cuda_graph:
            torch.cuda.manual_seed(int(seed))
        self._text_cache: dict[str, torch.Tensor] = {}
        self._tokenizer: Any = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        weights: str | Path,
        mineclip: str | Path | None = None,
        prior: str | Path | None = None,
        device: str | None = None,
        *,
        model: str | Path | None = None,
        companions: bool = True,
        need_text: bool = False,
        **kwargs: Any,
    ) -> Agent:
        """An agent from files: the policy (``.safetensors`` + ``.yaml`` beside it, or official
        ``.weights`` + ``model``, the ``.model`` file), MineCLIP and the prior.

        mineclip / prior: checkpoint paths; None looks for the checkpoint that belongs to the
        weights (:func:`find_companion`) unless ``companions`` is False. need_text: fail with a
        :class:`UserError` when no MineCLIP checkpoint is found (text prompts need one).
        device: default cuda if available. ``kwargs`` go to :class:`Agent` (``cond_scale``,
        ``stochastic``, ``seed``, ``amp_dtype``, ``cuda_graph`` ...). The agent's name (what
        :meth:`describe` reports, checked when an evaluation resumes) is the weights' full path.
        """
        from aimc.checkpoints.vpt import load_policy

        dev = resolve_device(device)
        policy = load_policy(weights, model_path=model)
        if mineclip is None and companions:
            mineclip = find_companion(weights, "mineclip")
        if prior is None and companions:
            prior = find_companion(weights, "prior")
        clip = pri = None
        if mineclip is not None:
            from aimc.checkpoints.mineclip import load_mineclip

            clip = load_mineclip(mineclip)
        elif need_text:
            raise UserError(f"no MineCLIP checkpoint found near {weights}: pass --mineclip PATH")
        if prior is not None:
            from aimc.checkpoints.prior import load_prior

            pri = load_prior(prior)
        kwargs.setdefault("name", str(Path(weights).resolve()))
        return cls(policy, clip, pri, device=dev, **kwargs)

    def describe(self) -> dict:
        """What identifies this agent's results (checked when an evaluation is resumed)."""
        return {
            "weights": self.name, "cond_scale": self.cond_scale, "stochastic": self.stochastic,
            "deterministic_prior": self.deterministic_prior, "prior": self.prior is not None,
            "embed_dim": self.embed_dim,
        }

    # ------------------------------------------------------------------ goals
    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def zero_goal(self) -> np.ndarray:
        return np.zeros(max(self.embed_dim, 1), dtype=np.float32)

    @torch.no_grad()
    def text_goals(self, texts: Sequence[str], seeds: Sequence[int] | None = None) -> np.ndarray:
        """Visual goals for prompts: (B, D) float32. ``seeds`` fix each prompt's prior sample."""
        if self.mineclip is None:
            raise UserError("text prompts need a MineCLIP model: pass --mineclip PATH (and --prior PATH)")
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            if self._tokenizer is None:
                from aimc.models.tokenizer import ClipTokenizer

                self._tokenizer = ClipTokenizer()
            emb = self.mineclip.encode_text(self._tokenizer.tokenize(missing)).float()  # (T, D)
            for t, e in zip(missing, emb):
                self._text_cache[t] = e
        text_emb = torch.stack([self._text_cache[t] for t in texts])  # (B, D)
        if self.prior is None:
            goal = text_emb
        elif self.deterministic_prior:
            goal = self.prior(text_emb, deterministic=True)
        else:
            z = self.prior.cfg.latent_dim
            eps = torch.stack([
                torch.randn(z, generator=torch.Generator().manual_seed(int(s)))
                for s in (seeds if seeds is not None else range(len(texts)))
            ]).to(self.device)
            goal = self.prior(text_emb, eps=eps)
        goal = goal.float().cpu().numpy()
        if goal.shape[1] != self.embed_dim:
            raise UserError(
                f"MineCLIP/prior give {goal.shape[1]}-d goals but the policy expects {self.embed_dim}-d: "
                "use the embedder the policy was trained with"
            )
        return goal

    @torch.no_grad()
    def video_goal(self, frames: np.ndarray) -> np.ndarray:
        """MineCLIP embedding of a goal clip: frames (L, H, W, 3) uint8 RGB -> (D,) float32.

        The last 16 frames are used (shorter clips are used whole).
        """
        if self.mineclip is None:
            raise UserError("a goal video needs a MineCLIP model: pass --mineclip PATH")
        from aimc.models.mineclip import preprocess_frames

        frames = np.asarray(frames, dtype=np.uint8)[-GOAL_CLIP_FRAMES:]
        clip = preprocess_frames(frames, tuple(self.mineclip.cfg.resolution))  # (L, 3, h, w)
        with self._autocast():
            emb = self.mineclip.encode_video(torch.from_numpy(clip)[None].to(self.device))  # (1, D)
        return emb[0].float().cpu().numpy()

    def goal(self, instruction: str | None, seed: int) -> np.ndarray:
        """One goal (D,): zero for ``None``, else the text goal sampled with ``seed``."""
        if instruction is None:
            return self.zero_goal()
        return self.text_goals([instruction], [seed])[0]

    # ------------------------------------------------------------------ acting
    def reset(self, batch_size: int) -> None:
        """Fresh recurrent state for ``batch_size`` environments (2 rows each when guided)."""
        self.batch_size = batch_size
        self._streams = None
        if self.cuda_graph and self.guided:
            if self._graph is None or self._graph.img.shape[0] != batch_size:
                self._graph = GraphedGuidedAct(self.policy, batch_size, self.cond_scale, self.stochastic, self.amp_dtype)
            else:
                self._graph.reset_state()
            self.state = self._graph.state
            return
        rows = 2 * batch_size if self.guided else batch_size
        self.state = self.policy.initial_state(rows, self.device)

    def begin_episode(self, slot: int, world_seed: int) -> None:
        """Slot ``slot`` starts an episode on world ``world_seed``: its actions are drawn from a
        stream of its own (see the class docstring). Call after :meth:`reset`."""
        if self.cuda_graph:
            return  # a captured graph draws from the device's one stream
        if self._streams is None or len(self._streams) != self.batch_size:
            self._streams = [torch.Generator(device=self.device) for _ in range(self.batch_size)]
        key = np.random.SeedSequence([self.seed, int(world_seed) & 0xFFFFFFFFFFFF, 0x5A3]).generate_state(2, np.uint32)
        self._streams[slot].manual_seed(int(key[0]) << 32 | int(key[1]))

    @property
    def guided(self) -> bool:
        return self.cond_scale != 0 and self.embed_dim > 0

    def _prepare(self, frames: np.ndarray) -> torch.Tensor:
        frames = np.asarray(frames, dtype=np.uint8)
        if frames.shape[1:3] != self.img_size:
            from aimc.actions.image import _resize_frames

            frames = _resize_frames(frames, *self.img_size)
        return torch.from_numpy(np.ascontiguousarray(frames)).to(self.device, non_blocking=True)

    @torch.no_grad()
    def act(self, frames: np.ndarray, goals: np.ndarray, first: np.ndarray, return_info: bool = False):
        """frames (B, H, W, 3) uint8, goals (B, D), first (B,) bool -> actions {head: int64 (B,)}.

        ``first[i]`` starts a new episode in slot i (its carried memory is dropped). Every step
        goes through ``STEVE1Policy.act`` (guided when :attr:`guided`), the one acting path.
        ``return_info``: return ``(actions, info)`` with what the policy computed: ``log_prob``
        (B,) float32, the log-probability of each sampled action under the (guided, normalised)
        distribution it was drawn from; ``value`` (B,) float32, the value head's denormalised
        estimate for the conditional row; ``goal`` (B, D) float32, the goals acted on.
        """
        if self.state is None or len(frames) != self.batch_size:
            self.reset(len(frames))
        img = self._prepare(frames)
        goal = torch.as_tensor(np.asarray(goals, np.float32), device=self.device) if self.embed_dim > 0 else None
        first_t = torch.as_tensor(np.asarray(first, bool), device=self.device)
        if self._graph is not None:
            actions, info = self._graph(img, goal, first_t), self._graph.info
        else:
            with self._autocast():
                actions, self.state, info = self.policy.act(
                    img, goal, first_t, self.state, cond_scale=self.cond_scale if self.guided else 0.0,
                    stochastic=self.stochastic, generator=self._streams or self.generator)
        out = {k: v.cpu().numpy().astype(np.int64) for k, v in actions.items()}
        if not return_info:
            return out
        return out, {"log_prob": info["sampled_log_prob"].float().cpu().numpy(),
                     "value": info["vpred"].float().cpu().numpy(),
                     "goal": np.asarray(goals, np.float32).copy()}


class RandomAgent:
    """Uniformly random actions: the floor every model should beat (``aimc eval --baseline random``)."""

    def __init__(self, heads: dict[str, int], seed: int = 0) -> None:
        self.heads = dict(heads)
        self.rng = np.random.default_rng(seed)
        self.cond_scale = 0.0

    def describe(self) -> dict:
        return {"weights": "random", "heads": self.heads}

    def reset(self, batch_size: int) -> None:
        pass

    def zero_goal(self) -> np.ndarray:
        return np.zeros(1, np.float32)

    def goal(self, instruction: str | None, seed: int) -> np.ndarray:
        return self.zero_goal()

    def text_goals(self, texts: Sequence[str], seeds: Sequence[int] | None = None) -> np.ndarray:
        return np.zeros((len(texts), 1), np.float32)

    def act(self, frames: np.ndarray, goals: np.ndarray, first: np.ndarray) -> dict[str, np.ndarray]:
        return {k: self.rng.integers(0, n, size=len(frames)) for k, n in self.heads.items()}


class ExpertAgent:
    """Tells the scripted demonstrator (env ``crafter-expert``) which goal an instruction names.

    ``instructions`` maps each instruction text to a demonstrator goal (a Crafter achievement
    such as ``place_table``); the action is that goal's index + 1, or 0 without instruction.
    """

    def __init__(self, instructions: dict[str, str], goals: Sequence[str]) -> None:
        unknown = sorted({g for g in instructions.values() if g not in goals})
        if unknown:
            raise UserError(f"the scripted expert cannot pursue {unknown}; it knows {', '.join(goals)}")
        self.index = {text: list(goals).index(g) + 1 for text, g in instructions.items()}
        self.n = len(goals) + 1
        self.cond_scale = 0.0

    def describe(self) -> dict:
        return {"weights": "scripted-expert"}

    def reset(self, batch_size: int) -> None:
        pass

    def zero_goal(self) -> np.ndarray:
        g = np.zeros(self.n, np.float32)
        g[0] = 1
        return g

    def goal(self, instruction: str | None, seed: int) -> np.ndarray:
        g = np.zeros(self.n, np.float32)
        g[self.index.get(instruction, 0) if instruction else 0] = 1
        return g

    def act(self, frames: np.ndarray, goals: np.ndarray, first: np.ndarray) -> dict[str, np.ndarray]:
        return {"goal": np.asarray(goals).argmax(1).astype(np.int64)}


class PromptSchedule:
    """Prompts that take turns: ``prompts[(step // switch_every) % len(prompts)]``."""

    def __init__(self, prompts: Sequence[str], switch_every: int) -> None:
        prompts = [p.strip() for p in prompts if p.strip()]
        if not prompts:
            raise UserError("the prompt schedule is empty: give at least one prompt (--prompts 'a;b')")
        if switch_every <= 0:
            raise UserError(f"--switch-every must be a positive number of steps, got {switch_every}")
        self.prompts = prompts
        self.switch_every = switch_every

    def prompt_at(self, step: int) -> str:
        return self.prompts[(step // self.switch_every) % len(self.prompts)]


@contextlib.contextmanager
def acting_threads(agent: Any) -> Iterator[None]:
    """One torch thread while ``agent`` acts on the CPU: a batch of a few small frames gains nothing
    from more, and on a machine shared with other jobs two threads made each step of the built-in
    world's policy for 8 worlds 90 times slower (675 ms against 7.4 ms, docs/online.md). Agents
    without a torch device (random, scripted) are left alone."""
    device = getattr(agent, "device", None)
    if getattr(device, "type", None) != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
