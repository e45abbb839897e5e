"""``aimc rl``: PPO with a KL leash to the starting weights, read top to bottom in :func:`run_rl`.

One update u:

1. **plan** - ``collect.episodes`` episodes on training worlds ``collect.seed + u x episodes + i``,
   each a task of the suite drawn by ``collect.task_weights`` (a share ``collect.uncond_share``
   unconditioned), phrased by one of its instructions; the instruction becomes a goal as at
   evaluation (MineCLIP text -> prior, sampled with the world seed), or comes from a table
   (``agent.goal_table``);
2. **collect** - the policy plays them all to their end at guidance scale 0 (the plain
   conditional policy, whose log-probs are normalised), one batched step for all env slots,
   through :class:`aimc.agent.rollout.RolloutCollector`; rewards per ``collect.reward``
   (:mod:`aimc.rl.rewards`); the recurrent state is stored at every fragment start
   (:mod:`aimc.rl.rollouts`);
3. **reference** - the frozen starting weights' log-probs at every step (for KL(pi || pi_ref));
4. **advantages** - GAE on the policy's own value head;
5. **optimise** - :func:`aimc.rl.ppo.ppo_update`;
6. **log and keep** - a README row (success per task on this update's rollouts, KL, clip
   fraction, explained variance, entropy, steps/s), TensorBoard, the learning curve
   (``curve.svg``), ``checkpoints/best`` (highest mean success over the last
   ``checkpoint.best_window`` updates' rollouts), ``checkpoints/latest`` (resumable).

Files of a run::

    RUN/
      config.yaml       the resolved RLConfig (the same command again continues the run)
      README.md         the experiment log: one row per update
      updates.jsonl     the same rows as JSON
      episodes.jsonl    every finished episode (update, task, world, steps, success, return)
      crashes.jsonl     env crashes (the episode is replayed from its seed)
      curve.svg         success per task on the training rollouts against environment steps
      metrics.jsonl, tb/   scalars (rl/*), x axis = environment steps
      checkpoints/latest, checkpoints/best
      final.*, best.*   exported weights (.safetensors + .yaml, official .weights)

Resume: ``checkpoints/latest`` holds the weights (with the value normaliser's statistics),
the optimizer and the update count; every random stream of update u is seeded from (seed, u),
and an update plays whole episodes from their world seeds, so a run killed at any moment and
run again continues from the last finished update and, on the built-in world, ends with the
same weights as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aimc.agent.agent import acting_threads
from aimc.config import changed_settings, load_config, save_config, to_dict
from aimc.errors import UserError
from aimc.eval.metrics import rate_text
from aimc.rl.config import RLConfig
from aimc.rl.rollouts import PlannedEpisode, cnn_features, cnn_frozen, collect, gae, reference_log_probs
from aimc.train.rundir import open_session
from aimc.utils.io import atomic_write_text, read_state_json, write_state_json

CONFIG_FILE = "config.yaml"
CONTINUABLE = {"schedule.updates", "schedule.max_seconds", "name", "runtime.threads", "logging.progress"}
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


# ---------------------------------------------------------------------------- inputs


def check_inputs(cfg: RLConfig) -> Path:
    """The --init weights: an aimc .safetensors with its .yaml (clear errors naming the file)."""
    from aimc.checkpoints.safe_load import check_readable_file

    if not cfg.init:
        raise UserError("give the weights to start from: --init RUN/final.safetensors (as aimc train exports them)")
    try:
        init = check_readable_file(Path(cfg.init), "--init weights")
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    if init.suffix != ".safetensors":
        raise UserError(f"--init {init}: aimc rl starts from aimc .safetensors weights (+ their .yaml); convert "
                        f"official weights first: aimc checkpoint convert {init} {init.with_suffix('.safetensors')} "
                        "--model 2x.model")
    if not init.with_suffix(".yaml").is_file():
        raise UserError(f"--init {init}: its config {init.with_suffix('.yaml').name} is missing beside it (aimc saves both)")
    return init


def load_goal_table(path: str, dim: int) -> dict[str, np.ndarray]:
    """``agent.goal_table``: an .npz of named goal vectors (task id or instruction -> (D,))."""
    from aimc.checkpoints.safe_load import check_readable_file

    try:
        p = check_readable_file(Path(path), "agent.goal_table")
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    with np.load(p, allow_pickle=False) as z:
        table = {k: np.asarray(z[k], np.float32) for k in z.files}
    bad = [k for k, v in table.items() if v.shape != (dim,)]
    if bad:
        raise UserError(f"{p}: goal {bad[0]!r} has shape {table[bad[0]].shape}, the policy takes ({dim},) goals")
    return table


def make_agent(cfg: RLConfig, policy: torch.nn.Module, device: torch.device, init: Path) -> Any:
    """The acting agent: the trained policy itself at guidance scale 0, with MineCLIP and the prior
    (found beside --init) unless goals come from a table."""
    from aimc.agent.agent import Agent, find_companion

    clip = prior = None
    need_clip = not cfg.agent.goal_table or cfg.collect.reward == "mineclip"
    if need_clip:
        from aimc.checkpoints.mineclip import load_mineclip
        from aimc.checkpoints.prior import load_prior

        clip_path = cfg.agent.mineclip or find_companion(init, "mineclip")
        prior_path = cfg.agent.prior or find_companion(init, "prior")
        if not clip_path:
            raise UserError(f"no MineCLIP checkpoint found near {init}: instructions need one, pass --mineclip PATH "
                            "(or give goals with agent.goal_table)")
        clip = load_mineclip(clip_path)
        if not cfg.agent.goal_table:
            if not prior_path:
                raise UserError(f"no prior checkpoint found near {init}: instructions become goals through it, "
                                "pass --prior PATH")
            prior = load_prior(prior_path)
    return Agent(policy, clip, prior, cond_scale=0.0, device=device, seed=cfg.seed, name=str(init))


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- what an update plays


def plan_update(cfg: RLConfig, suite: Any, u: int, goal_table: dict[str, np.ndarray] | None = None,
                rank: int = 0, world: int = 1) -> list[PlannedEpisode]:
    """Update ``u``'s episodes (this rank's share): task, phrasing and world of each, seeded by (seed, u)."""
    tasks = list(suite.select(cfg.collect.tasks).tasks) if cfg.collect.tasks else list(suite.tasks)
    w = np.array([float(cfg.collect.task_weights.get(t.id, 1.0)) for t in tasks])
    if w.sum() <= 0:
        raise UserError("collect.task_weights gives every task weight 0")
    rng = np.random.default_rng([cfg.seed, u, 17])
    out = []
    longest = max(t.max_steps for t in tasks)
    for i, seed in enumerate(cfg.world_seeds(u)):
        uncond = rng.random() < cfg.collect.uncond_share
        task = tasks[int(rng.choice(len(tasks), p=w / w.sum()))]
        ins = task.instructions[int(rng.integers(len(task.instructions)))]
        if i % world != rank:
            continue
        if uncond:
            horizon = min(longest, cfg.collect.max_steps) if cfg.collect.max_steps else longest
            out.append(PlannedEpisode(i, None, None, seed, {**suite.env}, horizon))
            continue
        horizon = min(task.max_steps, cfg.collect.max_steps) if cfg.collect.max_steps else task.max_steps
        text = ins.text
        if goal_table is not None:
            text = task.id if task.id in goal_table else ins.text
            if text not in goal_table:
                raise UserError(f"agent.goal_table has no goal for task {task.id!r} (nor for {ins.text!r}); "
                                f"it has {', '.join(sorted(goal_table))}")
        out.append(PlannedEpisode(i, task, text, seed, {**suite.env, **task.env}, horizon))
    return out


def _table_agent(agent: Any, table: dict[str, np.ndarray], suite: Any = None) -> Any:
    """Goals looked up by name in the table (zero goal for None); with ``suite``, an instruction's
    text also finds its task's goal (as evaluation names episodes by their phrasing)."""
    names = {ins.text: t.id for t in suite.tasks for ins in t.instructions if t.id in table} if suite is not None else {}

    def goal(instruction: str | None, seed: int) -> np.ndarray:
        if instruction is None:
            return agent.zero_goal()
        return table[instruction if instruction in table else names[instruction]]

    agent.goal = goal
    agent._table = table
    return agent


