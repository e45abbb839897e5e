"""Typed configuration of ``aimc rl`` (PPO with a KL leash); presets ``rl_crafter`` and ``rl_minecraft``.

    cfg = load_config(RLConfig, "rl_crafter", ["ppo.kl_coef=0.2", "collect.episodes=24"])

Sections: ``agent`` (goals: MineCLIP + prior found beside --init; where the policy acts),
``collect`` (the instructed episodes of an update, on training worlds, and their reward),
``ppo`` (the losses and the update), ``model`` (freezing, LoRA), ``schedule`` (how long),
``checkpoint`` (how often, which formats), ``logging``, ``runtime``.

World seeds: RL plays training worlds below 1,000,000 (default from 500,000: the
demonstrations start at 0, ``aimc online`` at 700,000); update u plays
``collect.seed + u x collect.episodes + i``. The evaluation suites' worlds (1,000,000+) and
the test worlds (2,000,000+, 3,000,000+) are never played; the "best" weights are picked from
the training rollouts' own success.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aimc.errors import ConfigError
from aimc.train.config import LoggingConfig, LoRAConfig

TRAIN_WORLDS_END = 1_000_000


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class RLAgentConfig:
    """How instructions become goals, and where the policy acts."""

    mineclip: str = ""
    """MineCLIP checkpoint for the instructions' text (empty: found beside the --init weights)."""
    prior: str = ""
    """Prior checkpoint, text embedding -> goal (empty: found beside the --init weights)."""
    goal_table: str = ""
    """An .npz of goal vectors by task id or instruction (instead of MineCLIP + prior), e.g. goals
    you embedded yourself; empty = instructions become goals through MineCLIP and the prior."""
    device: str = "auto"
    """Where the policy acts and learns: auto (CUDA if present), cpu, cuda, cuda:N."""
    eval_cond_scales: list[float] = field(default_factory=lambda: [1.0, 0.0])
    """Guidance scales the printed evaluation commands use (training itself always runs at 0)."""

    def __post_init__(self) -> None:
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               f"agent.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _check(all(s >= 0 for s in self.eval_cond_scales),
               f"agent.eval_cond_scales must be >= 0, got {self.eval_cond_scales}")


@dataclass
class RLCollectConfig:
    """The episodes of one update: whole episodes, on training worlds, rewarded by the task's rule."""

    suite: str = "crafter-core"
    """Evaluation suite whose tasks (instructions, success rules, env, horizons) the episodes play."""
    tasks: list[str] = field(default_factory=list)
    """Task ids to play (empty = every task of the suite)."""
    task_weights: dict[str, float] = field(default_factory=dict)
    """Relative weight of a task when episodes draw their task (missing = 1), e.g. {collect_stone: 2}."""
    lang: str = "auto"
    """Phrasings to play, as aimc eval --lang: auto (those in the embedder's languages), all, en, zh, en,zh."""
    uncond_share: float = 0.0
    """Share of episodes played without an instruction (zero goal; no reward, they keep the unconditioned policy trained)."""
    episodes: int = 16
    """Episodes per update (each played to its end; the update learns from all of them)."""
    num_envs: int = 8
    """Episodes played at once (the policy's batch)."""
    workers: int = 2
    """Env processes (0 = in this process)."""
    fragment: int = 32
    """Steps per fragment: the recurrent state is stored at each fragment start and the update
    replays fragments from it (truncated backpropagation over this many steps)."""
    seed: int = 500_000
    """World seed of update 0's first episode (update u plays seed + u x episodes + i, all below 1,000,000)."""
    max_steps: int = 0
    """Episode horizon; 0 = each task's max_steps in the suite."""
    stop_on_success: bool = True
    """End an episode when its task succeeds (as evaluation does)."""
    reward: str = "task-success"
    """Reward: task-success (1 when the task's success rule first holds), mineclip (MineDojo's
    MineCLIP reward), or package.module:callable (your own; see docs/rl.md)."""
    reward_options: dict = field(default_factory=dict)
    """Keyword arguments of the reward, e.g. {negatives: [...], window: 16} for mineclip."""
    restart_crashed: int = 2
    """Replays of an episode whose env crashed (the crash is recorded in crashes.jsonl)."""

    def __post_init__(self) -> None:
        _check(self.episodes >= 1, f"collect.episodes must be >= 1, got {self.episodes}")
        _check(self.num_envs >= 1 and self.workers >= 0,
               f"collect.num_envs must be >= 1 and collect.workers >= 0, got {self.num_envs}, {self.workers}")
        _check(self.fragment >= 1, f"collect.fragment must be >= 1, got {self.fragment}")
        _check(0.0 <= self.uncond_share < 1.0, f"collect.uncond_share must be in [0, 1), got {self.uncond_share}")
        _check(0 <= self.seed < TRAIN_WORLDS_END,
               f"collect.seed must be a training world below {TRAIN_WORLDS_END:,} (evaluation worlds start there), "
               f"got {self.seed:,}")
        _check(self.max_steps >= 0, f"collect.max_steps must be >= 0, got {self.max_steps}")
        _check(all(w >= 0 for w in self.task_weights.values()),
               f"collect.task_weights must be >= 0, got {self.task_weights}")
        _check(self.restart_crashed >= 0, f"collect.restart_crashed must be >= 0, got {self.restart_crashed}")


