"""``aimc continual PLAN.yaml --out RUN``: stages of fine-tuning in turn, with the forgetting matrix.

Stage 0 is the plan's ``init``: it is evaluated first. Stage j (1-based):

1. **record** (built-in world, ``record:``) - the scripted demonstrator pinned to the stage's
   skill plays new training worlds (``aimc.envs.record.generate_crafter_store``); the episodes are
   embedded with the plan's MineCLIP and 20 % of them set aside as the val split, as ``aimc
   quickstart --finetune`` does;
2. **train** - ``train_policy`` continues from stage j-1's weights on batches split exactly
   (``SplitBatches``): ``1 - replay`` of every batch's sequences from the stage's own data, the
   ``replay`` share from the earlier data in equal parts (``base_stores``, then each earlier stage's
   data); with ``l2sp`` > 0 every step is pulled toward the plan's ``init`` weights (``optim.l2sp``);
3. **eval** - ``run_suite`` plays every stage's tasks (not only those seen so far), instructed and
   unconditioned, on the suite's evaluation worlds; each evaluation is an ``aimc eval`` folder.

The forgetting matrix (success of task i after stage j, Wilson intervals; the forgetting of each
task = best earlier - final, with the difference's interval) is rewritten after every evaluation
as ``forgetting.md`` / ``forgetting.json`` and in the README; ``aimc compare RUN_A RUN_B`` draws
the matrices of several runs side by side as heatmaps.

Files of a run::

    RUN/
      plan.yaml            the resolved plan (the same command again continues the run)
      continual.json       the state, written atomically after every phase
      README.md            one row per stage, the matrix, the commands
      forgetting.md, forgetting.json
      stages/NN-name/store/   the stage's recorded episodes (record: only)
      stages/NN-name/train/   its aimc train run (resumable checkpoints, final.*)
      eval/NN-name/           the evaluation after stage NN (eval/00-init: the init weights)
      final.*                 the last stage's weights

A kill at any moment loses at most the phase in progress: recording skips episodes already in
the store, training resumes from its latest checkpoint, evaluation from its ``results.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from aimc.config import changed_settings, load_config, save_config, to_dict
from aimc.eval.metrics import rate_text
from aimc.errors import UserError
from aimc.online.plan import RESERVED_WORLDS_START, TRAIN_WORLDS_END, ContinualConfig
from aimc.utils.io import atomic_write_text, read_state_json, write_state_json

STATE_FILE = "continual.json"
PLAN_FILE = "plan.yaml"
MATRIX_FILE = "forgetting.json"
CONTINUABLE = {"name", "threads", "evaluate.episodes"}  # episodes may only rise: more evaluation, same runs


def stage_dir(run: Path, plan: ContinualConfig, j: int) -> Path:
    return Path(run) / "stages" / f"{j:02d}-{plan.stages[j - 1].name}"


def eval_dir(run: Path, plan: ContinualConfig, j: int) -> Path:
    return Path(run) / "eval" / (f"{j:02d}-{plan.stages[j - 1].name}" if j else "00-init")


def stage_label(plan: ContinualConfig, j: int) -> str:
    return f"{j} {plan.stages[j - 1].name}" if j else "0 init"


# ---------------------------------------------------------------------------- data of a stage


def stage_stores(plan: ContinualConfig, run: Path, j: int) -> tuple[list[str], list[float]]:
    """Stage ``j``'s own stores and their mixture weights (empty = by size)."""
    s = plan.stages[j - 1]
    if s.record is not None:
        return [str(stage_dir(run, plan, j) / "store")], []
    return [str(x) for x in s.stores], list(s.weights)


def stage_parts(plan: ContinualConfig, run: Path, j: int) -> list[dict]:
    """Where stage ``j``'s batches come from: its own data (share ``1 - replay``), then the
    earlier data in equal parts of ``replay`` (``base_stores``, stage 1, ..., stage j-1). Without earlier
    data (stage 1 and no ``base_stores``) the stage's own data fills every batch."""
    stores, weights = stage_stores(plan, run, j)
    replay = plan.stage_replay(j)
    earlier = ([{"name": "base", "stores": [str(b) for b in plan.base_stores], "weights": []}] if plan.base_stores else [])
    for k in range(1, j):
        ks, kw = stage_stores(plan, run, k)
        earlier.append({"name": f"stage {k} {plan.stages[k - 1].name}", "stores": ks, "weights": kw})
    own = {"name": f"stage {j} {plan.stages[j - 1].name}", "stores": stores, "weights": weights}
    if not replay or not earlier:
        return [{**own, "share": 1.0}]
    return [{**own, "share": 1.0 - replay}] + [{**e, "share": replay / len(earlier)} for e in earlier]


