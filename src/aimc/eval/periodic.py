"""Evaluation during training: ``aimc train``'s ``eval`` section, run by the training loop.

Every ``eval.every_frames`` frames (and once at the end), :class:`PeriodicEvaluator` plays the
evaluation suite with the policy as it is at that moment, exactly as ``aimc eval`` would (goals
from the instructions through the text embedder and the prior, classifier-free guidance, the
suite's world seeds), and writes

* ``RUN_DIR/evals/frames_<N>/``: an ordinary ``aimc eval`` folder (results, ``summary.md``,
  ``summary.json``; ``aimc compare`` reads it) with one sample video in ``videos/``: the first
  instructed episode of ``eval.video_task``;
* scalars for TensorBoard and ``metrics.jsonl``, at N frames: ``eval/<task>/instructed`` and
  ``eval/<task>/unconditioned`` with their 95 % Wilson interval as ``..._low`` / ``..._high``,
  and the means over the tasks ``eval/mean/instructed``, ``eval/mean/unconditioned``,
  ``eval/mean/lift``; the loop adds ``time/eval_s``;
* the sample video's frames in TensorBoard's Images tab: ``eval_video/frames_<N>`` (slider =
  frame of the episode) and ``eval_video/strip`` (8 frames side by side; slider = training frames);
* one row per evaluation in the run's README (``## Evaluations during training``).

The training loop (:func:`aimc.train.policy.train_policy`, ``periodic=[...]``) runs it on rank 0
with the model in eval mode, and keeps its time out of the training time.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aimc.config import ConfigError
from aimc.train.config import TrainConfig

README_SECTION = "## Evaluations during training"
TB_FRAMES = 48  # frames of the sample video shown in TensorBoard (evenly spaced)
STRIP = 8  # frames in the filmstrip image


class PeriodicEvaluator:
    """Plays ``cfg.eval``'s suite every ``cfg.eval.every_frames`` frames (a
    :class:`aimc.train.policy.Periodic`). Everything that can be checked without the policy
    (suite, tasks, the text embedder and prior files) is checked here, the rest in :meth:`start`,
    so a wrong setting fails before any training step."""

    name = "eval"

    def __init__(self, cfg: TrainConfig, run_dir: str | Path) -> None:
        from aimc.agent.agent import find_companion
        from aimc.checkpoints.mineclip import load_mineclip
        from aimc.checkpoints.prior import load_prior
        from aimc.checkpoints.safe_load import check_readable_file
        from aimc.eval.runner import check_measures, plan_jobs
        from aimc.eval.suite import load_suite

        e = cfg.eval
        self.cfg, self.train_cfg, self.run_dir = e, cfg, Path(run_dir)
        self.every_frames = e.every_frames
        suite = load_suite(e.suite)
        if e.tasks:
            suite = suite.select(list(e.tasks))
        if e.max_steps:
            suite = replace(suite, max_steps=min(suite.max_steps, e.max_steps),
                            tasks=tuple(replace(t, max_steps=min(t.max_steps, e.max_steps)) for t in suite.tasks))
        check_measures(suite)
        self.suite = suite
        self.video_task = suite.task(e.video_task).id if e.video_task else suite.tasks[0].id
        self.n_jobs = len(plan_jobs(suite, e.episodes or None))

        # the goal models: named in the config, else found next to the run as aimc eval finds them
        anchor = self.run_dir.resolve() / "final.safetensors"
        paths: dict[str, Path | None] = {}
        for kind, given, what in (("mineclip", e.mineclip, "text embedder (MineCLIP) checkpoint"),
                                  ("prior", e.prior, "prior checkpoint")):
            if given:
                paths[kind] = check_readable_file(given, f"{what} (eval.{kind})")
            else:
                paths[kind] = find_companion(anchor, kind)
        if paths["mineclip"] is None:
            raise ConfigError(
                f"eval.every_frames={e.every_frames} needs a text embedder to turn the suite's instructions into "
                f"goals, and none was found next to {self.run_dir} (mineclip.safetensors, mineclip/..., attn.pth "
                "there or in the three folders above): set eval.mineclip=PATH (and eval.prior=PATH)"
            )
        self.mineclip_path, self.prior_path = paths["mineclip"], paths["prior"]
        self.mineclip = self.prior = None
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only the first process evaluates
            self.mineclip = load_mineclip(self.mineclip_path)
            self.prior = load_prior(self.prior_path) if self.prior_path is not None else None
        self._tb: Any = None
        self._note = print

    # ------------------------------------------------------------------ the Periodic protocol

    def start(self, policy: Any, note) -> None:
        """Check that the policy can play the suite's environment with these goals."""
        from aimc.agent.envs import action_heads

        self._note = note
        pcfg = getattr(policy, "cfg", None)
        if pcfg is None or not hasattr(policy, "act"):
            raise ConfigError(f"eval.every_frames: the policy being trained ({type(policy).__name__}) cannot act "
                              "in an environment; evaluate only STEVE-1 policies (aimc.models.vpt.STEVE1Policy)")
        heads = {k: int(v) for k, v in dict(pcfg.action_heads).items()}
        env_heads = action_heads(self.suite.env)
        if heads != env_heads:
            raise ConfigError(
                f"eval.suite {self.cfg.suite!r} plays env {self.suite.env.get('name')!r}, whose actions are {env_heads}, "
                f"but the policy has the action heads {heads}: evaluate on a suite of the world the data comes from "
                "(or set model.policy.action_heads to match)"
            )
        goal_dim = self.prior.cfg.input_dim if self.prior is not None else self.mineclip.cfg.embed_dim
        if int(pcfg.mineclip_embed_dim) != goal_dim:
            source = f"the prior {self.prior_path}" if self.prior is not None else f"the text embedder {self.mineclip_path}"
            raise ConfigError(
                f"eval: {source} gives {goal_dim}-d goals but the policy takes {pcfg.mineclip_embed_dim}-d goals: "
                "set eval.mineclip / eval.prior to the models the training data was embedded with"
            )
        if self.prior is not None and self.prior.cfg.input_dim != self.mineclip.cfg.embed_dim:
            raise ConfigError(f"eval: the prior {self.prior_path} takes {self.prior.cfg.input_dim}-d text embeddings but "
                              f"the text embedder {self.mineclip_path} makes {self.mineclip.cfg.embed_dim}-d ones")
        e = self.cfg
        goals = (f"text embedder `{self.mineclip_path}`, "
                 + (f"prior `{self.prior_path}`" if self.prior_path else "no prior (none found: text embeddings are the goals)"))
        note(f"evaluation every {self.every_frames:,} frames: suite {self.suite.name}, {len(self.suite.tasks)} tasks, "
             f"{self.n_jobs} episodes each time; goals from {goals}")
        if (self.run_dir / "README.md").is_file():
            from aimc.train.rundir import append_readme

            append_readme(self.run_dir, "\n".join([
                "", README_SECTION, "",
                f"- every {self.every_frames:,} frames and at the end: suite `{e.suite}` "
                f"({', '.join(t.id for t in self.suite.tasks)}), {self.n_jobs} episodes "
                f"({e.episodes or self.suite.episodes} per task and condition), cond_scale {e.cond_scale:g}"
                + (f", horizons capped at {e.max_steps} steps" if e.max_steps else ""),
                f"- goals: {goals}",
                "- each evaluation is an `aimc eval` folder `evals/frames_<N>/`; its time is not part of the training time",
                "", readme_table_head([t.id for t in self.suite.tasks])]))

    def __call__(self, policy: Any, step: int, frames: int) -> dict[str, float]:
        import time

        from aimc.agent.agent import Agent
        from aimc.eval.report import write_summary
        from aimc.eval.runner import read_results, run_suite

        t0 = time.perf_counter()
        out = self.run_dir / "evals" / f"frames_{frames:012d}"
        if out.exists():  # left by a session that was interrupted: evaluate again from the start
            shutil.rmtree(out)
        device = next(policy.parameters()).device
        agent = Agent(policy, self.mineclip, self.prior, cond_scale=self.cfg.cond_scale, stochastic=True, device=device,
                      amp_dtype=self._amp_dtype(device), seed=self.train_cfg.runtime.seed, name=str(out.resolve()))
        video_task, film = self.video_task, self.cfg.video
        try:
            run_suite(self.suite, agent, out, episodes=self.cfg.episodes or None,
                      num_envs=min(self.cfg.num_envs, self.n_jobs), workers=self.cfg.workers, video_scale=3,
                      progress=False, video_jobs=lambda job: film and job.condition == video_task and job.episode == 0)
        finally:
            self.mineclip.cpu()  # the goal models wait on the CPU between evaluations
            if self.prior is not None:
                self.prior.cpu()
            del agent
        summary = write_summary(out, self.suite)
        video = next((out / r["video"] for r in read_results(out / "results.jsonl") if r.get("video")), None)
        scalars = success_scalars(summary)
        self._to_tensorboard(video, frames, scalars)
        seconds = time.perf_counter() - t0
        self._to_readme(summary, out, video, step, frames, seconds)
        self._note(f"evaluation at {frames:,} frames ({seconds:.1f} s, not counted as training time): "
                   f"instructed {scalars.get('eval/mean/instructed', float('nan')):.2f}"
                   + (f", unconditioned {scalars['eval/mean/unconditioned']:.2f}" if "eval/mean/unconditioned" in scalars else "")
                   + f" (mean over {len(summary['tasks'])} tasks); {out / 'summary.md'}")
        return scalars

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ------------------------------------------------------------------ pieces

    def _amp_dtype(self, device):
        import torch

        precision = self.train_cfg.runtime.precision
        if device.type != "cuda" or precision == "fp32":
            return None
        if precision == "fp16":
            return torch.float16
        return torch.bfloat16 if precision == "bf16" or torch.cuda.is_bf16_supported() else torch.float16

    def _to_tensorboard(self, video: Path | None, frames: int, scalars: dict[str, float]) -> None:
        if not self.train_cfg.logging.tensorboard:
            return
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), filename_suffix=".eval")
            # the Custom Scalars tab: each task's success with its interval as a shaded margin
            layout = {}
            for tid in self.suite.tasks:
                for cond in ("instructed", "unconditioned"):
                    key = f"eval/{tid.id}/{cond}"
                    if key in scalars:
                        layout[f"{tid.id} ({cond})"] = ["Margin", [key, f"{key}_low", f"{key}_high"]]
            self._tb.add_custom_scalars({"evaluation (95 % intervals)": layout})
        if video is not None and video.is_file():
            from aimc.agent.video import read_video

            clip = read_video(video)
            picks = np.unique(np.linspace(0, len(clip) - 1, min(TB_FRAMES, len(clip))).round().astype(int))
            for i, k in enumerate(picks):
                self._tb.add_image(f"eval_video/frames_{frames:012d}", clip[k], global_step=i, dataformats="HWC")
            strip = clip[np.unique(np.linspace(0, len(clip) - 1, min(STRIP, len(clip))).round().astype(int))]
            self._tb.add_image("eval_video/strip", np.concatenate(list(strip), axis=1), global_step=frames,
                               dataformats="HWC")
        self._tb.flush()

    def _to_readme(self, summary: dict, out: Path, video: Path | None, step: int, frames: int, seconds: float) -> None:
        from aimc.train.rundir import append_readme

        readme = self.run_dir / "README.md"
        if not readme.is_file():
            return
        row = readme_row(summary, out.relative_to(self.run_dir), video.relative_to(self.run_dir) if video else None,
                         step, frames, seconds)
        last_line = readme.read_text(encoding="utf-8").rstrip().rsplit("\n", 1)[-1]
        if not last_line.startswith("|"):  # something was written below the table: start it again
            row = "\n" + readme_table_head(list(summary["tasks"])) + row
        append_readme(self.run_dir, row + "\n")