@dataclass
class PPOConfig:
    """The losses and the update (cleanRL's recurrent PPO plus a KL penalty to the starting weights)."""

    lr: float = 3e-5
    """AdamW learning rate (constant)."""
    weight_decay: float = 0.0
    """AdamW weight decay (decayed groups as aimc train)."""
    epochs: int = 2
    """Passes over an update's fragments."""
    minibatches: int = 4
    """Optimizer steps per epoch (the fragments are split into this many minibatches)."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip: float = 0.2
    """Clipped surrogate's ratio range 1 +- clip."""
    vf_coef: float = 0.5
    """Weight of the value loss (on the returns normalised by the value head's EWMA normaliser)."""
    ent_coef: float = 0.0
    """Entropy bonus (0 = none)."""
    kl_coef: float = 0.1
    """Weight of KL(pi || pi_ref) to a frozen copy of the starting weights."""
    kl_decay: float = 1.0
    """kl_coef is multiplied by this after every update (1 = constant)."""
    target_kl: float = 0.05
    """Stop an update's epochs once the approximate KL between the new and the rollout's policy
    passes this (0 = never)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = none)."""
    value_warmup: int = 0
    """Updates at the start that train only the value head's loss (the policy loss and KL are left out):
    a behaviour-cloned policy's value head has never been trained."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    ref: str = "copy"
    """The reference policy: copy (a frozen copy of the --init weights) or adapters_off (with LoRA:
    the trained model with its adapters switched off, no second copy in memory)."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"ppo.lr must be > 0, got {self.lr}")
        _check(self.epochs >= 1 and self.minibatches >= 1,
               f"ppo.epochs and ppo.minibatches must be >= 1, got {self.epochs}, {self.minibatches}")
        _check(0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1,
               f"ppo.gamma must be in (0, 1] and ppo.gae_lambda in [0, 1], got {self.gamma}, {self.gae_lambda}")
        _check(self.clip > 0, f"ppo.clip must be > 0, got {self.clip}")
        _check(self.vf_coef >= 0 and self.ent_coef >= 0 and self.kl_coef >= 0,
               f"ppo.vf_coef, ppo.ent_coef and ppo.kl_coef must be >= 0, got {self.vf_coef}, {self.ent_coef}, {self.kl_coef}")
        _check(0 < self.kl_decay <= 1, f"ppo.kl_decay must be in (0, 1], got {self.kl_decay}")
        _check(self.target_kl >= 0, f"ppo.target_kl must be >= 0 (0 = no early stop), got {self.target_kl}")
        _check(self.max_grad_norm >= 0, f"ppo.max_grad_norm must be >= 0, got {self.max_grad_norm}")
        _check(self.value_warmup >= 0, f"ppo.value_warmup must be >= 0, got {self.value_warmup}")
        _check(self.ref in ("copy", "adapters_off"), f"ppo.ref must be copy or adapters_off, got {self.ref!r}")


@dataclass
class RLBCConfig:
    """PPO + BC: a behavioural-cloning term on episode stores, added to every PPO minibatch's loss."""

    stores: list[str] = field(default_factory=list)
    """Episode stores to clone (e.g. the demonstrations the policy was trained on); empty = no BC term."""
    coef: float = 0.0
    """Weight of the BC loss (mean negative log-likelihood per frame of the stores' actions)."""
    preset: str = "crafter_finetune"
    """aimc train preset whose data settings (relabelling, goals, p_uncond) draw the BC sequences."""
    batch_size: int = 8
    """BC sequences per minibatch, each collect.fragment frames long (replayed in the PPO forward)."""
    overrides: list[str] = field(default_factory=list)
    """TrainConfig overrides of the data settings, e.g. [data.p_uncond=0.1]."""

    def __post_init__(self) -> None:
        _check(self.coef >= 0, f"bc.coef must be >= 0, got {self.coef}")
        _check(self.batch_size >= 1, f"bc.batch_size must be >= 1, got {self.batch_size}")
        _check(self.coef == 0 or bool(self.stores),
               f"bc.coef={self.coef} needs episode stores to clone: set bc.stores=[PATH] (e.g. the demonstrations)")


@dataclass
class RLModelConfig:
    """What is trained (as aimc train's model.freeze and model.lora)."""

    freeze: list[str] = field(default_factory=list)
    """Parameter groups kept fixed: cnn, recurrent, heads, goal."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters (rank 0 = none); merged into plain weights on export."""


VALIDATION_WORLDS_START = 4_000_000