def stage_train_config(plan: ContinualConfig, run: Path, j: int, init: str, goal_dim: int):
    """Stage ``j``'s TrainConfig: the plan's preset and overrides, the stage's overrides, then what
    aimc continual sets (``plan.STAGE_KEYS``). Its saved config.yaml lists the parts as
    data.stores / data.weights (their frame shares); the stage splits each batch exactly."""
    from aimc.train.config import load_continued

    s = plan.stages[j - 1]
    base = load_continued(plan.preset, init, [*plan.overrides, *s.overrides])
    stores, weights = [], []
    for part in stage_parts(plan, run, j):
        w = part["weights"] or [1.0] * len(part["stores"])
        stores += part["stores"]
        weights += [part["share"] * x / sum(w) for x in w]
    frames = plan.stage_frames(j)
    export = [".safetensors", *[f for f in base.checkpoint.export if f != ".safetensors"]]
    l2sp = plan.stage_l2sp(j)
    return replace(
        base,
        checkpoint=replace(base.checkpoint, export=export),
        name=f"{plan.name or 'continual'} stage {j} {s.name} ({plan.preset})",
        data=replace(base.data, stores=stores, weights=weights),
        model=replace(base.model, init=str(init), model_file="", goal_dim=goal_dim, policy={}),
        # the anchors are the weights the plan started from, not the previous stage's
        optim=replace(base.optim, l2sp=l2sp, l2sp_anchor=str(plan.init) if l2sp else "",
                      uncond_kl_anchor=base.optim.uncond_kl_anchor or (str(plan.init) if base.optim.uncond_kl else "")),
        schedule=replace(base.schedule, n_frames=frames, warmup_frames=int(frames * plan.warmup_fraction)),
        runtime=replace(base.runtime, seed=plan.seed + j),
    )


def stage_sources(plan: ContinualConfig, run: Path, j: int, tcfg):
    """The stage's batches (``SplitBatches`` of its parts, ``split_counts`` sequences each) and
    the validation batches of its own data (None when ``validation.enabled`` is false)."""
    from aimc.train.data import SplitBatches, make_sources, split_counts

    parts = stage_parts(plan, run, j)
    counts = split_counts(tcfg.optim.batch_size, [p["share"] for p in parts],
                          [f"{p['name']} (replay)" if i else p["name"] for i, p in enumerate(parts)])
    joined, val = [], None
    for i, (p, n) in enumerate(zip(parts, counts)):
        own = i == 0
        cfg = replace(tcfg, data=replace(tcfg.data, stores=p["stores"], weights=p["weights"]),
                      validation=replace(tcfg.validation, enabled=own and tcfg.validation.enabled),
                      optim=replace(tcfg.optim, batch_size=n), runtime=replace(tcfg.runtime, seed=tcfg.runtime.seed + 1_000_003 * i))
        try:
            src, v = make_sources(cfg)
        except UserError as e:
            raise UserError(f"stage {j} ({plan.stages[j - 1].name}), {p['name']}: {e}") from None
        joined.append((p["name"], src, n))
        if own:
            val = v
    return SplitBatches(joined), val


def record_stage(plan: ContinualConfig, run: Path, j: int, models, suite, progress: bool) -> dict:
    """Record, embed and split the stage's episodes (``record:``); resumable."""
    from aimc.data.embed import embed_store
    from aimc.data.split import make_split
    from aimc.data.store import EpisodeStore
    from aimc.envs.record import generate_crafter_store

    rec = plan.stages[j - 1].record
    root = stage_dir(run, plan, j) / "store"
    t0 = time.time()
    seed = plan.record_seed(j)
    g = generate_crafter_store(root, rec.episodes, rec.max_steps, rec.workers, seed, int(suite.env.get("size", 64)), None,
                               rec.task)
    store = EpisodeStore(root)
    embed_store(store, models.mineclip, batch_size=256, device="cpu", info={"model": models.mineclip_path},
                progress=progress)
    make_split(store, val_fraction=0.2 if len(store.episode_ids()) > 2 else 0.0, seed=plan.seed,
               command=f"aimc continual (stage {j})")
    return {"task": rec.task, "episodes": len(store.episode_ids()), "frames": store.total_frames(),
            "worlds": [seed, seed + rec.episodes - 1], "seconds": time.time() - t0, "recorded": g["written"]}