def _cell(entry: dict | None) -> str:
    if not entry or not entry.get("n"):
        return "-"
    return f"{entry['rate']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def success_scalars(summary: dict) -> dict[str, float]:
    """TensorBoard scalars of one evaluation's summary (``aimc.eval.metrics.summarize``)."""
    out: dict[str, float] = {}
    means: dict[str, list[float]] = {"instructed": [], "unconditioned": [], "lift": []}
    for tid, e in summary["tasks"].items():
        for cond in ("instructed", "unconditioned"):
            r = e.get(cond)
            if r and r.get("n"):
                out[f"eval/{tid}/{cond}"] = float(r["rate"])
                out[f"eval/{tid}/{cond}_low"] = float(r["low"])
                out[f"eval/{tid}/{cond}_high"] = float(r["high"])
                means[cond].append(float(r["rate"]))
        lift = e.get("lift")
        if lift and lift.get("diff") is not None and np.isfinite(lift["diff"]):
            means["lift"].append(float(lift["diff"]))
    for k, v in means.items():
        m = _mean(v)
        if m is not None:
            out[f"eval/mean/{k}"] = m
    return out


def readme_table_head(tasks: list[str]) -> str:
    """The header of the README's table of evaluations (one column per task)."""
    return ("Success rate with its 95 % Wilson interval per task, instructed / unconditioned; the means are "
            "over the tasks.\n\n"
            "| frames | step | mean instructed | mean unconditioned | " + " | ".join(tasks)
            + " | eval time | results |\n" + "| ---: | ---: | ---: | ---: |" + " --- |" * len(tasks) + " ---: | --- |\n")


def readme_row(summary: dict, out: Path, video: Path | None, step: int, frames: int, seconds: float) -> str:
    s = success_scalars(summary)
    mean = {k: ("-" if f"eval/mean/{k}" not in s else f"{s[f'eval/mean/{k}']:.2f}") for k in ("instructed", "unconditioned")}
    cells = []
    for e in summary["tasks"].values():
        cell = _cell(e.get("instructed"))
        if e.get("unconditioned"):
            cell += " / " + _cell(e["unconditioned"])
        cells.append(cell)
    links = f"[summary]({out.as_posix()}/summary.md)" + (f", [video]({video.as_posix()})" if video else "")
    return (f"| {frames:,} | {step:,} | {mean['instructed']} | {mean['unconditioned']} | " + " | ".join(cells)
            + f" | {seconds:.1f} s | {links} |")