# ---------------------------------------------------------------------------- the log


def success_by_task(episodes: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for e in episodes:
        if e["task"] is None:
            continue
        d = out.setdefault(e["task"], {"n": 0, "successes": 0})
        d["n"] += 1
        d["successes"] += int(e["success"])
    for d in out.values():
        d["rate"] = d["successes"] / d["n"]
    return out


def best_score(rows: list[dict], window: int) -> float:
    """Mean over tasks of each task's success over the last ``window`` updates' rollouts."""
    recent = rows[-window:]
    tasks: dict[str, list[int]] = {}
    for r in recent:
        for t, d in r["success"].items():
            c = tasks.setdefault(t, [0, 0])
            c[0] += d["successes"]
            c[1] += d["n"]
    return float(np.mean([s / n for s, n in tasks.values()])) if tasks else -math.inf


def readme_text(cfg: RLConfig, run: Path, rows: list[dict], meta: dict) -> str:
    tasks = sorted({t for r in rows for t in r["success"]})
    lines = [f"# RL fine-tuning run{': ' + cfg.name if cfg.name else ''}", "",
             f"- started: {meta.get('started', '?')}; git: `{meta.get('git', 'unknown')}`"]
    for s in meta.get("sessions", []):
        lines.append(f"- session {s['started']}: `{s['command']}`")
    lines += [f"- start weights (also the KL reference) `{cfg.init}`; suite `{cfg.collect.suite}`; reward "
              f"`{cfg.collect.reward}`; training worlds from {cfg.collect.seed:,}",
              "- rollouts and optimisation at guidance scale 0 (the plain conditional policy); evaluate at "
              + " and ".join(f"`--cond-scale {s:g}`" for s in cfg.agent.eval_cond_scales),
              f"- best: {meta.get('best', 'none yet')}", "",
              "Configuration: [config.yaml](config.yaml); rows: `updates.jsonl`; curves: `tensorboard --logdir tb`; "
              "learning curve: [curve.svg](curve.svg).", "",
              "## Updates (success on the update's own training rollouts)", "",
              "| update | env steps | " + " | ".join(tasks) + " | mean | KL ref | approx KL | clip frac | expl. var | "
              "entropy | epochs | steps/s |",
              "|" + "---|" * (len(tasks) + 10)]
    for r in rows:
        cells = [f"{r['success'][t]['successes']}/{r['success'][t]['n']}" if t in r["success"] else "-" for t in tasks]
        s = r["stats"]

        def f(k: str, fmt: str = "{:.3f}") -> str:
            v = s.get(k)
            return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)

        lines.append(f"| {r['update'] + 1} | {r['env_steps']:,} | " + " | ".join(cells)
                     + f" | {r['mean_success']:.2f} | {f('kl_ref', '{:.4f}')} | {f('approx_kl', '{:.4f}')} | "
                       f"{f('clipfrac')} | {f('explained_variance', '{:.2f}')} | {f('entropy', '{:.2f}')} | "
                       f"{f('epochs', '{:.0f}')} | {r['steps_per_s']:.0f} |")
    ev = meta.get("eval")
    if ev:
        scales = list(ev["scales"])
        ev_tasks = sorted({t for sc in ev["scales"].values() for t in sc})
        lines += ["", f"## Evaluation of `{Path(ev['weights']).name}` on validation worlds from {ev['seed']:,} "
                      f"({ev['episodes']} instructed episodes per task)", "",
                  "| task | " + " | ".join(f"cond scale {s}" for s in scales) + " |", "|" + "---|" * (len(scales) + 1)]
        for t in ev_tasks:
            cells = []
            for sc in scales:
                e = ev["scales"][sc].get(t)
                cells.append(rate_text(e))
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "## Next", "",
              "- more updates: the same `aimc rl` command with a higher `schedule.updates=N` and the same `--out`;",
              f"- evaluate on worlds never used here: {eval_commands(cfg, run)}."]
    return "\n".join(lines) + "\n"