def train_stage(plan: ContinualConfig, run: Path, j: int, init: str, goal_dim: int) -> dict:
    """Continue from ``init`` on the stage's mixture; resumes its own training run after a kill."""
    from aimc.train.policy import train_policy

    tcfg = stage_train_config(plan, run, j, init, goal_dim)
    out = stage_dir(run, plan, j) / "train"
    resume = (out / "checkpoints" / "latest" / "state.pt").is_file()
    t0 = time.time()
    train_data, val_data = stage_sources(plan, run, j, tcfg)
    result = train_policy(tcfg, out, resume=resume, train_data=train_data, val_data=val_data)
    return {"weights": str(result.weights), "frames": int(result.frames), "steps": int(result.steps),
            "train_loss": result.last.get("train/loss"), "val_loss": result.last.get("val/loss"),
            "l2sp_distance": result.last.get("train/l2sp_distance"), "resumed": resume,
            "parts": [{"name": n, "sequences": k} for n, _, k in train_data.parts],
            "seconds": time.time() - t0, "formats": list(tcfg.checkpoint.export)}


# ---------------------------------------------------------------------------- evaluation


def eval_suite(plan: ContinualConfig, langs=None):
    """Every stage's tasks of the plan's suite on its evaluation worlds, the phrasings the
    embedder reads (as ``aimc eval --lang auto``)."""
    from aimc.eval.suite import choose_phrasings, load_suite

    suite = load_suite(plan.evaluate.suite)
    try:
        suite = suite.select(plan.task_ids())
    except UserError as e:
        raise UserError(f"stages[].tasks: {e}") from None
    if plan.evaluate.seed:
        suite = replace(suite, seed=plan.evaluate.seed)
    if plan.evaluate.max_steps:
        cap = plan.evaluate.max_steps
        suite = replace(suite, max_steps=min(suite.max_steps, cap),
                        tasks=tuple(replace(t, max_steps=min(t.max_steps, cap)) for t in suite.tasks))
    last = suite.seed + plan.evaluate.episodes - 1
    if suite.seed < TRAIN_WORLDS_END or last >= RESERVED_WORLDS_START:
        raise UserError(f"evaluation worlds {suite.seed:,}-{last:,} of suite {plan.evaluate.suite}: aimc continual evaluates "
                        f"on worlds from {TRAIN_WORLDS_END:,} to {RESERVED_WORLDS_START - 1:,} (below: training worlds; "
                        "2,000,000 and above: reserved test worlds); set evaluate.seed")
    suite, _notes = choose_phrasings(suite, "auto", langs)
    return suite


def evaluate(plan: ContinualConfig, suite, agent, out: Path, progress: bool) -> dict:
    """The suite played by ``agent`` into ``out`` (an aimc eval folder, resumable); each task's
    instructed and unconditioned success."""
    from aimc.eval.report import write_summary
    from aimc.eval.runner import run_suite

    t0 = time.time()
    run_suite(suite, agent, out, episodes=plan.evaluate.episodes, num_envs=plan.evaluate.num_envs,
              workers=plan.evaluate.workers, progress=progress)
    summary = write_summary(out, suite)
    tasks = {tid: {"instructed": e["instructed"], "unconditioned": e.get("unconditioned")}
             for tid, e in summary["tasks"].items()}
    return {"dir": str(out), "tasks": tasks, "episodes": plan.evaluate.episodes, "seconds": time.time() - t0}


def evaluated_episodes(ev: dict | None) -> int:
    """Episodes per task and condition an evaluation of the state was made with (0: none yet)."""
    if not ev:
        return 0
    return int(ev.get("episodes") or max((e["instructed"]["n"] for e in ev["tasks"].values()), default=0))


# ---------------------------------------------------------------------------- the forgetting matrix