@dataclass
class RLEvalConfig:
    """The run's own evaluation at the end: the best weights on validation worlds, at every scale
    of agent.eval_cond_scales (instructed episodes only; never the suites' or the test worlds)."""

    episodes: int = 0
    """Episodes per task and guidance scale (0 = no evaluation: run aimc eval yourself)."""
    seed: int = VALIDATION_WORLDS_START
    """First validation world (at least 4,000,000); episode k plays seed + k."""
    max_steps: int = 0
    """Horizon; 0 = each task's max_steps in the suite."""
    num_envs: int = 8
    """Episodes played at once."""
    workers: int = 2
    """Env processes (0 = in this process)."""

    def __post_init__(self) -> None:
        _check(self.episodes >= 0, f"eval.episodes must be >= 0, got {self.episodes}")
        _check(self.seed >= VALIDATION_WORLDS_START,
               f"eval.seed must be >= {VALIDATION_WORLDS_START:,}: lower seeds are training worlds (below 1,000,000), "
               f"the evaluation suites' worlds (1,000,000+) or the test worlds (2,000,000+, 3,000,000+), got {self.seed:,}")
        _check(self.max_steps >= 0 and self.num_envs >= 1 and self.workers >= 0,
               f"eval.max_steps and eval.workers must be >= 0 and eval.num_envs >= 1, got {self.max_steps}, "
               f"{self.workers}, {self.num_envs}")


@dataclass
class RLScheduleConfig:
    """How long the run is."""

    updates: int = 60
    """PPO updates (each: collect collect.episodes episodes, then ppo.epochs passes)."""
    max_seconds: float = 0.0
    """Stop after this many seconds of this session (0 = no limit); the outputs are written as at the end."""

    def __post_init__(self) -> None:
        _check(self.updates >= 1, f"schedule.updates must be >= 1, got {self.updates}")
        _check(self.max_seconds >= 0, f"schedule.max_seconds must be >= 0, got {self.max_seconds}")


@dataclass
class RLCheckpointConfig:
    """Checkpoints and the kept weights."""

    every_updates: int = 1
    """Resumable latest checkpoint after every N updates (a kill loses at most N updates)."""
    best_window: int = 5
    """best = the weights after the update with the highest mean instructed success over the
    last N updates' rollouts (averaged per task, then over tasks)."""
    export: list[str] = field(default_factory=lambda: [".safetensors", ".weights"])
    """Formats of final.* and best.*."""

    def __post_init__(self) -> None:
        _check(self.every_updates >= 1, f"checkpoint.every_updates must be >= 1, got {self.every_updates}")
        _check(self.best_window >= 1, f"checkpoint.best_window must be >= 1, got {self.best_window}")
        _check(bool(self.export) and all(f in (".safetensors", ".weights") for f in self.export),
               f"checkpoint.export must list .safetensors and/or .weights, got {self.export}")


@dataclass
class RLRuntimeConfig:
    """Processes and precision."""

    precision: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32."""
    threads: int = 0
    """torch threads of the update (0 = torch's default). Acting on a CPU always uses one thread."""
    dist_backend: str = "auto"
    """torchrun: nccl on GPUs, gloo on CPUs (auto)."""

    def __post_init__(self) -> None:
        _check(self.precision in ("auto", "bf16", "fp32"), f"runtime.precision must be auto, bf16 or fp32, got {self.precision!r}")
        _check(self.threads >= 0, f"runtime.threads must be >= 0, got {self.threads}")
        _check(self.dist_backend in ("auto", "nccl", "gloo"),
               f"runtime.dist_backend must be auto, nccl or gloo, got {self.dist_backend!r}")


@dataclass
class RLConfig:
    """A whole ``aimc rl`` run."""

    init: str = ""
    """Weights to start from (aimc .safetensors with its .yaml); also the KL reference."""
    name: str = ""
    """Short name of the run (the README's title)."""
    seed: int = 0
    """Seed of action sampling and minibatch order (update u uses seed and u)."""
    agent: RLAgentConfig = field(default_factory=RLAgentConfig)
    collect: RLCollectConfig = field(default_factory=RLCollectConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    model: RLModelConfig = field(default_factory=RLModelConfig)
    bc: RLBCConfig = field(default_factory=RLBCConfig)
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)
    schedule: RLScheduleConfig = field(default_factory=RLScheduleConfig)
    checkpoint: RLCheckpointConfig = field(default_factory=RLCheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    runtime: RLRuntimeConfig = field(default_factory=RLRuntimeConfig)

    def __post_init__(self) -> None:
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        last = self.collect.seed + self.schedule.updates * self.collect.episodes - 1
        _check(last < TRAIN_WORLDS_END,
               f"collect.seed + schedule.updates x collect.episodes reaches world {last:,}, but training worlds end "
               f"below {TRAIN_WORLDS_END:,} (the evaluation worlds start there): lower collect.seed or schedule.updates")
        _check(self.ppo.ref != "adapters_off" or self.model.lora.rank > 0,
               "ppo.ref=adapters_off needs LoRA adapters (model.lora.rank > 0); use ppo.ref=copy")

    def world_seeds(self, update: int) -> list[int]:
        """The training worlds update ``update`` (0-based) plays, in order."""
        first = self.collect.seed + update * self.collect.episodes
        return list(range(first, first + self.collect.episodes))
