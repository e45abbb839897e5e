"""Typed configuration of ``aimc online`` (DAgger-style rounds); preset ``online_crafter``.

    cfg = load_config(OnlineConfig, "online_crafter", ["rounds=6", "mix.online_share=0.3"])

Sections: ``agent`` (how the current policy acts: MineCLIP, prior, guidance), ``collect`` (the
instructed episodes of a round on training worlds), ``labeller`` (who says what the agent should
have done), ``mix`` (the labelled steps' share of the training frames), ``train`` (the ``aimc
train`` preset each round continues with, and how many frames), ``validate`` (the short
evaluation that picks the best round).

World seeds are split so that no choice is ever made on a world used to report results:
training worlds are below 1,000,000 (the recorded demonstrations start at 0), the evaluation
suites' worlds start at 1,000,000 (``crafter-core``), the held-out test worlds at 3,000,000; the
validation worlds of ``aimc online`` must lie at 4,000,000 or above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aimc.errors import ConfigError

TRAIN_WORLDS_END = 1_000_000  # collect on world seeds below this
VALIDATION_WORLDS_START = 4_000_000  # below: training, evaluation (1,000,000+) and test (3,000,000+) worlds
# TrainConfig keys that aimc online sets itself each round (and the knob that sets each)
ROUND_KEYS = {
    "model.init": "--init (later rounds start from the previous round's weights)",
    "model.goal_dim": "the --init weights (their goal size)",
    "model.policy": "the --init weights (their architecture)",
    "data.stores": "--store and the run's own store",
    "data.weights": "mix.online_share",
    "schedule.n_frames": "train.frames_per_round",
    "schedule.warmup_frames": "train.warmup_fraction",
    "runtime.seed": "seed (round r trains with seed + r)",
}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class OnlineAgentConfig:
    """How the current policy acts, in collection and validation alike (as ``aimc eval`` does)."""

    mineclip: str = ""
    """MineCLIP checkpoint for the instructions' text (empty: found beside the --init weights)."""
    prior: str = ""
    """Prior checkpoint, text embedding -> goal (empty: found beside the --init weights)."""
    cond_scale: float = 1.0
    """Classifier-free guidance scale (1: the built-in world's choice, docs/results.md)."""
    device: str = "auto"
    """Where the agent acts: auto (CUDA if present), cpu, cuda, cuda:N."""

    def __post_init__(self) -> None:
        _check(self.cond_scale >= 0, f"agent.cond_scale must be >= 0, got {self.cond_scale}")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               f"agent.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class OnlineCollectConfig:
    """The episodes the agent plays in a round, on training worlds."""

    episodes: int = 16
    """Instructed episodes per round (tasks take turns; phrasings take turns within a task)."""
    max_steps: int = 0
    """Episode horizon; 0 = each task's ``max_steps`` in the suite."""
    seed: int = 700_000
    """World seed of round 1's first episode; round r plays seeds seed + (r-1) x episodes + i, all
    below 1,000,000 (new worlds every round)."""
    stop_on_success: bool = True
    """End an episode when its task succeeds (the states after it are not the task's)."""
    instructions: dict[str, list[str]] = field(default_factory=dict)
    """Phrasings per task id to play instead of the suite's, e.g. {collect_stone: [mine stone]}."""
    num_envs: int = 8
    """Episodes played at once (the policy's batch)."""
    workers: int = 2
    """Env processes (0 = in this process); the built-in labeller runs inside them."""
    expert_share: list[float] = field(default_factory=list)
    """DAgger's mixing, one value per round (the last repeats; [] = 0): the chance, at each step,
    that the labeller's action is executed instead of the agent's, e.g. [1.0, 0.5, 0.25]. Labels
    are recorded either way; the agent's own states make up the rest. Needs a labeller that can
    act (crafter-demonstrator can)."""

    def __post_init__(self) -> None:
        _check(self.episodes >= 1, f"collect.episodes must be >= 1, got {self.episodes}")
        _check(all(isinstance(b, (int, float)) and 0.0 <= b <= 1.0 for b in self.expert_share),
               f"collect.expert_share must be a list of chances in [0, 1] (one per round), got {self.expert_share}")
        _check(self.max_steps >= 0, f"collect.max_steps must be >= 0, got {self.max_steps}")
        _check(self.seed >= 0, f"collect.seed must be >= 0, got {self.seed}")
        _check(self.num_envs >= 1 and self.workers >= 0,
               f"collect.num_envs must be >= 1 and collect.workers >= 0, got {self.num_envs}, {self.workers}")
        for task, texts in self.instructions.items():
            _check(bool(texts) and all(isinstance(t, str) and t.strip() for t in texts),
                   f"collect.instructions.{task} must be a non-empty list of phrasings")


@dataclass
class LabellerConfig:
    """Who labels the agent's steps (``aimc.online.labellers``)."""

    name: str = "crafter-demonstrator"
    """A registered labeller (crafter-demonstrator) or ``package.module:callable``."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the labeller, e.g. {demonstrator: {reflexes: false}} for crafter-demonstrator."""


@dataclass
class MixConfig:
    """What each round trains on."""

    online_share: float = 0.5
    """Share of every training batch's sequences (= frames) drawn from the labelled steps of all
    rounds so far; the rest comes from the earlier data (--store). Exact per batch, rounded to
    whole sequences. 1 = labelled steps only (no --store needed)."""

    def __post_init__(self) -> None:
        _check(0.0 < self.online_share <= 1.0, f"mix.online_share must be in (0, 1], got {self.online_share}")