def forgetting_matrix(plan: ContinualConfig, state: dict) -> dict:
    """Success of task i after stage j (instructed, Wilson intervals) from the evaluations done so
    far; per task its gain (after the stage that teaches it - before it) and its forgetting
    (best earlier - final, Newcombe interval of the difference); ``None`` where not evaluated yet."""
    from aimc.eval.metrics import Rate, difference

    tasks = plan.task_ids()
    columns = [{"stage": j, "name": "init" if j == 0 else plan.stages[j - 1].name,
                "tasks": [] if j == 0 else list(plan.stages[j - 1].tasks)} for j in range(len(plan.stages) + 1)]
    stages = state.get("stages", {})
    cells: dict[str, list[dict | None]] = {}
    for t in tasks:
        row = []
        for j in range(len(columns)):
            ev = (stages.get(str(j)) or {}).get("eval")
            row.append(ev["tasks"][t]["instructed"] if ev and t in ev["tasks"] else None)
        cells[t] = row

    def as_rate(d: dict) -> Rate:
        return Rate(d["successes"], d["n"], d["low"], d["high"])

    taught = {t: next(j for j in range(1, len(columns)) if t in plan.stages[j - 1].tasks) for t in tasks}
    gain, forgetting = {}, {}
    for t in tasks:
        row = cells[t]
        k = taught[t]
        gain[t] = (difference(as_rate(row[k]), as_rate(row[k - 1])).to_dict()
                   if row[k] is not None and row[k - 1] is not None else None)
        done = [j for j, c in enumerate(row) if c is not None]
        final = done[-1] if done else None
        forgetting[t] = None
        if final is not None and final > 0:
            best = max(range(final), key=lambda j: (row[j]["rate"] if row[j] is not None else -1.0, j))
            if row[best] is not None:
                forgetting[t] = {**difference(as_rate(row[best]), as_rate(row[final])).to_dict(), "best_stage": best,
                                 "final_stage": final}
    return {"name": plan.name, "tasks": tasks, "columns": columns, "cells": cells, "taught_by": taught, "gain": gain,
            "forgetting": forgetting, "episodes": plan.evaluate.episodes, "suite": plan.evaluate.suite,
            "replay": [plan.stage_replay(j) for j in range(1, len(columns))],
            "l2sp": [plan.stage_l2sp(j) for j in range(1, len(columns))]}


# ---------------------------------------------------------------------------- state, README


def load_state(run: Path) -> dict:
    return read_state_json(Path(run) / STATE_FILE, {"stages": {}})


def check_same_plan(run: Path, plan: ContinualConfig) -> None:
    """A run continues only with the plan it started with: ``name`` and ``threads`` may change, and
    ``evaluate.episodes`` may rise (every evaluation then plays the added episodes)."""
    path = Path(run) / PLAN_FILE
    if not path.is_file():
        if (Path(run) / STATE_FILE).is_file():
            raise UserError(f"{run}: {STATE_FILE} without {PLAN_FILE}; choose a new --out")
        return
    old, new = to_dict(load_config(ContinualConfig, path)), to_dict(plan)
    before, now = old["evaluate"].pop("episodes"), new["evaluate"].pop("episodes")
    if now < before:
        raise UserError(f"{run} was evaluated with evaluate.episodes={before}; it may rise (the evaluations play the added "
                        f"episodes) but not fall to {now}: use evaluate.episodes={before} or more, or choose a new --out")
    diff = changed_settings(old, new, CONTINUABLE)
    if diff:
        k, was, now = diff[0]
        shown = (lambda v: json.dumps(v, default=str)[:200])
        raise UserError(f"{run} holds an aimc continual run started with {k}={shown(was)}, now {shown(now)}; "
                        "run it with the plan it started with (only name and threads may change, and evaluate.episodes "
                        "may rise), or choose a new --out")


