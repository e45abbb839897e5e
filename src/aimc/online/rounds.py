"""``aimc online``: rounds of play, label, store, train and validate, resumable at every phase.

A round r (1-based):

1. **play** - the current agent plays ``collect.episodes`` instructed episodes on new training
   worlds (``OnlineConfig.world_seeds``), with the rollout collector (``aimc.agent.rollout``),
   each instruction turned into a goal through MineCLIP and the prior exactly as ``aimc eval``
   does (``Agent.goal(instruction, world seed)``);
2. **label** - the labeller gives the action the agent should have taken in every state it
   reached (``aimc.online.labellers``);
3. **store** - the labelled steps are written into ``RUN/store`` as episodes tagged with the
   round, each step with the goal the agent acted on as the episode's goals (``goal_source:
   acted``: never relabeled, see ``aimc.data.relabel``) and the agent's own action beside the
   label;
4. **train** - ``train_policy`` continues from the current weights on every batch split
   exactly: ``mix.online_share`` of the sequences from the labelled steps of all rounds so far,
   the rest from the earlier data (``--store``), relabeled as the train preset says;
5. **validate** - ``run_suite`` plays the tasks on validation worlds (4,000,000+) with the
   suite's success rules; the best round so far is kept.

Files of a run::

    RUN/
      config.yaml            the resolved OnlineConfig (a second run with the same --out continues)
      online.json            the state, written atomically after every phase
      README.md              the experiment log: one row per round, rewritten after every phase
      store/                 the labelled steps of all rounds (episode ids r001-..., r002-...)
      rounds/NNN/collected.jsonl   one line per episode played and stored in round NNN
      rounds/NNN/train/      round NNN's aimc train run (resumable checkpoints, final.*)
      rounds/NNN/validate/   its validation (an aimc eval folder); rounds/000: the --init weights
      tb/                    TensorBoard: online/* scalars, one point per round
      final.*, best.*        the last round's and the best round's weights (the train preset's formats)

A kill at any moment loses at most the phase in progress: a finished phase is in ``online.json``;
an episode is in the store once its line is in ``collected.jsonl``; training resumes from its
latest checkpoint; validation from its ``results.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from aimc.agent.agent import acting_threads
from aimc.config import changed_settings, load_config, save_config, to_dict
from aimc.eval.metrics import rate_text
from aimc.errors import UserError
from aimc.online.config import OnlineConfig
from aimc.online.labellers import Labels, PlayedEpisode, check_labels, labelled_segments, make_labeller
from aimc.utils.io import atomic_write_text, read_state_json, write_state_json

STATE_FILE = "online.json"
CONFIG_FILE = "config.yaml"
PHASES = ("collect", "train", "validate")
# settings that may differ when a run is continued (everything else must match the saved config)
CONTINUABLE = {"rounds", "name", "threads", "max_minutes"}


def round_dir(run: Path, r: int) -> Path:
    return Path(run) / "rounds" / f"{r:03d}"


# ---------------------------------------------------------------------------- what a round plays


@dataclass
class CollectJob:
    """One episode to play: a task phrased one way, on one training world."""

    episode_id: str
    task: Any  # aimc.eval.suite.Task
    instruction: str
    lang: str
    seed: int
    env: dict
    horizon: int
    retries: int = 0


def select_tasks(suite, task_ids: list[str]) -> list:
    return list(suite.select(list(task_ids)).tasks) if task_ids else list(suite.tasks)


def plan_collection(cfg: OnlineConfig, suite, labeller, r: int) -> list[CollectJob]:
    """Round ``r``'s episodes: episode i plays task ``i mod n_tasks`` on world ``world_seeds(r)[i]``,
    with the task's phrasings taking turns; the env is the one the labeller binds."""
    tasks = select_tasks(suite, cfg.tasks)
    share = cfg.expert_share_at(r)
    name = getattr(labeller, "name", type(labeller).__name__)
    if share > 0 and not callable(getattr(labeller, "mixing", None)):
        raise UserError(f"collect.expert_share asks labeller {name!r} to act in {share:.0%} of round {r}'s steps, but it "
                        "has no mixing() method (it only labels): set collect.expert_share=[]")
    jobs = []
    for i, seed in enumerate(cfg.world_seeds(r)):
        task = tasks[i % len(tasks)]
        if task.id in cfg.collect.instructions:  # phrasings of your own instead of the suite's
            texts = [(t.strip(), "zh" if any("\u4e00" <= c <= "\u9fff" for c in t) else "en")
                     for t in cfg.collect.instructions[task.id]]
        else:
            texts = [(ins.text, ins.lang) for ins in task.instructions]
        text, lang = texts[(i // len(tasks)) % len(texts)]
        horizon = min(task.max_steps, cfg.collect.max_steps) if cfg.collect.max_steps else task.max_steps
        env = labeller.bind({**suite.env, **task.env}, task)
        if share > 0:
            env = labeller.mixing(env, share)
        jobs.append(CollectJob(f"r{r:03d}-w{seed:07d}-{task.id}", task, text, lang, seed, env, horizon))
    return jobs


def validation_suite(cfg: OnlineConfig, suite):
    """The tasks to validate on, instructed only (no unconditioned or cross-task episodes), on the
    validation worlds, ``validate.episodes`` each."""
    from aimc.eval.suite import Suite

    ids = cfg.validate.tasks or [t.id for t in select_tasks(suite, cfg.tasks)]
    tasks = tuple(suite.task(t) for t in ids)
    if cfg.validate.max_steps:
        tasks = tuple(replace(t, max_steps=min(t.max_steps, cfg.validate.max_steps)) for t in tasks)
    return Suite(name=f"{suite.name}-validation", tasks=tasks, env=dict(suite.env), episodes=max(1, cfg.validate.episodes),
                 max_steps=max(t.max_steps for t in tasks), seed=cfg.validate.seed, matrix=False, unconditioned=False,
                 description=f"aimc online validation worlds of {suite.name}", source=suite.source)


# ---------------------------------------------------------------------------- play, label, store


def write_labelled(store, job: CollectJob, played: PlayedEpisode, labels: Labels, r: int, labeller_name: str,
                   policy_heads: list[str]) -> list[dict]:
    """Write the labelled stretches of one played episode into ``store``; returns one record per
    stored episode (id, first step, steps)."""
    out = []
    segments = labelled_segments(labels.mask, len(played))
    for a, b in segments:
        eid = job.episode_id if (a, b) == (0, len(played)) else f"{job.episode_id}.s{a:05d}"
        actions = {h: labels.actions[h][a:b] for h in policy_heads}
        actions.update({f"agent_{h}": np.asarray(played.actions[h][a:b], np.int64) for h in policy_heads})
        meta = {
            "source": "aimc online", "converter": "aimc.online.rounds", "converter_version": 1, "fps": 10.0,
            "goal_source": "acted", "policy_heads": list(policy_heads), "round": r, "labeller": labeller_name,
            "task": job.task.id, "instruction": job.instruction, "lang": job.lang, "world_seed": job.seed,
            "env": job.env, "first_step": a, "episode_steps": len(played), "success_step": played.success_step,
            "embeddings_info": {"model": "the goals the agent acted on (instruction -> MineCLIP -> prior)"},
        }
        store.write_episode(eid, played.frames[a:b], actions, meta, embeddings=played.goals[a:b],
                            embed_valid=np.ones(b - a, dtype=bool))
        out.append({"id": eid, "start": a, "steps": b - a})
    return out


def _append_line(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def collect_round(agent, jobs: list[CollectJob], labeller, store, out_dir: Path, r: int, *, heads: dict[str, int],
                  num_envs: int, workers: int, stop_on_success: bool = True, max_retries: int = 2,
                  on_record: Callable | None = None, on_episode: Callable[[dict], None] | None = None) -> list[dict]:
    """Play every job not yet in ``out_dir/collected.jsonl``, label it, store its labelled steps;
    returns every job's line (the ones stored before a kill included).

    A job's line is written after its episodes are in the store, so a killed collection plays
    only the jobs without a line again (their partial episodes are replaced). ``on_record`` sees
    every ``StepRecord`` of the collector; ``on_episode`` every new line.
    """
    from aimc.agent.rollout import Episode, RolloutCollector
    from aimc.eval.runner import read_results
    from aimc.eval.suite import SuccessTracker

    out_dir.mkdir(parents=True, exist_ok=True)
    lines_path = out_dir / "collected.jsonl"
    done = {row["job"]: row for row in read_results(lines_path)}
    atomic_write_text(lines_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in done.values()))
    pending = [j for j in jobs if j.episode_id not in done]
    for j in pending:  # stretches a killed attempt stored without its line
        for eid in store.episode_ids():
            if eid == j.episode_id or eid.startswith(j.episode_id + "."):
                store.delete_episode(eid)
    heads_list = list(heads)
    slots: list[dict | None] = [None] * num_envs

    def next_episode(s: int) -> Episode | None:
        if not pending:
            return None
        job = pending.pop(0)
        slots[s] = {"job": job, "tracker": SuccessTracker(job.task.success, job.horizon), "frames": [], "measures": [],
                    "actions": {h: [] for h in heads_list}, "goals": [], "expert_steps": 0}
        return Episode(job.env, job.seed, instruction=job.instruction, horizon=job.horizon, tag=job)

    def started(s: int, ep: Episode, frame: np.ndarray, measures: dict) -> None:
        slots[s]["frames"].append(frame)
        slots[s]["measures"].append(measures)
        slots[s]["tracker"].update(0, measures)

    def finish(s: int) -> None:
        slot, slots[s] = slots[s], None
        job = slot["job"]
        played = PlayedEpisode(
            task=job.task.id, instruction=job.instruction, lang=job.lang, seed=job.seed, env=job.env,
            frames=np.stack(slot["frames"]).astype(np.uint8), goals=np.stack(slot["goals"]).astype(np.float32),
            actions={h: np.asarray(v, dtype=np.int64) for h, v in slot["actions"].items()},
            measures=slot["measures"], success_step=slot["tracker"].first_step)
        labels = check_labels(labeller.label(played), played, heads, getattr(labeller, "name", type(labeller).__name__))
        stored = write_labelled(store, job, played, labels, r, getattr(labeller, "name", type(labeller).__name__), heads_list)
        mask = labels.mask if labels.mask is not None else np.ones(len(played), dtype=bool)
        same = np.all([labels.actions[h] == played.actions[h] for h in heads_list], axis=0)
        row = {"job": job.episode_id, "task": job.task.id, "instruction": job.instruction, "seed": job.seed,
               "steps": len(played), "labelled": int(mask.sum()), "agree": int((same & mask).sum()),
               "success_step": played.success_step, "stored": stored,
               "expert_steps": slot["expert_steps"]}
        _append_line(lines_path, row)
        done[job.episode_id] = row
        if on_episode is not None:
            on_episode(row)

    def stepped(rec) -> None:
        if on_record is not None:
            on_record(rec)
        slot = slots[rec.slot]
        for h in heads_list:
            slot["actions"][h].append(int(rec.action[h]))
        slot["goals"].append(np.asarray(rec.goal, np.float32))
        if rec.measures is not None:  # the labeller acted instead of the agent (collect.expert_share)
            slot["expert_steps"] += int(rec.measures.get("label.expert_acted", 0.0))
        slot["tracker"].update(rec.t + 1, rec.measures)
        succeeded = stop_on_success and slot["tracker"].first_step is not None
        if rec.last or succeeded:
            if not rec.last:
                collector.end_episode(rec.slot)
            finish(rec.slot)
            return
        slot["frames"].append(rec.frame)  # the state the next action is chosen in
        slot["measures"].append(rec.measures)

    def crashed(c) -> None:
        slot, slots[c.slot] = slots[c.slot], None
        if slot is None:
            return
        job = slot["job"]
        job.retries += 1
        if job.retries > max_retries:
            raise UserError(f"the env of world {job.seed} ({job.task.id}) crashed {job.retries} times: {c.message}")
        pending.insert(0, job)  # replayed from its start

    collector = RolloutCollector(agent, num_envs, next_episode, workers=workers, on_start=started, on_step=stepped,
                                 on_crash=crashed)
    with collector:
        while collector.step():
            pass
    return [done[j.episode_id] for j in jobs if j.episode_id in done]


def collect_summary(rows: list[dict], seconds: float) -> dict:
    steps = sum(r["steps"] for r in rows)
    labelled = sum(r["labelled"] for r in rows)
    return {"episodes": len(rows), "steps": steps, "labelled": labelled,
            "agreement": sum(r["agree"] for r in rows) / labelled if labelled else None,
            "success": sum(r["success_step"] is not None for r in rows), "stored": sum(len(r["stored"]) for r in rows),
            "seconds": seconds}


# ---------------------------------------------------------------------------- train


def round_train_config(cfg: OnlineConfig, run: Path, r: int, init: str, goal_dim: int):
    """Round ``r``'s TrainConfig: the train preset and ``train.overrides``, then what the round
    sets itself (``config.ROUND_KEYS``): start weights, data, frames, seed. The saved config.yaml
    of the round's training lists the mixture as data.stores / data.weights (a frame-share
    mixture ``aimc train`` would draw at random; the round splits each batch exactly)."""
    from aimc.train.config import load_continued

    # data.weights=[]: a preset's mixture weights (crafter_finetune's 0.8/0.2) are replaced below
    base = load_continued(cfg.train.preset, init, cfg.train.overrides)
    share = cfg.mix.online_share
    online = str(Path(run) / "store")
    if share >= 1.0:
        stores, weights = [online], []
    else:
        sizes = _store_frames(cfg.stores)
        total = sum(sizes) or 1
        stores = [*map(str, cfg.stores), online]
        weights = [(1.0 - share) * n / total for n in sizes] + [share]
    frames = cfg.train.frames_per_round
    # the anchors of L2-SP and of the unconditioned policy are the weights the run started from, not
    # the round's (which are the previous round's): what the whole run may move stays bounded
    optim = replace(base.optim, l2sp_anchor=base.optim.l2sp_anchor or (cfg.init if base.optim.l2sp else ""),
                    uncond_kl_anchor=base.optim.uncond_kl_anchor or (cfg.init if base.optim.uncond_kl else ""))
    # the rounds reload their weights from .safetensors (+ .yaml): always export it, first
    export = [".safetensors", *[f for f in base.checkpoint.export if f != ".safetensors"]]
    return replace(
        base,
        checkpoint=replace(base.checkpoint, export=export),
        name=f"{cfg.name or 'online'} round {r} ({cfg.train.preset})",
        data=replace(base.data, stores=stores, weights=weights),
        optim=optim,
        model=replace(base.model, init=str(init), model_file="", goal_dim=goal_dim, policy={}),
        schedule=replace(base.schedule, n_frames=frames, warmup_frames=int(frames * cfg.train.warmup_fraction)),
        runtime=replace(base.runtime, seed=cfg.seed + r),
    )


def _store_frames(stores: list[str]) -> list[int]:
    from aimc.data.store import EpisodeStore

    return [EpisodeStore(s).total_frames() for s in stores]


def _store_lengths(root: Path) -> list[int]:
    from aimc.data.store import EpisodeStore

    store = EpisodeStore(root)
    return [store.open(e).num_frames for e in store.episode_ids()]


class EarlierData:
    """The earlier data's batch source and validation batches, built once per process and
    re-seeded for every round when the source allows it (the built-in world's is held in memory)."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._train: Any = None
        self._val: Any = None

    def get(self, tcfg) -> tuple[Any, Any]:
        from aimc.train.data import make_sources

        d = to_dict(tcfg)
        for k in ("runtime", "schedule", "model", "checkpoint", "logging", "validation", "name"):
            d.pop(k, None)
        key = json.dumps(d, sort_keys=True, default=str)
        if key == self._key and hasattr(self._train, "reseeded"):
            return self._train.reseeded(tcfg.runtime.seed), self._val
        self._train, self._val = make_sources(tcfg)
        self._key = key
        return self._train, self._val


def round_sources(cfg: OnlineConfig, tcfg, run: Path, earlier: EarlierData):
    """The round's batches: ``SplitBatches`` of the earlier data (its own relabeling) and the
    labelled steps of every round so far (acted goals, as stored), by ``mix.online_share`` of each
    batch's sequences; and the validation batches of the earlier data (None without it)."""
    from aimc.train.data import SplitBatches, make_sources, split_counts

    B = tcfg.optim.batch_size
    share = cfg.mix.online_share
    names = ["the labelled steps (mix.online_share)", "the earlier data (--store)"]
    n_online, n_earlier = split_counts(B, [share, 1.0 - share], names)

    def part(stores: list[str], n: int, seed: int, validate: bool):
        return replace(tcfg, data=replace(tcfg.data, stores=stores, weights=[]),
                       validation=replace(tcfg.validation, enabled=validate and tcfg.validation.enabled),
                       optim=replace(tcfg.optim, batch_size=n), runtime=replace(tcfg.runtime, seed=seed))

    lengths = _store_lengths(Path(run) / "store")
    if not lengths:
        raise UserError(f"the labeller {cfg.labeller.name} has labelled no step in the rounds so far, so there is nothing "
                        "to train on (own-successes labels successful episodes only): play more episodes per round "
                        "(collect.episodes) or start from weights that succeed sometimes")
    if not any(n >= tcfg.data.T for n in lengths):
        raise UserError(f"none of the {len(lengths)} labelled episodes so far has T={tcfg.data.T} frames (the train "
                        f"preset's data.T; the longest has {max(lengths, default=0)}), so there is nothing to train on: "
                        "raise collect.max_steps, or set collect.stop_on_success=false if the episodes end by succeeding")
    online_src, _ = make_sources(part([str(Path(run) / "store")], n_online, tcfg.runtime.seed + 1_000_003, False))
    if not n_earlier:
        return SplitBatches([("labelled steps", online_src, n_online)]), None
    earlier_src, val = earlier.get(part([str(s) for s in cfg.stores], n_earlier, tcfg.runtime.seed, True))
    return SplitBatches([("earlier data", earlier_src, n_earlier), ("labelled steps", online_src, n_online)]), val


def train_round(cfg: OnlineConfig, run: Path, r: int, init: str, goal_dim: int, earlier: EarlierData,
                max_seconds: float = 0.0) -> dict:
    """Continue training from ``init`` on the round's mixture; resumes the round's own training
    run from its latest checkpoint if a kill interrupted it. ``max_seconds`` > 0 stops the
    training early (the time budget, ``max_minutes``)."""
    from aimc.train.policy import train_policy

    tcfg = round_train_config(cfg, run, r, init, goal_dim)
    if max_seconds > 0:
        tcfg = replace(tcfg, schedule=replace(tcfg.schedule, max_seconds=float(max_seconds)))
    out = round_dir(run, r) / "train"
    resume = (out / "checkpoints" / "latest" / "state.pt").is_file()
    t0 = time.time()
    train_data, val_data = round_sources(cfg, tcfg, run, earlier)
    if val_data is None and tcfg.validation.enabled:  # no earlier data (mix.online_share=1): nothing to validate on
        tcfg = replace(tcfg, validation=replace(tcfg.validation, enabled=False))
    result = train_policy(tcfg, out, resume=resume, train_data=train_data, val_data=val_data)
    return {"weights": str(result.weights), "frames": int(result.frames), "steps": int(result.steps),
            "train_loss": result.last.get("train/loss"), "val_loss": result.last.get("val/loss"),
            "resumed": resume, "seconds": time.time() - t0, "formats": list(tcfg.checkpoint.export)}


# ---------------------------------------------------------------------------- validate


def validate_round(vsuite, agent, out_dir: Path, cfg: OnlineConfig, progress: bool) -> dict:
    """The validation suite played by ``agent`` (resumable: an ``aimc eval`` folder); the pooled
    instructed success with its Wilson interval and each task's."""
    from aimc.eval.metrics import rate
    from aimc.eval.report import write_summary
    from aimc.eval.runner import run_suite

    t0 = time.time()
    run_suite(vsuite, agent, out_dir, num_envs=cfg.validate.num_envs, workers=cfg.validate.workers, progress=progress)
    summary = write_summary(out_dir, vsuite)
    tasks = {tid: e["instructed"] for tid, e in summary["tasks"].items()}
    pooled = rate(sum(t["successes"] for t in tasks.values()), sum(t["n"] for t in tasks.values()))
    return {"success": pooled.to_dict(), "tasks": tasks, "dir": str(out_dir), "seconds": time.time() - t0}


# ---------------------------------------------------------------------------- the agent


@dataclass
class Models:
    """What stays the same over the rounds: the text side (MineCLIP, prior) and the policy's heads."""

    mineclip: Any
    prior: Any
    heads: dict[str, int]
    goal_dim: int
    mineclip_path: str
    prior_path: str


def load_models(cfg: OnlineConfig) -> Models:
    from aimc.agent.agent import find_companion
    from aimc.checkpoints.mineclip import load_mineclip
    from aimc.checkpoints.prior import load_prior
    from aimc.checkpoints.vpt import load_policy

    policy = load_policy(cfg.init)
    clip_path = cfg.agent.mineclip or find_companion(cfg.init, "mineclip")
    prior_path = cfg.agent.prior or find_companion(cfg.init, "prior")
    if not clip_path:
        raise UserError(f"no MineCLIP checkpoint found near {cfg.init}: instructions need one, pass --mineclip PATH")
    if not prior_path:
        raise UserError(f"no prior checkpoint found near {cfg.init}: instructions become goals through it, pass --prior PATH")
    return Models(load_mineclip(clip_path), load_prior(prior_path), dict(policy.cfg.action_heads),
                  int(policy.cfg.mineclip_embed_dim), str(clip_path), str(prior_path))


def make_agent(weights: str, models: Models, cfg: OnlineConfig, seed: int):
    """The agent of ``weights`` as ``aimc eval`` builds it (sampled actions, one prior sample per
    episode seeded by its world), with the run's MineCLIP and prior."""
    from aimc.agent.agent import Agent
    from aimc.checkpoints.vpt import load_policy
    from aimc.utils.device import resolve_device

    device = resolve_device(None if cfg.agent.device == "auto" else cfg.agent.device)
    return Agent(load_policy(weights), models.mineclip, models.prior, cond_scale=cfg.agent.cond_scale, device=device,
                 seed=seed, name=str(Path(weights).resolve()))


# ---------------------------------------------------------------------------- state, README, TensorBoard


def load_state(run: Path) -> dict:
    return read_state_json(Path(run) / STATE_FILE, {"rounds": {}})


def save_state(run: Path, state: dict) -> None:
    write_state_json(Path(run) / STATE_FILE, state)


def check_same_config(run: Path, cfg: OnlineConfig) -> None:
    """A run continues only with the settings it started with (those in ``CONTINUABLE`` may change)."""
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        if (Path(run) / STATE_FILE).is_file():
            raise UserError(f"{run}: {STATE_FILE} without {CONFIG_FILE}; choose a new --out")
        return
    diff = changed_settings(to_dict(load_config(OnlineConfig, path)), to_dict(cfg), CONTINUABLE, ("instructions", "options"))
    if diff:
        k, was, now = diff[0]
        raise UserError(f"{run} holds an aimc online run started with {k}={was!r}, now {now!r}"
                        + (f" (and {len(diff) - 1} more differences)" if len(diff) > 1 else "")
                        + f"; run it with the settings it started with (only {', '.join(sorted(CONTINUABLE))} may change), "
                          "or choose a new --out")


def round_seconds(rs: dict) -> float:
    return sum(rs[p].get("seconds", 0.0) for p in PHASES if rs.get(p))


def readme_text(cfg: OnlineConfig, state: dict) -> str:
    """The run's experiment log, made from the state alone (so it is rewritten after every phase)."""
    rounds = state.get("rounds", {})
    lines = [f"# Online learning run{': ' + cfg.name if cfg.name else ''}", "",
             f"- started: {state.get('started', '?')}; git: `{state.get('git', 'unknown')}`"]
    for s in state.get("sessions", []):
        lines.append(f"- session {s['started']}: `{s['command']}`")
    lines += [
        f"- start weights `{cfg.init}`; earlier data {', '.join(f'`{s}`' for s in cfg.stores) or 'none'}",
        f"- {cfg.rounds} rounds of {cfg.collect.episodes} episodes each, on training worlds from {cfg.collect.seed:,} "
        f"(suite `{cfg.suite}`, tasks: {', '.join(cfg.tasks) or 'all'}), labelled by `{cfg.labeller.name}`",
        f"- every round trains {cfg.train.frames_per_round:,} frames (preset `{cfg.train.preset}`), "
        f"{cfg.mix.online_share:.0%} of each batch from the labelled steps of all rounds so far",
        f"- validation: {cfg.validate.episodes} episodes per task on worlds from {cfg.validate.seed:,}",
        "", "Configuration: [config.yaml](config.yaml); state: `online.json`; curves: `tensorboard --logdir tb`.", "",
        "## Rounds", "",
        "| round | episodes | labelled steps | agent = label | success while playing | frames trained "
        "| validation success [95 % CI] | seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    init = state.get("initial")
    if init:
        lines.append(f"| 0 (start) | | | | | | {rate_text(init['success'])} | {init['seconds']:.0f} |")
    pending = "…"
    for key in sorted(rounds, key=int):
        rs = rounds[key]
        c, t, v = rs.get("collect"), rs.get("train"), rs.get("validate")
        episodes = str(c["episodes"]) if c else pending
        labelled = f"{c['labelled']:,}" if c else pending
        agree = f"{c['agreement']:.2f}" if c and c.get("agreement") is not None else (pending if not c else "-")
        playing = f"{c['success']}/{c['episodes']}" if c else pending
        frames = f"{t['frames']:,}" if t else pending
        val = rate_text(v["success"]) if v else (pending if cfg.validate.episodes else "not validated")
        lines.append(f"| {key} | {episodes} | {labelled} | {agree} | {playing} | {frames} | {val} | {round_seconds(rs):.0f} |")
    best, final = state.get("best"), state.get("final")
    if best or final:
        lines.append("")
    if best:
        lines.append(f"Best round: {best['round']} (validation success {rate_text(best.get('success'))}), "
                     f"exported as {', '.join(f'`{Path(p).name}`' for p in best['files'])}.")
        if best["round"] and cfg.validate.episodes < 60:
            lines.append(f"Validated on {cfg.validate.episodes} episodes per task: with fewer than 60, the round kept is "
                         "often the luckiest one, not the best (docs/online.md); play it again on other worlds with "
                         "`aimc eval` before using it.")
    if state.get("stopped"):
        lines.append(f"Stopped early: {state['stopped']}.")
    if final:
        lines.append(f"Last round: {final['round']}, exported as {', '.join(f'`{Path(p).name}`' for p in final['files'])}.")
    task_rows = [("0 (start)", init)] if init else []
    task_rows += [(k, rounds[k].get("validate")) for k in sorted(rounds, key=int) if rounds[k].get("validate")]
    if task_rows:
        tids = list(task_rows[0][1]["tasks"])
        lines += ["", "## Validation success per task", "", "| round | " + " | ".join(tids) + " |",
                  "| ---: |" + " --- |" * len(tids)]
        for k, v in task_rows:
            lines.append(f"| {k} | " + " | ".join(rate_text(v["tasks"].get(t)) for t in tids) + " |")
    lines += ["", "## Next", "",
              "- more rounds: run the same `aimc online` command with a higher `rounds=N` and the same `--out`;",
              f"- the evaluation on worlds never used here: `{eval_command(cfg, state)}`."]
    return "\n".join(lines) + "\n"


def eval_command(cfg: OnlineConfig, state: dict, out: str = "EVAL_DIR") -> str:
    """``aimc eval`` of the best weights with this run's agent settings (the suite's own worlds)."""
    models = state.get("models", {})
    return (f"aimc eval --weights {Path(state.get('run', '.')) / 'best.safetensors'} --mineclip {models.get('mineclip')} "
            f"--prior {models.get('prior')} --cond-scale {cfg.agent.cond_scale:g} --suite {cfg.suite} --out {out}")


def log_round(run: Path, r: int, state: dict) -> None:
    """TensorBoard scalars of round ``r`` (0: the start weights), at step r; a repeated call
    (after a kill) replaces them."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the README and online.json hold the same numbers
        return
    if r == 0:
        rs = {"validate": state.get("initial")}
    else:
        rs = state["rounds"][str(r)]
    c, t, v = rs.get("collect"), rs.get("train"), rs.get("validate")
    total = sum(x["collect"]["labelled"] for k, x in state["rounds"].items() if int(k) <= r and x.get("collect"))
    scalars: dict[str, float | None] = {}
    if c:
        scalars.update({"online/episodes": c["episodes"], "online/labelled_steps": c["labelled"],
                        "online/labelled_steps_total": total, "online/agreement": c["agreement"],
                        "online/success_while_playing": c["success"] / max(c["episodes"], 1)})
    if t:
        scalars.update({"online/frames_trained": t["frames"], "online/train_loss": t.get("train_loss"),
                        "online/val_loss": t.get("val_loss")})
    if v:
        scalars["online/val_success"] = v["success"]["rate"]
        scalars.update({f"online/val_success/{tid}": e["rate"] for tid, e in v["tasks"].items()})
    if r:
        scalars["online/seconds"] = round_seconds(rs)
    writer = SummaryWriter(log_dir=str(Path(run) / "tb"), purge_step=r)
    for k, val in scalars.items():
        if val is not None:
            writer.add_scalar(k, float(val), global_step=r)
    writer.close()


def pick_best(state: dict, validated: bool) -> int:
    """The kept round: the highest validation success, the earliest of equals (a round must beat
    the one kept before it); without validation the last trained round."""
    rounds = state.get("rounds", {})
    trained = [int(k) for k, rs in rounds.items() if rs.get("train")]
    if not validated:
        return max(trained, default=0)
    scores = [(0, state["initial"]["success"]["rate"])] if state.get("initial") else []
    scores += [(int(k), rs["validate"]["success"]["rate"]) for k, rs in rounds.items() if rs.get("validate")]
    if not scores:
        return max(trained, default=0)
    return max(scores, key=lambda x: (x[1], -x[0]))[0]


def export_as(weights: str, stem: Path, formats: list[str]) -> list[str]:
    """``weights`` written as ``stem.<fmt>`` for each format (as aimc train exports)."""
    from aimc.checkpoints.vpt import load_policy
    from aimc.train.policy import export_weights

    return [str(p) for p in export_weights(load_policy(weights), stem, formats)]


def weights_after(cfg: OnlineConfig, state: dict, r: int) -> str:
    """The weights the agent has after round ``r`` (0: the start weights)."""
    return cfg.init if r == 0 else state["rounds"][str(r)]["train"]["weights"]


# ---------------------------------------------------------------------------- the run


def check_inputs(cfg: OnlineConfig) -> None:
    """The files a run needs, before anything starts: clear errors naming the file and the fix."""
    from aimc.checkpoints.safe_load import check_readable_file
    from aimc.data.store import EpisodeStore

    if not cfg.init:
        raise UserError("give the weights to start from: --init RUN/final.safetensors (as aimc train exports them)")
    init = check_readable_file(Path(cfg.init), "--init weights")
    if init.suffix != ".safetensors":
        raise UserError(f"--init {init}: aimc online starts from aimc .safetensors weights (+ their .yaml); convert "
                        f"official weights first: aimc checkpoint convert {init} {init.with_suffix('.safetensors')} "
                        "--model 2x.model")
    if not init.with_suffix(".yaml").is_file():
        raise UserError(f"--init {init}: its config {init.with_suffix('.yaml').name} is missing beside it (aimc saves both)")
    from aimc.train.config import load_continued

    load_continued(cfg.train.preset, init, cfg.train.overrides)  # a typo fails now, not after round 1's play
    if not cfg.stores and cfg.mix.online_share < 1.0:
        raise UserError(f"mix.online_share={cfg.mix.online_share:g} mixes earlier data into every round, but no --store "
                        "was given: pass the earlier data (e.g. --store runs/quickstart/store) or set mix.online_share=1")
    for s in cfg.stores:
        store = EpisodeStore(s)
        store.require_exists()
        if not store.episode_ids():
            raise UserError(f"--store {s}: the store holds no episode")


def run_online(cfg: OnlineConfig, run_dir: str | Path, *, progress: bool = True, command: str = "",
               on_phase: Callable[[int, str], None] | None = None) -> dict:
    """Run (or continue) ``cfg.rounds`` rounds in ``run_dir``; returns the state (also in
    ``run_dir/online.json``). ``on_phase(round, phase)`` is called as each phase starts
    (round 0, "validate": the start weights). ``cfg.threads`` applies while it runs."""
    import torch

    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_online(cfg, Path(run_dir), progress, command, on_phase)
    finally:
        torch.set_num_threads(threads_before)


def _run_online(cfg: OnlineConfig, run: Path, progress: bool, command: str,
                on_phase: Callable[[int, str], None] | None) -> dict:
    from rich.console import Console

    from aimc.data.store import EpisodeStore
    from aimc.eval.runner import check_measures
    from aimc.eval.suite import load_suite
    from aimc.train.rundir import open_session

    console = Console(stderr=True, quiet=not progress, highlight=False)
    check_inputs(cfg)
    check_same_config(run, cfg)
    suite = load_suite(cfg.suite)
    task_ids = [t.id for t in select_tasks(suite, cfg.tasks)]  # unknown task ids fail here
    unknown = sorted(set(cfg.collect.instructions) - set(task_ids))
    if unknown:
        raise UserError(f"collect.instructions names task {unknown[0]!r}, which the rounds do not play "
                        f"(tasks: {', '.join(task_ids)})")
    labeller = make_labeller(cfg.labeller.name, cfg.labeller.options)
    vsuite = validation_suite(cfg, suite)
    check_measures(vsuite)
    models = load_models(cfg)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / CONFIG_FILE)
    state = load_state(run)
    open_session(state, run, command or "run_online() from Python")
    state["models"] = {"mineclip": models.mineclip_path, "prior": models.prior_path}
    state.setdefault("rounds", {})
    store = EpisodeStore(run / "store", embed_dtype="float32")
    earlier = EarlierData()
    validated = cfg.validate.episodes > 0

    def save() -> None:
        save_state(run, state)
        atomic_write_text(run / "README.md", readme_text(cfg, state))

    def phase(r: int, name: str) -> None:
        if on_phase is not None:
            on_phase(r, name)

    started = time.time()
    budget = cfg.max_minutes * 60.0

    def time_left() -> float:
        return budget - (time.time() - started) if budget else math.inf

    state.pop("stopped", None)
    ran = 0  # rounds this command worked on (the first always runs, whatever the budget)
    save()
    if validated and cfg.validate.initial and "initial" not in state:
        phase(0, "validate")
        console.print(f"[bold]round 0[/]: validating the start weights ({len(vsuite.tasks)} task(s) x "
                      f"{cfg.validate.episodes} episodes on worlds from {cfg.validate.seed:,})")
        agent = make_agent(cfg.init, models, cfg, cfg.seed)
        with acting_threads(agent):
            state["initial"] = validate_round(vsuite, agent, round_dir(run, 0) / "validate", cfg, progress)
        save()
        log_round(run, 0, state)
        console.print(f"round 0: validation success {rate_text(state['initial']['success'])}")

    for r in range(1, cfg.rounds + 1):
        rs = state["rounds"].setdefault(str(r), {})
        if all(rs.get(p) for p in PHASES if p != "validate" or validated) and rs.get("exported"):
            continue
        head = f"[bold]round {r}/{cfg.rounds}[/]"
        longest = max((round_seconds(x) for x in state["rounds"].values() if x.get("exported")), default=0.0)
        if not rs and ran and time_left() < longest:
            state["rounds"].pop(str(r))
            state["stopped"] = (f"max_minutes={cfg.max_minutes:g}: {max(0.0, time_left()) / 60:.1f} min left, the "
                                f"longest round took {longest / 60:.1f} min; round {r} was not started")
            console.print(f"{head}: not started ({state['stopped']})")
            break
        ran += 1
        if not rs.get("collect"):
            phase(r, "collect")
            jobs = plan_collection(cfg, suite, labeller, r)
            console.print(f"{head}: playing {len(jobs)} episodes on training worlds {jobs[0].seed:,}-{jobs[-1].seed:,}, "
                          f"labelled by {cfg.labeller.name}")
            t0 = time.time()
            agent = make_agent(weights_after(cfg, state, r - 1), models, cfg, cfg.seed + r)
            with acting_threads(agent):
                rows = _collect_with_progress(agent, jobs, labeller, store, run, r, models, cfg, console, progress)
            rs["collect"] = collect_summary(rows, time.time() - t0)
            save()
        if not rs.get("train"):
            phase(r, "train")
            c = rs["collect"]
            console.print(f"{head}: training {cfg.train.frames_per_round:,} frames from the current weights "
                          f"({cfg.mix.online_share:.0%} from {sum(x['collect']['labelled'] for x in state['rounds'].values() if x.get('collect')):,} "
                          f"labelled steps of {r} round(s); this round {c['labelled']:,})")
            val_s = state["initial"]["seconds"] if state.get("initial") and validated else 0.0
            cap = time_left() - 1.2 * val_s if budget else 0.0
            rs["train"] = train_round(cfg, run, r, weights_after(cfg, state, r - 1), models.goal_dim, earlier,
                                      max_seconds=max(30.0, cap) if budget else 0.0)
            save()
        formats = rs["train"]["formats"]  # the train preset's checkpoint.export
        if validated and not rs.get("validate"):
            phase(r, "validate")
            console.print(f"{head}: validating on {len(vsuite.tasks)} task(s) x {cfg.validate.episodes} episodes")
            agent = make_agent(rs["train"]["weights"], models, cfg, cfg.seed)
            with acting_threads(agent):
                rs["validate"] = validate_round(vsuite, agent, round_dir(run, r) / "validate", cfg, progress)
            save()
        best = pick_best(state, validated)
        best_val = state.get("initial") if best == 0 else state["rounds"][str(best)].get("validate")
        state["final"] = {"round": r, "files": export_as(rs["train"]["weights"], run / "final", formats)}
        state["best"] = {"round": best, "success": (best_val or {}).get("success"),
                         "files": export_as(weights_after(cfg, state, best), run / "best", formats)}
        rs["exported"] = True
        save()
        log_round(run, r, state)
        c, t, v = rs["collect"], rs["train"], rs.get("validate")
        console.print(f"{head} done in {round_seconds(rs):.0f} s: {c['episodes']} episodes, {c['labelled']:,} labelled "
                      f"steps (agent = label {c['agreement'] or 0:.2f}, success while playing {c['success']}/{c['episodes']}), "
                      f"{t['frames']:,} frames trained"
                      + (f", validation {rate_text(v['success'])}" if v else "") + f"; best: round {best}")
    save()
    return state


def _collect_with_progress(agent, jobs, labeller, store, run, r, models, cfg, console, progress) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(f"round {r} play"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                   TimeElapsedColumn(), console=console, disable=not progress, transient=False)
    task = bar.add_task("episodes", total=len(jobs), note="")
    steps = [0, 0]

    def on_episode(row: dict) -> None:
        steps[0] += row["labelled"]
        steps[1] += row["success_step"] is not None
        bar.update(task, advance=1, note=f"{steps[0]:,} labelled steps, {steps[1]} successes")

    with bar:
        return collect_round(agent, jobs, labeller, store, round_dir(run, r), r, heads=models.heads,
                             num_envs=cfg.collect.num_envs, workers=cfg.collect.workers,
                             stop_on_success=cfg.collect.stop_on_success, on_episode=on_episode)
