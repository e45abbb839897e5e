"""Run a suite: N episodes per task on fixed world seeds, batched, resumable.

Every episode is a *job*: a condition (a task's instruction variant, or no instruction), an
episode index and its world seed ``suite.seed + episode``. The same jobs, hence the same worlds,
are played by every model, so two models are compared on paired episodes.

The episodes are played by :class:`aimc.agent.rollout.RolloutCollector`: all slots of a vector
env at once, one batched policy forward per step (with classifier-free guidance inside it),
environments stepped in worker processes. When an episode ends, its slot takes the next job.
Each finished episode is appended as one JSON line to ``results.jsonl`` (flushed and fsynced);
a killed evaluation run again with the same output folder skips the episodes already there, so
it continues where it stopped.

Output folder::

    out/
      meta.json        suite name + fingerprint, model description, settings
      suite.yaml       the suite as run
      results.jsonl    one line per finished episode
      summary.json     rates, intervals, lifts, instruction matrix (aimc.eval.metrics.summarize)
      summary.md       the same as tables
      videos/          the first --videos episodes of every condition (prompt overlaid)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from aimc.agent.agent import acting_threads
from aimc.agent.rollout import Crash, Episode, RolloutCollector, StepRecord
from aimc.errors import UserError
from aimc.eval.suite import UNCONDITIONED, Suite, SuccessTracker
from aimc.utils.io import atomic_write_text, make_dir


class EvalAgent(Protocol):
    """What the evaluator needs from an agent (``aimc.agent.Agent`` implements it)."""

    def reset(self, batch_size: int) -> None: ...

    def goal(self, instruction: str | None, seed: int) -> np.ndarray: ...  # (D,); zeros = no goal

    def act(self, frames: np.ndarray, goals: np.ndarray, first: np.ndarray) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict: ...


@dataclass
class Job:
    """One episode to play. ``condition`` is a task id or ``_unconditioned``."""

    key: str
    condition: str
    variant: int
    instruction: str | None
    lang: str | None
    episode: int
    seed: int
    env: dict
    horizon: int
    scored: tuple[str, ...]
    retries: int = 0
    crashes: list[str] = field(default_factory=list)


def plan_jobs(suite: Suite, episodes: int | None = None) -> list[Job]:
    """Every episode of the suite, in a fixed order (conditions interleaved by episode).

    Per task: ``episodes`` episodes on seeds ``seed .. seed+episodes-1``, episode k phrased with
    instruction variant ``k mod len(instructions)``. Matrix suites (and ``unconditioned: true``)
    add the same episodes without instruction; matrix episodes are scored on every task.
    """
    n = episodes or suite.episodes
    conditions: list[tuple[str, Any]] = [(t.id, t) for t in suite.tasks]
    if suite.unconditioned:
        if suite.matrix:
            conditions.append((UNCONDITIONED, None))
        else:
            conditions += [(f"{t.id}@{UNCONDITIONED}", t) for t in suite.tasks]
    jobs = []
    for e in range(n):
        for cond, task in conditions:
            if suite.matrix:
                env, horizon, scored = suite.env, suite.episode_steps, tuple(t.id for t in suite.tasks)
            else:
                env, horizon, scored = {**suite.env, **task.env}, task.max_steps, (task.id,)
            if task is None or cond.endswith(UNCONDITIONED):
                v, text, lang = -1, None, None
            else:
                v = e % len(task.instructions)
                text, lang = task.instructions[v].text, task.instructions[v].lang
            jobs.append(Job(f"{cond}/v{v}/e{e}", cond, v, text, lang, e, suite.seed + e, env, horizon, scored))
    return jobs


def check_measures(suite: Suite) -> None:
    """Fail before playing if a success rule reads a measure the environment never reports."""
    from aimc.agent.envs import known_measures

    for t in suite.tasks:
        known = known_measures({**suite.env, **t.env})
        if known is None:
            continue
        unknown = sorted(t.success.measures() - known)
        if unknown:
            raise UserError(
                f"{suite.source or suite.name}: task {t.id!r} reads {unknown[0]!r}, which env "
                f"{suite.env.get('name')!r} does not report; known: {', '.join(sorted(known))}"
            )


def suite_fingerprint(suite: Suite) -> str:
    """Changes whenever anything that affects results changes (tasks, rules, env, seeds)."""
    blob = json.dumps(_suite_to_dict(suite), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _suite_to_dict(suite: Suite) -> dict:
    def rule(r):
        return {"kind": r.kind, "keys": list(r.keys), "op": r.op, "value": r.value,
                "children": [rule(c) for c in r.children]}

    return {
        "name": suite.name, "env": suite.env, "max_steps": suite.max_steps, "seed": suite.seed,
        "matrix": suite.matrix, "unconditioned": suite.unconditioned,
        "tasks": [{"id": t.id, "instructions": [[i.text, i.lang] for i in t.instructions], "success": rule(t.success),
                   "max_steps": t.max_steps, "env": t.env} for t in suite.tasks],
    }


# ---------------------------------------------------------------------------- results file


def read_results(path: str | Path) -> list[dict]:
    """Complete JSON lines of ``path`` (a line cut short by a kill is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _repair_results(path: Path) -> list[dict]:
    """Drop a half-written last line left by a kill, so appends start on a clean line."""
    rows = read_results(path)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        clean = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if text != clean:
            atomic_write_text(path, clean)
    return rows


class _ResultsWriter:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# ---------------------------------------------------------------------------- the loop


@dataclass
class _Slot:
    job: Job
    trackers: dict[str, SuccessTracker]
    step: int = 0
    started: float = 0.0
    video: Any = None


def _open_meta(out_dir: Path, suite: Suite, agent_desc: dict, settings: dict) -> None:
    meta_path = out_dir / "meta.json"
    fp = suite_fingerprint(suite)
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict):
            raise UserError(f"{meta_path}: not readable (a copy cut short?), so the results beside it cannot be "
                            "trusted to be of this suite and model; pick a new --out folder or delete this one")
        if old.get("suite_fingerprint") != fp or old.get("agent") != agent_desc:
            raise UserError(
                f"{out_dir} holds results of a different suite or model "
                f"(suite {old.get('suite')!r}, agent {old.get('agent')}); pick a new --out folder "
                "or delete this one to start over"
            )
        return
    meta = {"suite": suite.name, "suite_fingerprint": fp, "agent": agent_desc, "settings": settings,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(meta_path, json.dumps(meta, indent=2, ensure_ascii=False))
    atomic_write_text(out_dir / "suite.yaml", yaml.safe_dump(_suite_to_dict(suite), sort_keys=False, allow_unicode=True))


def run_suite(
    suite: Suite,
    agent: EvalAgent,
    out_dir: str | Path,
    *,
    episodes: int | None = None,
    num_envs: int = 1,
    workers: int = 0,
    videos: int = 0,
    video_scale: int = 4,
    max_retries: int = 2,
    progress: bool = True,
    video_jobs: Callable[[Job], bool] | None = None,
) -> Path:
    """Play every job of ``suite`` not yet in ``out_dir/results.jsonl``; returns that path.

    num_envs: episodes played at once (the policy's batch). workers: env processes (0 = in this
    process). videos: record the first ``videos`` episodes of every condition. max_retries: an
    episode whose env crashed is replayed from its start this many times, then recorded with
    ``error``. video_jobs: which episodes to record instead (e.g. one sample episode).
    Summaries are written by :func:`aimc.eval.report.write_summary`.
    """
    check_measures(suite)
    out_dir = Path(out_dir)
    make_dir(out_dir, "evaluation's output folder (--out)")
    settings = {"episodes": episodes or suite.episodes, "num_envs": num_envs, "workers": workers}
    _open_meta(out_dir, suite, agent.describe(), settings)
    results_path = out_dir / "results.jsonl"
    done = {r["key"] for r in _repair_results(results_path)}
    pending = [j for j in plan_jobs(suite, episodes) if j.key not in done]
    if not pending:
        return results_path

    writer = _ResultsWriter(results_path)
    slots: list[_Slot | None] = [None] * num_envs
    task_by_id = {t.id: t for t in suite.tasks}

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"eval {suite.name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   disable=not progress, transient=False)
    task_bar = bar.add_task("episodes", total=len(pending))

    def finish(s: int, error: str | None = None) -> None:
        slot = slots[s]
        assert slot is not None
        job = slot.job
        if slot.video is not None:
            slot.video.close()
        row = {
            "key": job.key, "condition": job.condition, "variant": job.variant, "instruction": job.instruction,
            "lang": job.lang, "episode": job.episode, "seed": job.seed, "steps": slot.step,
            "success": {t: tr.first_step for t, tr in slot.trackers.items()},
            "crashes": job.crashes, "error": error, "wall_s": round(time.time() - slot.started, 3),
            "video": str(Path("videos") / _video_name(job)) if slot.video is not None else None,
        }
        writer.write(row)
        slots[s] = None
        bar.advance(task_bar)

    def next_episode(s: int) -> Episode | None:
        if not pending:
            return None
        job = pending.pop(0)
        slots[s] = _Slot(job, {t: SuccessTracker(task_by_id[t].success, min(task_by_id[t].max_steps, job.horizon))
                               for t in job.scored}, started=time.time())
        return Episode(job.env, job.seed, instruction=job.instruction, horizon=job.horizon, tag=job)

    def started(s: int, ep: Episode, frame: np.ndarray, measures: dict) -> None:
        slot = slots[s]
        for tr in slot.trackers.values():
            tr.update(0, measures)
        if video_jobs(slot.job) if video_jobs is not None else (videos and slot.job.episode < videos):
            from aimc.agent.video import VideoWriter

            slot.video = VideoWriter(out_dir / "videos" / _video_name(slot.job), scale=video_scale)
            slot.video.add(frame, slot.job.instruction or "(no instruction)", 0)

    def stepped(r: StepRecord) -> None:
        slot = slots[r.slot]
        slot.step = r.t + 1
        for tr in slot.trackers.values():
            tr.update(slot.step, r.measures)
        if slot.video is not None:
            slot.video.add(r.frame, slot.job.instruction or "(no instruction)", slot.step)
        all_settled = all(tr.first_step is not None or slot.step >= tr.horizon for tr in slot.trackers.values())
        if r.last or all_settled:
            collector.end_episode(r.slot)
            finish(r.slot)

    def crashed(c: Crash) -> None:
        s = c.slot
        job = slots[s].job if slots[s] is not None else None
        if job is None:
            return
        job.crashes.append(c.message)
        if slots[s].video is not None:
            slots[s].video.close()
        slots[s] = None
        job.retries += 1
        if job.retries <= max_retries:
            pending.insert(0, job)  # replay from the start of the same world
        else:
            slots[s] = _Slot(job, {t: SuccessTracker(task_by_id[t].success, task_by_id[t].max_steps) for t in job.scored})
            finish(s, error=c.message)

    collector = RolloutCollector(agent, num_envs, next_episode, workers=workers, on_start=started, on_step=stepped,
                                 on_crash=crashed)
    try:
        with bar, acting_threads(agent):  # one torch thread on a CPU (a shared machine stalls with more)
            while collector.step():
                pass
    finally:
        for slot in slots:
            if slot is not None and slot.video is not None:
                slot.video.close()
        writer.close()
        collector.close()
    return results_path


def _video_name(job: Job) -> str:
    return job.key.replace("/", "__").replace("@", "-") + ".mp4"
