"""Watch an agent follow a prompt: play episodes and record them (``aimc run``).

    result = play(agent, {"name": "crafter"}, prompts=PromptSchedule(["chop a tree"], 10**9),
                  steps=300, video="out.mp4")

Goals come from a prompt (through MineCLIP and the prior), a prompt schedule, a goal video, or
the terminal (``interactive``: each line typed becomes the new prompt; ``quit`` stops). Several
environments can play at once (``num_envs``, in ``workers`` processes) with one batched, guided
policy forward per step; env k is recorded to ``out.mp4`` (k = 0) or ``out_env{k}.mp4``. A
sidecar ``out.json`` lists the prompt changes and the events (achievements, inventory gains)
with their steps. An env that crashes is rebuilt and its slot starts a new episode. The episodes
are played by :class:`aimc.agent.rollout.RolloutCollector`.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from aimc.agent.agent import Agent, PromptSchedule
from aimc.agent.rollout import Crash, Episode, RolloutCollector, StepRecord
from aimc.agent.video import VideoWriter
from aimc.errors import UserError
from aimc.utils.io import atomic_write_text


@dataclass
class PlayResult:
    """What happened: videos written, steps, episodes, crashes, prompt changes and events."""

    videos: list[Path] = field(default_factory=list)
    steps: int = 0
    episodes: int = 0
    crashes: list[str] = field(default_factory=list)
    prompts: list[dict] = field(default_factory=list)  # [{"step": s, "prompt": p}]
    events: list[dict] = field(default_factory=list)  # [{"env": k, "step": s, "event": "achievement.collect_wood"}]


class _Terminal:
    """Reads prompts typed in the terminal on a background thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.strip())
        self.lines.put(None)  # end of input

    def poll(self) -> list[str | None]:
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out


class _Window:
    """Shows frames in a window (matplotlib) when a display is available; otherwise does nothing."""

    def __init__(self) -> None:
        self.ok = False
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform in ("darwin", "win32")):
            return
        try:
            import matplotlib

            if matplotlib.get_backend().lower() in ("agg", "pdf", "svg", "ps"):
                matplotlib.use("TkAgg")
            import matplotlib.pyplot as plt

            plt.ion()
            self.fig, self.ax = plt.subplots()
            self.ax.axis("off")
            self.im = None
            self.plt = plt
            self.ok = True
        except Exception:  # noqa: BLE001 - no GUI toolkit: record to video only
            self.ok = False

    def show(self, frame: np.ndarray) -> None:
        if not self.ok:
            return
        if self.im is None:
            self.im = self.ax.imshow(frame)
        else:
            self.im.set_data(frame)
        self.plt.pause(0.001)


def _video_paths(video: str | Path | None, n: int) -> list[Path | None]:
    if video is None:
        return [None] * n
    video = Path(video)
    return [video if k == 0 else video.with_name(f"{video.stem}_env{k}{video.suffix}") for k in range(n)]