def readme_text(plan: ContinualConfig, state: dict, matrix: dict) -> str:
    from aimc.eval.report import forgetting_markdown

    stages = state.get("stages", {})
    lines = [f"# Continual fine-tuning run{': ' + plan.name if plan.name else ''}", "",
             f"- started: {state.get('started', '?')}; git: `{state.get('git', 'unknown')}`"]
    for s in state.get("sessions", []):
        lines.append(f"- session {s['started']}: `{s['command']}`")
    lines += [
        f"- start weights `{plan.init}`; base data {', '.join(f'`{b}`' for b in plan.base_stores) or 'none'}",
        f"- {len(plan.stages)} stages, preset `{plan.preset}`"
        + (f" with {' '.join(plan.overrides)}" if plan.overrides else "")
        + f"; evaluation: suite `{plan.evaluate.suite}`, {plan.evaluate.episodes} episodes per task and condition",
        "", "Plan: [plan.yaml](plan.yaml); state: `continual.json`; matrix: [forgetting.md](forgetting.md).", "",
        "## Stages", "",
        "| stage | data | replay | L2-SP | frames trained | train loss | val loss | seconds | its tasks after it | all tasks (mean) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    pending = "…"
    for j in range(len(plan.stages) + 1):
        st = stages.get(str(j), {})
        ev = st.get("eval")
        mean = "-"
        if ev:
            rates = [e["instructed"]["rate"] for e in ev["tasks"].values() if e["instructed"]["n"]]
            mean = f"{sum(rates) / len(rates):.2f}" if rates else "-"
        if j == 0:
            lines.append(f"| 0 init | | | | | | | {ev['seconds'] if ev else 0:.0f} | | {mean if ev else pending} |")
            continue
        s = plan.stages[j - 1]
        data = (f"record {s.record.task} x {s.record.episodes}" if s.record else ", ".join(Path(x).name for x in s.stores))
        tr = st.get("train")
        secs = sum(st[p].get("seconds", 0.0) for p in ("record", "train", "eval") if st.get(p))
        own = "; ".join(f"{t} {rate_text(ev['tasks'][t]['instructed'])}" for t in s.tasks) if ev else pending
        loss = (lambda v: "-" if v is None else f"{v:.3f}")
        lines.append(f"| {j} {s.name} | {data} | {plan.stage_replay(j):g} | {plan.stage_l2sp(j):g} | "
                     f"{tr['frames']:,} | {loss(tr.get('train_loss'))} | {loss(tr.get('val_loss'))} | {secs:.0f} | {own} | "
                     f"{mean if ev else pending} |" if tr else
                     f"| {j} {s.name} | {data} | {plan.stage_replay(j):g} | {plan.stage_l2sp(j):g} | {pending} | | | "
                     f"{secs:.0f} | {pending} | {pending} |")
    lines += ["", forgetting_markdown(matrix, level=2).rstrip(), ""]
    if state.get("final"):
        lines.append(f"Last stage's weights: {', '.join(f'`{Path(p).name}`' for p in state['final']['files'])}.")
    lines += ["", "## Next", "",
              "- compare runs (e.g. with and without replay): `aimc compare RUN_A RUN_B --out REPORT` draws their "
              "matrices side by side as heatmaps;",
              f"- the final weights on worlds never used here: `aimc eval --weights {Path(state.get('run', '.')) / 'final.safetensors'} "
              f"--suite {plan.evaluate.suite} --out EVAL_DIR`."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the run


def check_plan_inputs(plan: ContinualConfig) -> None:
    """Everything the plan reads, before anything runs: clear errors naming the file and the fix."""
    from aimc.checkpoints.safe_load import check_readable_file
    from aimc.data.store import EpisodeStore
    from aimc.envs.demonstrator import GOALS
    from aimc.train.config import load_continued

    if not plan.init:
        raise UserError("the plan names no init: the weights to start from (e.g. init: runs/quickstart/policy/final.safetensors)")
    init = check_readable_file(Path(plan.init), "the plan's init weights")
    if init.suffix != ".safetensors" or not init.with_suffix(".yaml").is_file():
        raise UserError(f"init {init}: aimc continual starts from aimc .safetensors weights with their .yaml beside them "
                        "(as aimc train exports them)")
    from aimc.eval.suite import load_suite

    world = load_suite(plan.evaluate.suite).env.get("name")
    for j, s in enumerate(plan.stages, 1):
        load_continued(plan.preset, init, [*plan.overrides, *s.overrides])  # typos fail now
        if s.record is not None and world != "crafter":
            raise UserError(f"stage {s.name}: record: plays the built-in world's demonstrator, but suite "
                            f"{plan.evaluate.suite} runs {world!r}; give this stage's data as stores: [...]")
        if s.record is not None and s.record.task not in GOALS:
            raise UserError(f"stage {s.name}: record.task {s.record.task!r} is not a skill of the built-in world's "
                            f"demonstrator ({', '.join(GOALS)})")
        for x in s.stores:
            store = EpisodeStore(x)
            try:
                store.require_exists()
            except UserError as e:
                raise UserError(f"stage {s.name}: stores: {e}") from None
            if not store.episode_ids():
                raise UserError(f"stage {s.name}: store {x} holds no episode")
    for b in plan.base_stores:
        store = EpisodeStore(b)
        try:
            store.require_exists()
        except UserError as e:
            raise UserError(f"base_stores: {e}") from None


def run_continual(plan: ContinualConfig, run_dir: str | Path, *, progress: bool = True, command: str = "",
                  on_phase: Callable[[int, str], None] | None = None) -> dict:
    """Run (or continue) ``plan`` in ``run_dir``; returns the state (also ``run_dir/continual.json``).
    ``on_phase(stage, phase)`` is called as each phase starts (stage 0, "eval": the init weights)."""
    import torch

    threads_before = torch.get_num_threads()
    if plan.threads:
        torch.set_num_threads(plan.threads)
    try:
        return _run(plan, Path(run_dir), progress, command, on_phase)
    finally:
        torch.set_num_threads(threads_before)


def _run(plan: ContinualConfig, run: Path, progress: bool, command: str, on_phase) -> dict:
    from rich.console import Console

    from aimc.agent.agent import acting_threads
    from aimc.online.rounds import export_as, load_models, make_agent
    from aimc.train.rundir import open_session

    console = Console(stderr=True, quiet=not progress, highlight=False)
    check_plan_inputs(plan)
    check_same_plan(run, plan)
    models = load_models(plan)  # MineCLIP and prior beside init, or plan.agent.mineclip / prior
    suite = eval_suite(plan, getattr(models.mineclip, "langs", None))
    from aimc.eval.runner import check_measures

    check_measures(suite)
    run.mkdir(parents=True, exist_ok=True)
    save_config(plan, run / PLAN_FILE)
    state = load_state(run)
    open_session(state, run, command or "run_continual() from Python")
    state["models"] = {"mineclip": models.mineclip_path, "prior": models.prior_path}
    stages = state.setdefault("stages", {})

    def save() -> None:
        matrix = forgetting_matrix(plan, state)
        write_state_json(run / STATE_FILE, state)
        atomic_write_text(run / MATRIX_FILE, json.dumps(matrix, indent=1, ensure_ascii=False) + "\n")
        from aimc.eval.report import forgetting_markdown

        atomic_write_text(run / "forgetting.md", forgetting_markdown(matrix))
        atomic_write_text(run / "README.md", readme_text(plan, state, matrix))

    def phase(j: int, name: str) -> None:
        if on_phase is not None:
            on_phase(j, name)

    def weights(j: int) -> str:
        return plan.init if j == 0 else stages[str(j)]["train"]["weights"]

    def run_eval(j: int) -> None:
        phase(j, "eval")
        console.print(f"[bold]{stage_label(plan, j)}[/]: evaluating {len(suite.tasks)} task(s) x {plan.evaluate.episodes} "
                      f"episodes on worlds from {suite.seed:,}")
        agent = make_agent(weights(j), models, plan, plan.seed)
        with acting_threads(agent):
            stages.setdefault(str(j), {})["eval"] = evaluate(plan, suite, agent, eval_dir(run, plan, j), progress)
        save()

    save()
    if evaluated_episodes((stages.get("0") or {}).get("eval")) < plan.evaluate.episodes:
        run_eval(0)
    for j in range(1, len(plan.stages) + 1):
        st = stages.setdefault(str(j), {})
        s = plan.stages[j - 1]
        head = f"[bold]stage {j}/{len(plan.stages)} {s.name}[/]"
        if s.record is not None and not st.get("record"):
            phase(j, "record")
            console.print(f"{head}: recording {s.record.episodes} demonstrator episodes of {s.record.task}")
            st["record"] = record_stage(plan, run, j, models, suite, progress)
            save()
        if not st.get("train"):
            phase(j, "train")
            parts = ", ".join(f"{p['name']} {p['share']:.0%}" for p in stage_parts(plan, run, j))
            console.print(f"{head}: training {plan.stage_frames(j):,} frames from stage {j - 1}'s weights ({parts}"
                          + (f"; L2-SP {plan.stage_l2sp(j):g} toward init" if plan.stage_l2sp(j) else "") + ")")
            st["train"] = train_stage(plan, run, j, weights(j - 1), models.goal_dim)
            save()
        if evaluated_episodes(st.get("eval")) < plan.evaluate.episodes:
            run_eval(j)
    last = len(plan.stages)
    state["final"] = {"stage": last, "files": export_as(weights(last), run / "final", stages[str(last)]["train"]["formats"])}
    save()
    console.print(f"forgetting matrix: {run / 'forgetting.md'}")
    return state