def eval_commands(cfg: RLConfig, run: Path) -> str:
    """``aimc eval`` of the best weights at each of ``agent.eval_cond_scales``, with the MineCLIP and
    prior the run acted with (they are not beside the run's own weights)."""
    from aimc.agent.agent import find_companion

    files = ""
    for kind, given in (("mineclip", cfg.agent.mineclip), ("prior", cfg.agent.prior)):
        path = given or (find_companion(cfg.init, kind) if cfg.init else None)
        files += f" --{kind} {path}" if path else ""
    return " and ".join(f"`aimc eval --weights {run / 'best.safetensors'}{files} --suite {cfg.collect.suite} "
                        f"--cond-scale {s:g} --out {run / f'eval_cs{s:g}'}`" for s in cfg.agent.eval_cond_scales)


def curve_svg(rows: list[dict]) -> str:
    """Success per task on the training rollouts against environment steps, with a legend."""
    from aimc.eval.report import _esc, svg_curves

    tasks = sorted({t for r in rows for t in r["success"]})
    series = [(t, COLORS[i % len(COLORS)], [(r["env_steps"], r["success"][t]["rate"]) for r in rows if t in r["success"]])
              for i, t in enumerate(tasks)]
    series.append(("mean over tasks", "#000000", [(r["env_steps"], r["mean_success"]) for r in rows]))
    chart = svg_curves("success on the training rollouts", series, x_label="env steps")
    if not chart:
        return ""
    per_row = 3
    lines = (len(series) + per_row - 1) // per_row
    w, h = 420, 200 + 16 * lines + 6
    legend = []
    for i, (name, color, _) in enumerate(series):
        x, y = 10 + (i % per_row) * 138, 200 + 16 * (i // per_row) + 12
        legend.append(f'<rect x="{x}" y="{y - 8}" width="10" height="3" fill="{color}"/>'
                      f'<text x="{x + 14}" y="{y - 4}" font-size="10" fill="#333">{_esc(name)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
            f'<rect width="{w}" height="{h}" fill="#ffffff"/>' + chart + "".join(legend) + "</svg>")


def check_same_config(run: Path, cfg: RLConfig) -> None:
    path = run / CONFIG_FILE
    if not path.is_file():
        return
    diff = changed_settings(to_dict(load_config(RLConfig, path)), to_dict(cfg), CONTINUABLE,
                            ("task_weights", "reward_options"))
    if diff:
        k, was, now = diff[0]
        raise UserError(f"{run} holds an aimc rl run started with {k}={was!r}, now {now!r}"
                        + (f" (and {len(diff) - 1} more differences)" if len(diff) > 1 else "")
                        + "; continue it with the settings it started with (only schedule.updates, schedule.max_seconds, "
                          "name and runtime.threads may change), or choose a new --out")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ---------------------------------------------------------------------------- the run


def _logger(run: Path, cfg: RLConfig, enabled: bool, quiet: bool, frames: int, resume_step: int | None):
    """aimc train's MetricsLogger (metrics.jsonl, TensorBoard; x axis = environment steps) with one
    printed line per update."""
    from aimc.train.metrics import MetricsLogger

    class RLLogger(MetricsLogger):
        def _line(self, progress) -> str:
            s = self.last
            succ = " ".join(f"{k.split('/')[-1]} {v:.2f}" for k, v in sorted(s.items()) if k.startswith("rl/success/"))
            return (f"update {progress.step}/{cfg.schedule.updates} | {progress.frames:,} env steps | success {succ} "
                    f"| mean {s.get('rl/mean_success', float('nan')):.2f} | KL ref {s.get('rl/kl_ref', 0):.4f} "
                    f"| clip {s.get('rl/clipfrac', 0):.3f} | EV {s.get('rl/explained_variance', float('nan')):.2f} "
                    f"| {s.get('rl/steps_per_s', 0):.0f} steps/s")

        def _print(self, text: str) -> None:
            if not quiet:
                super()._print(text)

    return RLLogger(run, replace(cfg.logging, progress=False), enabled=enabled, total_frames=0, start_frames=frames,
                    resume_step=resume_step)



def learner_config(cfg: RLConfig, goal_dim: int):
    """The ``aimc train`` settings ``setup_learner`` reads (optimizer, freezing, LoRA, precision)."""
    from aimc.train.config import ModelConfig, OptimConfig, RuntimeConfig, TrainConfig

    return TrainConfig(model=ModelConfig(goal_dim=goal_dim, freeze=list(cfg.model.freeze), lora=cfg.model.lora),
                       optim=OptimConfig(lr=cfg.ppo.lr, weight_decay=cfg.ppo.weight_decay, max_grad_norm=cfg.ppo.max_grad_norm),
                       runtime=RuntimeConfig(precision="fp32"))


@contextlib.contextmanager
def adapters_off(policy: torch.nn.Module) -> Iterator[None]:
    """The policy without its LoRA updates (the reference with ``ppo.ref=adapters_off``)."""
    from aimc.train.lora import LoRALinear

    mods = [m for m in policy.modules() if isinstance(m, LoRALinear)]
    before = [m.scale for m in mods]
    for m in mods:
        m.scale = 0.0
    try:
        yield
    finally:
        for m, s in zip(mods, before):
            m.scale = s


def check_heads(policy: Any, suite: Any, init: Path) -> None:
    """The policy's action heads must be the env's (a Crafter policy cannot play Minecraft)."""
    from aimc.agent.envs import ENVS

    env_heads = getattr(ENVS.get(str(suite.env.get("name", ""))), "action_heads", None)
    mine = dict(policy.cfg.action_heads)
    if isinstance(env_heads, dict) and dict(env_heads) != mine:
        raise UserError(f"--init {init}: the policy's action heads {mine} are not those of the env "
                        f"{suite.env.get('name')!r} of suite {suite.name} ({dict(env_heads)}): use weights trained "
                        "for that env, or a suite of its env (collect.suite)")


def check_gpu_memory(cfg: RLConfig, policy: Any, device: torch.device) -> None:
    """Stop before any episode when the estimate (:mod:`aimc.rl.preflight`) exceeds the free GPU memory."""
    from aimc.models.vpt import STEVE1Policy
    from aimc.rl.preflight import estimate, memory_report

    with torch.device("meta"):  # the shapes without the memory
        shadow = STEVE1Policy(policy.cfg)
    free, _total = torch.cuda.mem_get_info(device)
    need = estimate(cfg, shadow)["total_gib"]
    if need > 0.95 * free / 2**30:
        with torch.device("meta"):
            shadow = STEVE1Policy(policy.cfg)
        raise UserError(f"aimc rl needs about {need:.1f} GiB of GPU memory but {free / 2**30:.1f} GiB are free on "
                        f"{device}:\n" + memory_report(cfg, card_gib=free / 2**30, policy=shadow,
                                                               card=f"the free memory of {device}"))


def evaluate(cfg: RLConfig, suite: Any, weights: Path, agent: Any, run: Path, progress: bool) -> dict:
    """``eval.episodes`` instructed episodes per task on validation worlds, with ``weights``, at every
    scale of ``agent.eval_cond_scales``; an ``aimc eval`` folder each (``RUN/eval/cs<scale>``)."""
    from dataclasses import replace as dc_replace

    from aimc.agent.agent import Agent
    from aimc.checkpoints.vpt import load_policy
    from aimc.eval.report import write_summary
    from aimc.eval.runner import run_suite
    from aimc.eval.suite import Suite

    tasks = tuple(suite.select(cfg.collect.tasks).tasks) if cfg.collect.tasks else tuple(suite.tasks)
    if cfg.eval.max_steps:
        tasks = tuple(dc_replace(t, max_steps=min(t.max_steps, cfg.eval.max_steps)) for t in tasks)
    vsuite = Suite(name=f"{suite.name}-rl-validation", tasks=tasks, env=dict(suite.env), episodes=cfg.eval.episodes,
                   max_steps=max(t.max_steps for t in tasks), seed=cfg.eval.seed, matrix=False, unconditioned=False,
                   description=f"aimc rl validation worlds of {suite.name}", source=suite.source)
    out: dict[str, Any] = {}
    for scale in cfg.agent.eval_cond_scales:
        ev = Agent(load_policy(weights), agent.mineclip, agent.prior, cond_scale=scale, device=agent.device,
                   seed=cfg.seed, name=str(weights))
        if getattr(agent, "_table", None) is not None:
            _table_agent(ev, agent._table, vsuite)
        folder = run / "eval" / f"cs{scale:g}"
        run_suite(vsuite, ev, folder, num_envs=cfg.eval.num_envs, workers=cfg.eval.workers, progress=progress)
        summary = write_summary(folder, vsuite)
        out[f"{scale:g}"] = {tid: e["instructed"] for tid, e in summary["tasks"].items()}
    return out


def bc_source(cfg: RLConfig, goal_dim: int, info: Any) -> Any:
    """The BC sequences of PPO + BC: ``aimc train``'s batch source over ``bc.stores`` with the
    ``bc.preset``'s data settings, ``bc.batch_size`` sequences of ``collect.fragment`` frames."""
    from aimc.train.config import TrainConfig
    from aimc.train.data import make_sources

    # sized for at least 1,000 updates, so that raising schedule.updates later draws the same batches
    steps = max(cfg.schedule.updates, 1000) * cfg.ppo.epochs * cfg.ppo.minibatches
    tcfg = load_config(TrainConfig, cfg.bc.preset, [
        f"data.stores={json.dumps(list(cfg.bc.stores))}", "data.weights=[]", f"data.T={cfg.collect.fragment}",
        f"optim.trunc_t={cfg.collect.fragment}", f"optim.batch_size={cfg.bc.batch_size}", "optim.grad_accum=1",
        f"model.goal_dim={goal_dim}", "validation.enabled=false", f"runtime.seed={cfg.seed}",
        f"schedule.n_frames={steps * cfg.bc.batch_size * cfg.collect.fragment * info.world_size}",
        "schedule.warmup_frames=0", *cfg.bc.overrides])
    source, _ = make_sources(tcfg, info.rank, info.world_size)
    return source


def run_rl(cfg: RLConfig, run_dir: str | Path, *, progress: bool = True, command: str = "",
           on_update: Callable[[int, dict], None] | None = None) -> dict:
    """Run (or continue) ``cfg.schedule.updates`` updates in ``run_dir``; returns a summary
    (``final``, ``best`` weights, ``rows``). ``on_update(u, row)`` is called after each update's
    checkpoint (tests use it to stop a run as a kill would)."""
    from aimc.eval.suite import load_suite
    from aimc.train import checkpoint as ckpt
    from aimc.train import distributed as D
    from aimc.train.policy import export, setup_learner
    from aimc.rl.ppo import ppo_update
    from aimc.rl.rewards import make_reward
    from aimc.checkpoints.vpt import load_policy
    from aimc.utils.device import PRECISION_DTYPES, autocast

    run = Path(run_dir)
    init = check_inputs(cfg)
    suite = load_suite(cfg.collect.suite)
    if cfg.collect.tasks:
        suite.select(cfg.collect.tasks)  # an unknown task id fails now
    unknown = sorted(set(cfg.collect.task_weights) - {t.id for t in suite.tasks})
    if unknown:
        raise UserError(f"collect.task_weights names {unknown}, not tasks of {suite.name} "
                        f"({', '.join(t.id for t in suite.tasks)})")
    info, device = D.setup(cfg.agent.device, cfg.runtime.dist_backend)
    ckpt_dir = run / "checkpoints"
    try:
        resume = (ckpt_dir / "latest" / "state.pt").is_file()
        if info.is_main:
            run.mkdir(parents=True, exist_ok=True)
            check_same_config(run, cfg)
            if resume:
                ckpt.clean_checkpoint_dir(ckpt_dir)
            save_config(cfg, run / CONFIG_FILE)
        D.barrier(info)

        # model, reference, learner, agent
        torch.manual_seed(cfg.seed)
        policy = load_policy(init)
        goal_dim = int(policy.cfg.mineclip_embed_dim)
        check_heads(policy, suite, init)
        if device.type == "cuda":
            check_gpu_memory(cfg, policy, device)
        table = load_goal_table(cfg.agent.goal_table, goal_dim) if cfg.agent.goal_table else None
        precision = "bf16" if device.type == "cuda" and cfg.runtime.precision in ("auto", "bf16") else "fp32"
        learner, changes = setup_learner(learner_config(cfg, goal_dim), policy, info, device)
        learner.precision = precision
        if "heads" not in cfg.model.freeze:  # LoRA freezes everything else; RL's value head must learn
            value = [p for p in policy.value_head.parameters() if not p.requires_grad and p.dtype.is_floating_point
                     and not any(p is q for q in policy.value_head.normalizer.parameters())]
            for p in value:
                p.requires_grad_(True)
            if value:
                learner.optimizer.add_param_group({"params": value, "weight_decay": 0.0})
        if cfg.ppo.ref == "adapters_off":
            ref = policy  # its reference pass runs with the adapters switched off
        else:
            ref = load_policy(init).to(device).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
        agent = make_agent(cfg, policy, device, init)
        if table is not None:
            _table_agent(agent, table)
        if table is None:
            from aimc.eval.suite import choose_phrasings

            suite, notes = choose_phrasings(suite, cfg.collect.lang, getattr(agent.mineclip, "langs", None))
            for text in notes:
                print(text, file=sys.stderr) if info.is_main and progress else None
        bc = bc_source(cfg, goal_dim, info) if cfg.bc.coef > 0 else None
        reward_factory = make_reward(cfg.collect.reward, cfg.collect.reward_options, mineclip=agent.mineclip)

        progress_ = ckpt.Progress()
        if resume:
            saved = ckpt.load_checkpoint(ckpt_dir / "latest")
            policy.load_state_dict(saved["model"])
            learner.optimizer.load_state_dict(saved["optimizer"])
            progress_ = saved["progress"]
        done = progress_.step
        rows = [r for r in _read_jsonl(run / "updates.jsonl") if r["update"] < done]
        episodes_log = [e for e in _read_jsonl(run / "episodes.jsonl") if e["update"] < done]
        if info.is_main and (run / "crashes.jsonl").is_file():  # an update replayed after a kill records its crashes again
            _write_jsonl(run / "crashes.jsonl", [c for c in _read_jsonl(run / "crashes.jsonl") if c["update"] < done])
        meta_path = run / "rl.json"
        meta = read_state_json(meta_path, {})
        open_session(meta, run, command or "run_rl()", from_update=done)
        best = -math.inf
        for i in range(len(rows)):
            best = max(best, best_score(rows[: i + 1], cfg.checkpoint.best_window))
        log = _logger(run, cfg, info.is_main, not progress, progress_.frames, done if resume else None)
        log.note(f"aimc rl: {sum(p.numel() for p in learner.trainable):,} trainable parameters"
                 + (f", {len(changes['frozen'])} frozen tensors" if changes["frozen"] else "")
                 + (f", LoRA on {len(changes['lora'])} layers" if changes["lora"] else "")
                 + f"; {info.world_size} process(es) on {device}, {precision}; updates {done + 1}..{cfg.schedule.updates}")
        amp = (lambda: autocast(device, PRECISION_DTYPES[precision]))
        # a frozen CNN (model.freeze [cnn]) runs only while acting: every epoch and the reference reuse the
        # features acting computed (one process: under torchrun the forward goes through DDP, which needs
        # the whole model)
        cached_features = cnn_frozen(policy) and info.world_size == 1
        t_session = time.perf_counter()
        stop_note = ""

        for u in range(done, cfg.schedule.updates):
            if cfg.schedule.max_seconds and D.any_across(time.perf_counter() - t_session >= cfg.schedule.max_seconds,
                                                         info, device):
                stop_note = f"schedule.max_seconds={cfg.schedule.max_seconds:g} reached after update {u}"
                log.note(stop_note)
                break
            t0 = time.perf_counter()
            # 1-2. plan and play (guidance 0), every random stream seeded by (seed, u)
            planned = plan_update(cfg, suite, u, table, info.rank, info.world_size)
            agent.seed = int(np.random.SeedSequence([cfg.seed, u, info.rank]).generate_state(1)[0])
            agent.generator.manual_seed(agent.seed)  # and every episode's own stream (Agent.begin_episode)
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, u, 99]).generate_state(1)[0]))
            policy.eval()
            with acting_threads(agent):
                ro = collect(agent, planned, num_envs=cfg.collect.num_envs, fragment=cfg.collect.fragment,
                             reward_factory=reward_factory, stop_on_success=cfg.collect.stop_on_success,
                             workers=cfg.collect.workers, max_retries=cfg.collect.restart_crashed,
                             keep_features=cached_features)
            t_collect = time.perf_counter() - t0
            # 3-4. reference log-probs, advantages
            with threads(cfg.runtime.threads):
                t1 = time.perf_counter()
                if cached_features and ro.features is None:
                    ro.features = cnn_features(policy, ro, device, amp=amp)
                t2 = time.perf_counter()
                with adapters_off(policy) if cfg.ppo.ref == "adapters_off" else contextlib.nullcontext():
                    ro.ref_logits = reference_log_probs(ref, ro, device, amp=amp)
                t3 = time.perf_counter()
                ro.advantages, ro.returns = gae(ro.reward, ro.value, ro.terminal, ro.valid, cfg.ppo.gamma,
                                                cfg.ppo.gae_lambda)
                # 5. optimise
                policy.train()
                kl_coef = cfg.ppo.kl_coef * cfg.ppo.kl_decay ** u
                bc_next = None
                if bc is not None:  # batch k of the BC source: stateless by index, so a resumed run draws the same
                    counter = iter(range(u * cfg.ppo.epochs * cfg.ppo.minibatches, (u + 1) * cfg.ppo.epochs * cfg.ppo.minibatches))
                    bc_next = lambda: bc.batch(next(counter))  # noqa: E731
                stats = ppo_update(learner, ro, cfg.ppo, kl_coef=kl_coef, rng=np.random.default_rng([cfg.seed, u, 7]),
                                   info=info, policy_loss=u >= cfg.ppo.value_warmup, bc_coef=cfg.bc.coef,
                                   bc_batch=bc_next)
                policy.eval()
            stats.update(features_s=t2 - t1, reference_s=t3 - t2, optimise_s=time.perf_counter() - t3)
            dt = time.perf_counter() - t0
            steps = round(float(D.mean_across(torch.tensor(float(ro.steps), device=device), info)) * info.world_size)
            progress_.step = u + 1
            progress_.frames += steps
            progress_.wall_seconds += dt

            # 6. log, keep the best, checkpoint
            if info.enabled:  # every rank's episodes and crashes, for the log (rank 0 writes it)
                import torch.distributed as dist

                gathered: list[Any] = [None] * info.world_size
                dist.all_gather_object(gathered, (ro.episodes, ro.crashes))
                ro.episodes = sorted((e for g in gathered for e in g[0]), key=lambda e: e["episode"])
                ro.crashes = [c for g in gathered for c in g[1]]
            succ = success_by_task(ro.episodes)
            row = {"update": u, "env_steps": progress_.frames, "success": succ,
                   "mean_success": float(np.mean([d["rate"] for d in succ.values()])) if succ else float("nan"),
                   "episodes": len(ro.episodes), "mean_return": float(np.mean([e["return"] for e in ro.episodes]))
                   if ro.episodes else 0.0, "crashes": len(ro.crashes), "kl_coef": kl_coef,
                   "stats": stats, "collect_s": t_collect, "update_s": dt - t_collect, "steps_per_s": steps / dt}
            rows.append(row)
            episodes_log += [{"update": u, **e} for e in ro.episodes]
            if info.is_main:
                scalars = {f"rl/{k}": float(v) for k, v in stats.items() if isinstance(v, float) and math.isfinite(v)}
                scalars.update({"rl/mean_success": row["mean_success"], "rl/mean_return": row["mean_return"],
                                "rl/kl_coef": kl_coef, "rl/steps_per_s": row["steps_per_s"],
                                "rl/collect_s": t_collect, "rl/update_s": dt - t_collect, "rl/crashes": len(ro.crashes)})
                scalars.update({f"rl/success/{t}": d["rate"] for t, d in succ.items()})
                log.scalars(progress_, {k: v for k, v in scalars.items() if math.isfinite(v)})
                score = best_score(rows, cfg.checkpoint.best_window)
                if score > best:
                    best = score
                    ckpt.save_weights_snapshot(ckpt_dir / "best", policy.state_dict())
                    meta["best"] = (f"after update {u + 1} (mean success {score:.3f} over the last "
                                    f"{min(len(rows), cfg.checkpoint.best_window)} updates' rollouts)")
                if ro.crashes:
                    with open(run / "crashes.jsonl", "a", encoding="utf-8") as fh:
                        fh.writelines(json.dumps({"update": u, **c}) + "\n" for c in ro.crashes)
                if (u + 1) % cfg.checkpoint.every_updates == 0 or u + 1 == cfg.schedule.updates:
                    ckpt.save_checkpoint(ckpt_dir / "latest", model=policy, optimizer=learner.optimizer, scaler=None,
                                         progress=progress_)
                    _write_jsonl(run / "updates.jsonl", rows)
                    _write_jsonl(run / "episodes.jsonl", episodes_log)
                    write_state_json(meta_path, meta)
                    atomic_write_text(run / "README.md", readme_text(cfg, run, rows, meta))
                    atomic_write_text(run / "curve.svg", curve_svg(rows))
            D.barrier(info)
            if on_update is not None:
                on_update(u, row)

        # the end: latest checkpoint, exported weights, README
        final = best_w = None
        if info.is_main:
            ckpt.save_checkpoint(ckpt_dir / "latest", model=policy, optimizer=learner.optimizer, scaler=None,
                                 progress=progress_)
            _write_jsonl(run / "updates.jsonl", rows)
            _write_jsonl(run / "episodes.jsonl", episodes_log)
            if stop_note:
                meta["stopped"] = stop_note
            write_state_json(meta_path, meta)
            final, best_w = export(policy, run, list(cfg.checkpoint.export))
            if cfg.eval.episodes and rows:
                meta["eval"] = {"weights": str(best_w or final), "seed": cfg.eval.seed, "episodes": cfg.eval.episodes,
                                "scales": evaluate(cfg, suite, Path(best_w or final), agent, run, progress)}
                write_state_json(meta_path, meta)
            atomic_write_text(run / "README.md", readme_text(cfg, run, rows, meta))
            if rows:
                atomic_write_text(run / "curve.svg", curve_svg(rows))
            log.finish(progress_)
        D.barrier(info)
        return {"final": final, "best": best_w, "policy": policy, "rows": rows, "updates": progress_.step, "env_steps": progress_.frames,
                "seconds": progress_.wall_seconds}
    finally:
        D.teardown(info)