def play(
    agent: Agent,
    env_cfg: dict,
    *,
    steps: int,
    prompts: PromptSchedule | None = None,
    goal_frames: np.ndarray | None = None,
    video: str | Path | None = None,
    seed: int = 0,
    num_envs: int = 1,
    workers: int = 0,
    interactive: bool = False,
    input_stream: IO[str] | None = None,
    fps: int = 20,
    scale: int = 4,
    realtime: bool | None = None,
    progress: bool = True,
) -> PlayResult:
    """Play ``steps`` steps in ``num_envs`` environments (world seeds ``seed, seed+1, ...``).

    Exactly one goal source: ``prompts`` (a schedule; one prompt = a fixed prompt),
    ``goal_frames`` (a goal clip (L, H, W, 3)), or ``interactive`` (starting from ``prompts``
    if given). ``realtime`` paces play at ``fps`` (default: on in interactive mode).
    """
    if interactive and input_stream is None:
        input_stream = sys.stdin
    if goal_frames is None and prompts is None and not interactive:
        raise UserError("give a goal: --prompt, --prompts with --switch-every, --goal-video, or --interactive")
    realtime = interactive if realtime is None else realtime
    result = PlayResult()
    writers = [VideoWriter(p, fps=fps, scale=scale) if p is not None else None for p in _video_paths(video, num_envs)]
    terminal = _Terminal(input_stream) if interactive else None
    window = _Window() if interactive else None

    def label(prompt: str | None) -> str:
        if goal_frames is not None and prompt is None:
            return "(goal video)"
        return prompt if prompt else "(no prompt: type one)"

    def goals_for(prompt: str | None) -> np.ndarray:
        if goal_frames is not None and prompt is None:
            return np.repeat(agent.video_goal(goal_frames)[None], num_envs, 0)
        if not prompt:
            return np.repeat(agent.zero_goal()[None], num_envs, 0)
        return agent.text_goals([prompt] * num_envs, [seed + k for k in range(num_envs)])

    # world seeds: env k starts on seed + k; every later episode (after an end or a crash) takes the next one
    next_seed = seed + num_envs
    played = [False] * num_envs
    failed_starts = [0] * num_envs
    crashed_at = [False] * num_envs  # the slot's episode crashed: its new first frame takes the step's place
    last_measures: list[dict[str, float]] = [{} for _ in range(num_envs)]
    step = 0

    def next_episode(k: int) -> Episode:
        nonlocal next_seed
        if failed_starts[k] >= 3:
            raise UserError(f"env {env_cfg.get('name')!r} failed to start 3 times: {result.crashes[-1]}")
        if played[k]:
            world, next_seed = next_seed, next_seed + 1
        else:
            world, played[k] = seed + k, True
        return Episode(env_cfg, world, goal=goals[k])

    def started(k: int, ep: Episode, frame: np.ndarray, measures: dict) -> None:
        failed_starts[k] = 0
        last_measures[k] = measures
        result.episodes += 1
        if crashed_at[k]:
            crashed_at[k] = False
            if writers[k] is not None:
                writers[k].add(frame, label(prompt), step)

    def stepped(r: StepRecord) -> None:
        k = r.slot
        for name, v in r.measures.items():
            if name.startswith(("achievement.", "inventory.")) and v > last_measures[k].get(name, 0):
                result.events.append({"env": k, "step": step, "event": name, "value": v})
        last_measures[k] = r.measures
        if writers[k] is not None:
            writers[k].add(r.frame, label(prompt), step)

    def crashed(c: Crash) -> None:
        if c.step is None:
            result.crashes.append(f"env {c.slot} reset: {c.message}")
            failed_starts[c.slot] += 1
        else:
            result.crashes.append(f"env {c.slot} step {step}: {c.message}")
            crashed_at[c.slot] = True

    prompt = None if interactive and prompts is None else (prompts.prompt_at(0) if prompts is not None else None)
    goals = goals_for(prompt)
    result.prompts.append({"step": 0, "prompt": label(prompt)})
    collector = RolloutCollector(agent, num_envs, next_episode, workers=workers, on_start=started, on_step=stepped,
                                 on_crash=crashed)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(TextColumn("playing"), BarColumn(), MofNCompleteColumn(), disable=not progress or interactive)
    try:
        collector.fill()
        for k, w in enumerate(writers):
            if w is not None:
                w.add(collector.frames[k], label(prompt), 0)
        if interactive:
            print("type a prompt and press Enter to change the goal; 'quit' stops", file=sys.stderr, flush=True)
        t_next = time.perf_counter()
        with bar:
            task = bar.add_task("steps", total=steps)
            for step in range(1, steps + 1):
                new_prompt = prompt
                if terminal is not None:
                    for line in terminal.poll():
                        if line is None:
                            continue
                        if line.lower() in ("quit", "exit", "q"):
                            raise StopIteration
                        if line:
                            new_prompt = line
                elif prompts is not None:
                    new_prompt = prompts.prompt_at(step - 1)
                if new_prompt != prompt:
                    prompt = new_prompt
                    goals = goals_for(prompt)
                    for k in range(num_envs):
                        collector.set_goal(k, goals[k])
                    result.prompts.append({"step": step - 1, "prompt": label(prompt)})
                collector.step()
                collector.fill()  # ended or crashed episodes restart now, so the window shows the new frame
                if window is not None:
                    window.show(collector.frames[0])
                result.steps = step
                bar.advance(task)
                if realtime:
                    t_next += 1.0 / fps
                    time.sleep(max(0.0, t_next - time.perf_counter()))
    except StopIteration:
        pass
    finally:
        for w in writers:
            if w is not None:
                w.close()
                result.videos.append(w.path)
        collector.close()
    if video is not None:
        sidecar = Path(video).with_suffix(".json")
        atomic_write_text(sidecar, json.dumps({
            "env": env_cfg, "seed": seed, "num_envs": num_envs, "steps": result.steps, "episodes": result.episodes,
            "cond_scale": agent.cond_scale, "prompts": result.prompts, "events": result.events,
            "crashes": result.crashes, "videos": [str(p) for p in result.videos],
        }, indent=1, ensure_ascii=False))
    return result
