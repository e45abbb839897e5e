"""Typed configuration of a policy training run (``aimc train``).

A run is described by one :class:`TrainConfig` made of sections, each a dataclass:

    data        where the episodes come from and how sequences are cut and relabeled
    model       which architecture, which weights to start from, what to freeze / adapt
    optim       AdamW hyper-parameters, batch shape, accumulation, clipping
    schedule    the learning-rate schedule, driven by frames seen
    validation  when (in frames) and on how much of the val split the loss is measured
    checkpoint  latest / best / snapshot cadence (in frames)
    logging     metrics, TensorBoard, progress line
    runtime     device, precision, seed, compile, distributed backend
    eval        success rates in an environment every N frames, apart from training time

Vocabulary used throughout (the paper's names):

* ``T``        frames per training sequence (one batch item is a T-frame window).
* ``trunc_t``  truncated back-propagation length: a sequence is fed in chunks of
               ``trunc_t`` frames, the recurrent state carried from chunk to chunk and
               detached, so gradients flow at most ``trunc_t`` frames back.
* ``p_uncond`` probability that a whole sequence gets a zero goal (classifier-free
               guidance needs the unconditioned policy too).
* a **micro-step** is one chunk of ``batch_size x trunc_t`` frames forward + backward;
  an **optimizer step** (a "step" everywhere in aimc) is ``grad_accum`` micro-steps.
  Frames per optimizer step = ``batch_size x trunc_t x grad_accum x world_size``.
* every interval (``validation.*_frames``, ``checkpoint.*_frames``, ``logging.every_frames``)
  counts **frames**, summed over all processes, so a preset means the same whatever the batch
  shape or the number of GPUs. An interval is due after the optimizer step whose frames cross a
  multiple of it (:func:`crossed`); the step-counted keys of earlier versions are refused with the
  new name and the converted value (:meth:`TrainConfig.refuse_retired_keys`).

Presets live in ``aimc/configs/*.yaml`` and list only what differs from these defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from aimc.config import ConfigError
from aimc.data.loader import AugmentConfig

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
FREEZE_GROUPS = ("cnn", "recurrent", "heads", "goal")
RELABELERS = ("steve1", "events")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def crossed(frames_before: int, frames_after: int, interval: int) -> bool:
    """Whether an optimizer step that took the frame count from ``frames_before`` to
    ``frames_after`` crossed (or reached) a multiple of ``interval`` (0 = never)."""
    return interval > 0 and frames_after // interval > frames_before // interval


@dataclass
class DataConfig:
    """Training and validation data: episode stores, mixture, sequence cutting and relabeling."""

    stores: list[str] = field(default_factory=list)
    """Episode store folders (``aimc data ...`` output) to train on. Several = a mixture."""
    weights: list[float] = field(default_factory=list)
    """Mixture weights by frames, one per store (empty = proportional to their sizes),
    e.g. ``[0.8, 0.2]`` for 80 % original data / 20 % new data."""
    split: str = "train"
    """Name of the split (written by ``aimc data split``) used for training."""
    val_split: str = "val"
    """Split used for validation (it must exist and hold at least one batch; to train without
    validation set ``validation.enabled=false``, then no val split is read)."""
    T: int = 640
    """Frames per training sequence."""
    p_uncond: float = 0.1
    """Probability that a whole sequence's goals are zeroed (unconditioned)."""
    relabel: str = "steve1"
    """Hindsight relabeling: ``steve1`` (goal times every U[min_btwn_goals, max_btwn_goals)
    steps, ``aimc.data.relabel``, read by the loader's worker processes) or ``events`` (goal
    times anchored at the captioned events of the built-in world's stores, rare events kept
    visible, ``aimc.data.events``; the episodes are held in memory and batches are built in the
    training process)."""
    min_btwn_goals: int = 15
    """Hindsight relabeling: fewest steps between two goal time steps (>= 15)."""
    max_btwn_goals: int = 200
    """Hindsight relabeling: most steps between two goal time steps (exclusive)."""
    jitter: int = 3
    """``relabel=events``: goal anchors lie 0..jitter frames after their event (its outcome visible)."""
    rarity_power: float = 1.0
    """``relabel=events``: an event other than the pursued goal is kept as an anchor with
    probability (rarest count / its count) ** rarity_power (0 = keep every event)."""
    standardize: bool = False
    """``relabel=events``: feed goals as (e - mean) / std per dimension over the store's valid
    frames (the prior must then be trained on standardized embeddings too)."""
    switch_start: float = 0.0
    """``relabel=events``: chance that a sequence starts where the demonstrator picked a new
    goal, so that only the goal tells what to do next."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Colour augmentation of training sequences, one random transform per sequence (the same for
    all its frames): ``data.augment.enabled=true`` switches it on, ``data.augment.brightness`` etc.
    set the strengths (``data.relabel=steve1`` only)."""
    num_workers: int = 4
    """Loader worker processes (0 = load in the training process)."""

    def __post_init__(self) -> None:
        _check(self.T > 0, f"data.T must be > 0, got {self.T}")
        _check(0.0 <= self.p_uncond <= 1.0, f"data.p_uncond must be in [0, 1], got {self.p_uncond}")
        _check(
            15 <= self.min_btwn_goals < self.max_btwn_goals,
            f"data.min_btwn_goals ({self.min_btwn_goals}) must be >= 15 (the first 15 frames of an episode "
            f"have no goal embedding) and < data.max_btwn_goals ({self.max_btwn_goals})",
        )
        _check(
            not self.weights or len(self.weights) == len(self.stores),
            f"data.weights has {len(self.weights)} entries but data.stores has {len(self.stores)}: give one weight per store",
        )
        _check(all(w >= 0 for w in self.weights), f"data.weights must be >= 0, got {self.weights}")
        _check(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
        _check(self.relabel in RELABELERS, f"data.relabel must be one of {list(RELABELERS)}, got {self.relabel!r}")
        _check(self.jitter >= 0 and self.rarity_power >= 0,
               f"data.jitter and data.rarity_power must be >= 0, got {self.jitter}, {self.rarity_power}")
        _check(0.0 <= self.switch_start <= 1.0, f"data.switch_start must be in [0, 1], got {self.switch_start}")
        _check(
            self.val_split.strip() != "",
            "data.val_split is empty: to train without validation set validation.enabled=false (then no val "
            "split is read); otherwise name the split to validate on, e.g. data.val_split=val",
        )
        _check(
            self.relabel == "steve1" or not self.augment.enabled,
            "data.augment.enabled=true applies to data.relabel=steve1 only (event-anchored batches are not "
            "augmented): set data.augment.enabled=false or data.relabel=steve1",
        )
        _check(
            self.relabel == "events" or not (self.switch_start or self.standardize),
            "data.switch_start and data.standardize apply to event-anchored goals: set data.relabel=events "
            "or leave them at 0 / false",
        )


@dataclass
class LoRAConfig:
    """Low-rank adapters on linear layers (rank 0 = off). Adapted weights are frozen,
    only the adapters (and the groups in ``train_groups``) learn; export merges them back."""

    rank: int = 0
    """Adapter rank r (0 disables LoRA)."""
    alpha: float = 16.0
    """Scale: the adapter's output is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    targets: list[str] = field(default_factory=lambda: ["net.recurrent_layer.*"])
    """Glob patterns of module names whose ``nn.Linear`` layers get adapters (the transformer)."""
    train_groups: list[str] = field(default_factory=list)
    """Parameter groups (cnn, recurrent, heads, goal) that still train fully beside the adapters."""

    def __post_init__(self) -> None:
        _check(self.rank >= 0, f"model.lora.rank must be >= 0, got {self.rank}")
        _check(self.alpha > 0, f"model.lora.alpha must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        bad = [g for g in self.train_groups if g not in FREEZE_GROUPS]
        _check(not bad, f"model.lora.train_groups: unknown group {bad}; choose from {list(FREEZE_GROUPS)}")


@dataclass
class ModelConfig:
    """Which policy to train and what to start from."""

    arch: str = "2x"
    """Architecture when not given by ``init``: ``2x`` (VPT 2x, 249.5M params) or ``tiny``
    (a few hundred thousand params, for tests and CPU smoke runs)."""
    policy: dict[str, Any] = field(default_factory=dict)
    """Overrides of ``PolicyConfig`` fields, e.g. ``{img_shape: [64, 64, 3]}``."""
    init: str = ""
    """Weights to start from: official ``.weights`` (VPT or STEVE-1, with ``model_file``)
    or an aimc ``.safetensors`` (with its ``.yaml`` sidecar). Empty = random init."""
    model_file: str = ""
    """Official ``.model`` file describing the architecture of ``init`` (official weights only)."""
    goal_dim: int = 512
    """Goal-embedding size (512 = MineCLIP; the built-in world's embedder may differ)."""
    freeze: list[str] = field(default_factory=list)
    """Parameter groups kept fixed: any of cnn, recurrent, heads, goal."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Low-rank adapters (off by default)."""
    activation_checkpointing: bool = False
    """Recompute activations in backward instead of storing them (less memory, ~30 % slower)."""
    channels_last: bool = False
    """Run the CNN in channels-last memory layout."""

    def __post_init__(self) -> None:
        bad = [g for g in self.freeze if g not in FREEZE_GROUPS]
        _check(not bad, f"model.freeze: unknown group {bad}; choose from {list(FREEZE_GROUPS)}")
        _check(self.goal_dim >= 0, f"model.goal_dim must be >= 0, got {self.goal_dim}")
        _check(
            not (self.model_file and not self.init),
            "model.model_file is set but model.init is empty: give the weights to load too",
        )


@dataclass
class OptimConfig:
    """AdamW, batch shape and gradient handling."""

    lr: float = 4e-5
    """Peak learning rate (reached at the end of warm-up)."""
    weight_decay: float = 0.039428
    """Decoupled weight decay on matrices/conv kernels; biases, LayerNorm and embeddings get none."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    batch_size: int = 12
    """Sequences per micro-step on each process."""
    trunc_t: int = 64
    """Truncated-BPTT chunk length (frames); must divide data.T."""
    grad_accum: int = 4
    """Micro-steps (chunks) summed into one optimizer step."""
    max_grad_norm: float = 5.0
    """Clip the global gradient L2 norm to this (0 = no clipping)."""
    warn_grad_norm: float = 10.0
    """Warn when the (pre-clip) gradient norm exceeds this; 0.5-5 is healthy."""
    fused: bool = True
    """Use the fused AdamW kernel on CUDA."""
    l2sp: float = 0.0
    """L2-SP: add alpha/2 x ||theta - theta0||^2 to the loss (alpha = this value; 0 = off), pulling every
    trainable parameter toward the weights training started from (theta0 = ``optim.l2sp_anchor``,
    else ``model.init``) instead of toward 0 as weight decay does. Guards what a fine-tune should
    keep (docs/continual.md); costs one more copy of the trainable weights on the device."""
    l2sp_anchor: str = ""
    """Weights theta0 of L2-SP (aimc ``.safetensors`` + ``.yaml``); empty = the ``model.init``
    weights. ``aimc continual`` sets it to the plan's ``init`` so that every stage is pulled toward
    the weights the plan started from, not the previous stage's."""
    uncond_kl: float = 0.0
    """Keep the unconditioned policy: add this coefficient x KL(pi(.|s, no goal) || pi_ref(.|s, no goal))
    to the loss (0 = off), on a share (``optim.uncond_kl_share``) of every batch's sequences with
    their goal zeroed, pi_ref = the frozen ``optim.uncond_kl_anchor`` weights. Guidance acts with
    (1 + s) cond - s uncond: data whose goals are all one instruction also move the unconditioned
    policy, and that cancels part of what the instruction gains; this holds it where it was
    (docs/online.md). Costs one more forward of that share and a frozen copy of the policy."""
    uncond_kl_anchor: str = ""
    """Weights pi_ref of ``optim.uncond_kl`` (aimc ``.safetensors`` + ``.yaml``); empty = ``model.init``
    (``aimc online`` sets it to its ``--init``, the weights the run started from)."""
    uncond_kl_share: float = 0.25
    """Share of each batch's sequences played again without a goal for ``optim.uncond_kl``."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(self.l2sp >= 0, f"optim.l2sp must be >= 0 (0 = off), got {self.l2sp}")
        _check(not self.l2sp_anchor or self.l2sp_anchor.endswith(".safetensors"),
               f"optim.l2sp_anchor must be aimc .safetensors weights (with their .yaml), got {self.l2sp_anchor!r}")
        _check(self.uncond_kl >= 0, f"optim.uncond_kl must be >= 0 (0 = off), got {self.uncond_kl}")
        _check(not self.uncond_kl_anchor or self.uncond_kl_anchor.endswith(".safetensors"),
               f"optim.uncond_kl_anchor must be aimc .safetensors weights (with their .yaml), got {self.uncond_kl_anchor!r}")
        _check(0 < self.uncond_kl_share <= 1, f"optim.uncond_kl_share must be in (0, 1], got {self.uncond_kl_share}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.batch_size > 0, f"optim.batch_size must be > 0, got {self.batch_size}")
        _check(self.trunc_t > 0, f"optim.trunc_t must be > 0, got {self.trunc_t}")
        _check(self.grad_accum > 0, f"optim.grad_accum must be > 0, got {self.grad_accum}")
        _check(self.max_grad_norm >= 0, f"optim.max_grad_norm must be >= 0, got {self.max_grad_norm}")


@dataclass
class ScheduleConfig:
    """Learning rate by frames seen: linear warm-up, then cosine to ``min_lr`` at
    ``decay_end * n_frames`` (the original decays towards 1.1 x n_frames, so training
    stops before the rate reaches zero)."""

    n_frames: int = 100_000_000
    """Training length in frames (summed over all processes)."""
    warmup_frames: int = 10_000_000
    """Frames of linear warm-up from 0 to optim.lr."""
    decay_end: float = 1.1
    """The cosine reaches min_lr at decay_end x n_frames."""
    min_lr: float = 0.0
    """Floor of the schedule."""
    max_seconds: float = 0.0
    """Stop this session after so many seconds of training even if n_frames is not reached
    (0 = no limit); the weights are exported as at the end. A resumed run goes on to n_frames.
    Evaluation during training (``eval``) is not counted: it comes on top."""

    def __post_init__(self) -> None:
        _check(self.max_seconds >= 0, f"schedule.max_seconds must be >= 0, got {self.max_seconds}")
        _check(self.n_frames > 0, f"schedule.n_frames must be > 0, got {self.n_frames}")
        _check(self.warmup_frames >= 0, f"schedule.warmup_frames must be >= 0, got {self.warmup_frames}")
        _check(self.decay_end >= 1.0, f"schedule.decay_end must be >= 1, got {self.decay_end}")
        _check(
            self.warmup_frames < self.decay_end * self.n_frames,
            f"schedule.warmup_frames ({self.warmup_frames}) must be below decay_end x n_frames",
        )
        _check(self.min_lr >= 0, f"schedule.min_lr must be >= 0, got {self.min_lr}")


@dataclass
class ValidationConfig:
    """Validation loss on the val split. Intervals count frames (over all processes); like the
    original, validation is frequent at first (every ``every_begin_frames`` until
    ``switch_at_frames``), then every ``every_frames``. Validation runs after the optimizer step
    whose frames cross a multiple of the interval, and once more at the end."""

    enabled: bool = True
    """Measure the validation loss (and keep the best weights). ``false`` = no validation: no val
    split is read. With it on, a missing or too small val split stops the run before it starts."""
    every_frames: int = 768_000
    """Validate every this many frames (0 = only at the end). The default is the original's
    1,000 chunks of 12 x 64 frames."""
    every_begin_frames: int = 76_800
    """Interval used until ``switch_at_frames`` frames (the original's 100 chunks)."""
    switch_at_frames: int = 384_000
    """Frames after which the interval switches from every_begin_frames to every_frames (the
    original's 500 chunks; 0 = use every_frames from the start)."""
    max_batches: int = 0
    """Cap on validation batches per run of validation (0 = the whole val split; with
    data.relabel=events, whose val batches are drawn at random, 0 means 4)."""
    every_nth: int = 1
    """Use every n-th val sequence (the original's val_every_nth; data.relabel=steve1 only)."""

    def __post_init__(self) -> None:
        for name in ("every_frames", "every_begin_frames", "switch_at_frames", "max_batches"):
            _check(getattr(self, name) >= 0, f"validation.{name} must be >= 0, got {getattr(self, name)}")
        _check(self.every_nth >= 1, f"validation.every_nth must be >= 1, got {self.every_nth}")

    def due(self, frames_before: int, frames_after: int) -> bool:
        """Whether validation runs after the optimizer step that took the frame count from
        ``frames_before`` to ``frames_after``."""
        if not self.enabled:
            return False
        interval = self.every_begin_frames if frames_before < self.switch_at_frames else self.every_frames
        return crossed(frames_before, frames_after, interval)


@dataclass
class CheckpointConfig:
    """What is written under ``RUN_DIR/checkpoints`` and when (intervals in frames)."""

    every_frames: int = 768_000
    """Write the resumable ``latest`` checkpoint every this many frames (0 = only at the end);
    the default is the original's save_freq, 1,000 chunks of 12 x 64 frames."""
    snapshot_every_frames: int = 50_000_000
    """Keep a weights snapshot every this many frames (0 = none), as ``snapshot_<frames>/``."""
    keep_best: bool = True
    """Keep the weights with the lowest validation loss as ``best``."""
    export: list[str] = field(default_factory=lambda: [".weights", ".safetensors"])
    """Formats of the exported final/best weights (official ``.weights`` and/or ``.safetensors``)."""

    def __post_init__(self) -> None:
        _check(self.every_frames >= 0, f"checkpoint.every_frames must be >= 0, got {self.every_frames}")
        _check(self.snapshot_every_frames >= 0, "checkpoint.snapshot_every_frames must be >= 0")
        bad = [e for e in self.export if e not in (".weights", ".safetensors")]
        _check(not bad, f"checkpoint.export: unknown format {bad}; use .weights and/or .safetensors")
        _check(bool(self.export), "checkpoint.export is empty: name at least one of .weights, .safetensors")


@dataclass
class LoggingConfig:
    """Where progress goes."""

    every_frames: int = 30_720
    """Log metrics every this many frames (and after the last step); the default is 10 steps of
    the default batch (3,072 frames)."""
    tensorboard: bool = True
    """Write TensorBoard scalars to RUN_DIR/tb."""
    progress: bool = True
    """Show a live progress line with ETA (rank 0, interactive terminals)."""

    def __post_init__(self) -> None:
        _check(self.every_frames >= 1, f"logging.every_frames must be >= 1, got {self.every_frames}")


@dataclass
class RuntimeConfig:
    """Device, numerics and reproducibility."""

    device: str = "auto"
    """``auto`` (CUDA if present), ``cpu``, ``cuda`` or ``cuda:N``."""
    precision: str = "auto"
    """``bf16`` autocast, ``fp16`` autocast with a gradient scaler, ``fp32``; ``auto`` = bf16 on
    CUDA, fp32 on CPU."""
    seed: int = 0
    """Seed of model init, data order and relabeling."""
    compile: bool = False
    """``torch.compile`` the policy (faster on GPU after a warm-up of a minute or two)."""
    dist_backend: str = "auto"
    """torch.distributed backend under torchrun: ``auto`` (nccl on CUDA, gloo on CPU), ``nccl``, ``gloo``."""
    skip_preflight_memory: bool = False
    """Skip the GPU-memory estimate check (when you know better)."""

    def __post_init__(self) -> None:
        _check(self.precision in PRECISIONS, f"runtime.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        _check(self.dist_backend in ("auto", "nccl", "gloo"), f"runtime.dist_backend must be auto, nccl or gloo, got {self.dist_backend!r}")
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"runtime.device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )


@dataclass
class EvalConfig:
    """Evaluation during training (``aimc train`` only): every ``every_frames`` frames, the
    policy plays an evaluation suite as ``aimc eval`` would (same goals from text, same
    guidance, same world seeds); its success rates go to TensorBoard, ``metrics.jsonl`` and the
    run's README, and each evaluation folder ``RUN_DIR/evals/frames_<N>/`` keeps the results and a
    short sample video. Its time is kept apart from training time (see docs/monitoring.md)."""

    every_frames: int = 0
    """Evaluate every this many frames of training, and once at the end (0 = off)."""
    suite: str = "crafter-core"
    """Shipped suite name (crafter-core, steve1-early-game) or a suite YAML file."""
    episodes: int = 4
    """Episodes per task and condition (0 = the suite's own count, 30 for crafter-core)."""
    tasks: list[str] = field(default_factory=list)
    """Task ids of the suite to play (empty = all)."""
    max_steps: int = 0
    """Cap every task's horizon at this many steps (0 = the suite's horizons)."""
    cond_scale: float = 6.0
    """Classifier-free guidance scale, as ``aimc eval --cond-scale``."""
    num_envs: int = 8
    """Episodes played at once (the policy's batch)."""
    workers: int = 0
    """Environment processes (0 = in the training process)."""
    mineclip: str = ""
    """Text embedder that turns instructions into goals (MineCLIP ``attn.pth`` or aimc
    ``.safetensors``); empty = found next to the run directory, as ``aimc eval`` finds it
    next to the weights."""
    prior: str = ""
    """Prior that maps text embeddings to visual goals; empty = found next to the run directory
    (none found: the text embedding is the goal, as in ``aimc eval``). Actions and prior samples
    are drawn with ``runtime.seed``; the world seeds are the suite's."""
    video: bool = True
    """Keep a sample video of each evaluation (one episode of ``video_task``) and show its
    frames in TensorBoard."""
    video_task: str = ""
    """Task whose first instructed episode is filmed (empty = the first task played)."""

    def __post_init__(self) -> None:
        for name in ("every_frames", "episodes", "max_steps", "workers"):
            _check(getattr(self, name) >= 0, f"eval.{name} must be >= 0, got {getattr(self, name)}")
        _check(self.num_envs >= 1, f"eval.num_envs must be >= 1, got {self.num_envs}")
        _check(self.cond_scale >= 0, f"eval.cond_scale must be >= 0, got {self.cond_scale}")
        _check(not self.video_task or not self.tasks or self.video_task in self.tasks,
               f"eval.video_task {self.video_task!r} is not one of eval.tasks {self.tasks}")


@dataclass
class TrainConfig:
    """A whole policy training run. See the module docstring for the vocabulary."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = ""
    """Short name of the run (the run-dir README's title)."""

    def __post_init__(self) -> None:
        _check(
            self.data.T % self.optim.trunc_t == 0,
            f"optim.trunc_t ({self.optim.trunc_t}) must divide data.T ({self.data.T})",
        )
        _check(
            not self.optim.l2sp or self.model.init or self.optim.l2sp_anchor,
            f"optim.l2sp={self.optim.l2sp:g} pulls the weights toward the ones training started from, but there are "
            "none: set model.init (the weights to fine-tune) or optim.l2sp_anchor, or optim.l2sp=0",
        )
        _check(
            not self.optim.uncond_kl or self.model.init or self.optim.uncond_kl_anchor,
            f"optim.uncond_kl={self.optim.uncond_kl:g} holds the unconditioned policy where the start weights had it, "
            "but there are none: set model.init (the weights to fine-tune) or optim.uncond_kl_anchor, or optim.uncond_kl=0",
        )
        _check(
            not self.optim.uncond_kl or self.optim.trunc_t == self.data.T,
            f"optim.uncond_kl plays whole sequences again without a goal, so it needs optim.trunc_t = data.T "
            f"(got trunc_t {self.optim.trunc_t}, T {self.data.T}): set optim.trunc_t={self.data.T}, or optim.uncond_kl=0",
        )

    @property
    def chunks_per_sequence(self) -> int:
        return self.data.T // self.optim.trunc_t

    def frames_per_step(self, world_size: int = 1) -> int:
        """Frames consumed by one optimizer step over all processes."""
        return self.optim.batch_size * self.optim.trunc_t * self.optim.grad_accum * world_size

    def intervals(self) -> dict[str, int]:
        """The frame intervals this run uses, by config key (for checks and messages)."""
        v = self.validation
        out = {"validation.every_frames": v.every_frames} if v.enabled else {}
        if v.enabled and v.switch_at_frames:
            out["validation.every_begin_frames"] = v.every_begin_frames
        return {**out, "checkpoint.every_frames": self.checkpoint.every_frames,
                "checkpoint.snapshot_every_frames": self.checkpoint.snapshot_every_frames,
                "logging.every_frames": self.logging.every_frames}

    @classmethod
    def refuse_retired_keys(cls, raw: dict, resolved: dict, source: str) -> None:
        """Refuse keys of earlier versions in ``raw`` (a preset's or the overrides' keys), naming
        ``source``, the new key and, for the step-counted intervals, the value in frames for this
        run (steps x frames per step, from the ``optim`` section of ``resolved`` and the
        ``WORLD_SIZE`` that torchrun sets). Called by :func:`aimc.config.load_config`."""
        problems = []
        fps, how = _frames_per_step_of(resolved)
        for old, new in RETIRED_STEP_KEYS.items():
            section, key = old.split(".")
            part = raw.get(section)
            if not isinstance(part, dict) or key not in part:
                continue
            value = part[key]
            text = f"{old} counted optimizer steps; intervals are counted in frames now: write {new} instead"
            if fps and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                text += (f". For this run ({how} = {fps:,} frames per optimizer step) {old}={value} is "
                         f"{new}={value * fps}")
            problems.append(text)
        data = raw.get("data")
        if isinstance(data, dict) and "augment" in data and not isinstance(data["augment"], dict):
            value = data["augment"]
            shown = str(value).lower() if isinstance(value, bool) else repr(value)
            problems.append(
                f"data.augment={shown}: data.augment is a section now: write data.augment.enabled="
                f"{shown if isinstance(value, bool) else 'true'} (strengths: data.augment.brightness, "
                "data.augment.contrast, data.augment.saturation, data.augment.hue, data.augment.grayscale_p)"
            )
        if problems:
            body = problems[0] if len(problems) == 1 else "\n  - " + "\n  - ".join(problems)
            raise ConfigError(f"{source}: {body}")


RETIRED_STEP_KEYS = {
    "validation.every": "validation.every_frames",
    "validation.every_begin": "validation.every_begin_frames",
    "validation.switch_at": "validation.switch_at_frames",
    "checkpoint.every": "checkpoint.every_frames",
    "logging.every": "logging.every_frames",
}
"""Step-counted interval keys of earlier versions -> their frame-counted replacements."""


def _frames_per_step_of(resolved: dict) -> tuple[int, str]:
    """Frames per optimizer step of a resolved (not yet typed) config dict, and how it is made;
    (0, "") when the optim section is not plain numbers."""
    optim = resolved.get("optim") if isinstance(resolved, dict) else None
    try:
        b, t, g = (int(optim[k]) for k in ("batch_size", "trunc_t", "grad_accum"))  # type: ignore[index]
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except (TypeError, KeyError, ValueError):
        return 0, ""
    if min(b, t, g, world) < 1:
        return 0, ""
    how = (f"optim.batch_size {b} x optim.trunc_t {t} x optim.grad_accum {g} x {world} "
           f"process{'es' if world > 1 else ''}")
    return b * t * g * world, how


def load_continued(preset: str, init: str, overrides: list[str]) -> TrainConfig:
    """A train preset for training that continues from ``init`` (online rounds, continual stages):
    ``data.weights=[]`` (the caller sets the mixture) and ``model.init`` come before ``overrides``,
    so that settings needing start weights (``optim.l2sp``, ``optim.uncond_kl``) load. The path is
    given as a JSON string, which YAML reads as a string whatever it holds."""
    import json

    from aimc.config import load_config

    return load_config(TrainConfig, preset, ["data.weights=[]", f"model.init={json.dumps(str(init))}", *overrides])