@dataclass
class OnlineTrainConfig:
    """Each round continues training from the current weights with an ``aimc train`` preset."""

    preset: str = "crafter_finetune"
    """TrainConfig preset (name or YAML file) of every round's training."""
    overrides: list[str] = field(default_factory=list)
    """TrainConfig overrides (KEY=VALUE strings), e.g. [optim.lr=1e-4]."""
    frames_per_round: int = 102_400
    """Frames each round trains on (schedule.n_frames of its training run)."""
    warmup_fraction: float = 0.05
    """Linear learning-rate warm-up over this fraction of a round's frames (each round restarts
    the schedule and the optimizer state)."""

    def __post_init__(self) -> None:
        _check(self.frames_per_round > 0, f"train.frames_per_round must be > 0, got {self.frames_per_round}")
        _check(0.0 <= self.warmup_fraction < 1.0, f"train.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        for o in self.overrides:
            _check(isinstance(o, str) and re.match(r"^[A-Za-z_][\w.]*=", o.strip()) is not None,
                   f"train.overrides: {o!r} is not KEY=VALUE (e.g. optim.lr=1e-4); quote an override whose value has "
                   "brackets or commas: 'train.overrides=[\"checkpoint.export=[.safetensors,.weights]\"]'")
            key = o.split("=", 1)[0].strip()
            for k, knob in ROUND_KEYS.items():
                _check(not (key == k or key.startswith(k + ".")),
                       f"train.overrides: {key} is set by aimc online each round; set it with {knob}")


@dataclass
class OnlineValidateConfig:
    """The short evaluation after each round, on validation worlds, that picks the best round."""

    tasks: list[str] = field(default_factory=list)
    """Task ids to validate on (empty = the rounds' tasks)."""
    episodes: int = 8
    """Episodes per task (0 = no validation: the last round is the best)."""
    seed: int = VALIDATION_WORLDS_START
    """First validation world; episode k plays seed + k. At least 4,000,000."""
    max_steps: int = 0
    """Horizon; 0 = each task's ``max_steps`` in the suite."""
    initial: bool = True
    """Also validate the --init weights (round 0), so that a round must beat them to be kept."""
    num_envs: int = 8
    """Episodes played at once."""
    workers: int = 2
    """Env processes (0 = in this process)."""

    def __post_init__(self) -> None:
        _check(self.episodes >= 0, f"validate.episodes must be >= 0, got {self.episodes}")
        _check(self.seed >= VALIDATION_WORLDS_START,
               f"validate.seed must be >= {VALIDATION_WORLDS_START:,}: lower seeds are training worlds (below "
               f"1,000,000), the evaluation suites' worlds (1,000,000+) or the test worlds (3,000,000+), "
               f"got {self.seed:,}")
        _check(self.max_steps >= 0, f"validate.max_steps must be >= 0, got {self.max_steps}")
        _check(self.num_envs >= 1 and self.workers >= 0,
               f"validate.num_envs must be >= 1 and validate.workers >= 0, got {self.num_envs}, {self.workers}")


@dataclass
class OnlineConfig:
    """A whole ``aimc online`` run: ``rounds`` rounds of play, label, store, train, validate."""

    init: str = ""
    """Weights of the agent before round 1 (aimc .safetensors with its .yaml, as aimc train exports)."""
    stores: list[str] = field(default_factory=list)
    """Earlier data mixed into every round's training (episode stores, e.g. the demonstrations)."""
    rounds: int = 4
    """Rounds to run; raise it and run the same command again to add rounds to a finished run."""
    max_minutes: float = 0.0
    """Time budget of this command in minutes (0 = none): after the first round, a round starts
    only if the time left holds another round as long as the longest so far, and a round's training stops early
    (``schedule.max_seconds``) to leave time for its validation. Counted from the command's
    start, so a resumed run gets a fresh budget."""
    suite: str = "crafter-core"
    """Evaluation suite whose tasks (instructions, success rules, env) the rounds use."""
    tasks: list[str] = field(default_factory=list)
    """Task ids of the suite to play and label (empty = all of them)."""
    seed: int = 0
    """Seed of action sampling (round r collects with seed + r) and of training."""
    threads: int = 0
    """torch threads of training (0 = torch's default, one per core). On a machine shared with other
    jobs 1 is faster (docs/online.md). Acting on a CPU always uses one thread."""
    name: str = ""
    """Short name of the run (the README's title)."""
    agent: OnlineAgentConfig = field(default_factory=OnlineAgentConfig)
    collect: OnlineCollectConfig = field(default_factory=OnlineCollectConfig)
    labeller: LabellerConfig = field(default_factory=LabellerConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    train: OnlineTrainConfig = field(default_factory=OnlineTrainConfig)
    validate: OnlineValidateConfig = field(default_factory=OnlineValidateConfig)

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(self.threads >= 0, f"threads must be >= 0 (0 = torch's default), got {self.threads}")
        _check(self.max_minutes >= 0, f"max_minutes must be >= 0 (0 = no time budget), got {self.max_minutes}")
        last = self.collect.seed + self.rounds * self.collect.episodes - 1
        _check(last < TRAIN_WORLDS_END,
               f"collect.seed + rounds x collect.episodes reaches world {last:,}, but training worlds end below "
               f"{TRAIN_WORLDS_END:,} (the evaluation worlds start there): lower collect.seed")

    def expert_share_at(self, round_: int) -> float:
        """Round ``round_``'s (1-based) chance that the labeller acts instead of the agent."""
        shares = self.collect.expert_share
        return float(shares[min(round_, len(shares)) - 1]) if shares else 0.0

    def world_seeds(self, round_: int) -> list[int]:
        """The training worlds round ``round_`` (1-based) plays, in order."""
        first = self.collect.seed + (round_ - 1) * self.collect.episodes
        return list(range(first, first + self.collect.episodes))
