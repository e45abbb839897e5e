"""Hyperparameter search on Optuna: storages, the trial objective, and the worker loop.

A study lives in a database, so it survives crashes and can be shared:

* SQLite (default): ``DIR/study.db``, with a lock timeout so several processes can write;
* Optuna's journal file (``--storage journal``): ``DIR/study.journal``, for processes on one machine;
* any SQLAlchemy URL (``postgresql://user:pw@host/db``): ``aimc tune`` processes on many
  machines share one study.

Every trial is an ordinary ``aimc train`` run in ``DIR/trials/trial_NNNN`` (config, metrics,
TensorBoard, weights). Each validation reports its loss at the trial's frame count, so the
pruner can stop a poor trial at a validation (``StopTraining``); the trial is then marked
pruned. A trial whose process died (kill -9, power loss) is found stale and marked failed,
then retried with the same parameters: by its heartbeat in a database, or because its
process no longer exists with the journal file. Worker processes take trials until the study
holds ``n_trials`` finished (complete or pruned) trials, so a rerun of the same command
continues the study instead of starting again.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimc.errors import UserError
from aimc.tune.space import SearchSpace

FINISHED = ("COMPLETE", "PRUNED")
DEFAULT_HEARTBEAT_S = 60
DEFAULT_GRACE_S = 180


@dataclass
class TuneSettings:
    """Everything a worker process needs (picklable: workers are spawned processes)."""

    out_dir: str
    study_name: str
    n_trials: int
    storage: str = ""  # "" = sqlite in out_dir, "journal", a path ending in .journal, or a SQLAlchemy URL
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    seed: int = 0
    pruner: str = "median"  # median | none
    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    grace_s: int = DEFAULT_GRACE_S
    max_retry: int = 2
    poll_s: float = 5.0
    device: str | None = None  # runtime.device for this worker's trials (None: the preset's)
    threads: int = 0  # torch threads in this worker (0: leave as is)


def open_storage(settings: TuneSettings):
    """The Optuna storage named by ``settings.storage`` (created if needed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Optuna marks heartbeats experimental
        warnings.filterwarnings("ignore", message=".*experimental.*")
        return _open_storage(settings)


def _open_storage(settings: TuneSettings):
    import optuna
    from optuna.storages import RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from aimc.utils.io import make_dir

    out = make_dir(settings.out_dir, "study folder (--out)")
    spec = settings.storage or "sqlite"
    if spec == "journal" or spec.endswith(".journal"):
        path = out / "study.journal" if spec == "journal" else Path(spec)
        return JournalStorage(JournalFileBackend(str(path)))
    url = f"sqlite:///{(out / 'study.db').resolve()}" if spec == "sqlite" else spec
    engine: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=settings.heartbeat_s, grace_period=settings.grace_s,
            heartbeat_stale_trial_callback=_retry(settings.max_retry),
        )
    except (ImportError, ModuleNotFoundError) as e:
        raise UserError(f"--storage {url}: the database driver is missing ({e}); install it, e.g. "
                        "pip install psycopg2-binary for PostgreSQL") from None
    except optuna.exceptions.StorageInternalError as e:
        raise UserError(f"--storage {url}: cannot open the database ({e.__cause__ or e})") from None


def open_study(settings: TuneSettings, direction: str):
    """Create the study, or load it when it exists (same name, same storage)."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=settings.seed)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0) if settings.pruner == "median"
              else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=open_storage(settings), study_name=settings.study_name, direction=direction,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise UserError(f"study {settings.study_name!r} exists with direction {study.direction.name.lower()}, "
                        f"the space file says {direction}: use another --study name")
    return study


def _retry(max_retry: int):
    import warnings

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" notice
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def counts(study) -> dict[str, int]:
    """Trials of the study by state name."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_trials(study, max_retry: int) -> list[int]:
    """Mark trials whose process is gone as failed and queue a retry; returns their numbers.

    Databases: Optuna's heartbeat (a trial silent for longer than the grace period). Journal
    files have no heartbeat: a running trial started on this host by a process that no longer
    exists is stale.
    """
    import optuna
    from optuna.storages._heartbeat import is_heartbeat_enabled
    from optuna.trial import TrialState

    storage = study._storage
    if is_heartbeat_enabled(storage):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*experimental.*")
            optuna.storages.fail_stale_trials(study)
        return sorted({t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))} - before)
    stale = []
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner") or {}
        if owner.get("host") == host and owner.get("pid") != os.getpid() and not _pid_alive(int(owner.get("pid", -1))):
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                _retry(max_retry)(study, storage.get_trial(t._trial_id))
                stale.append(t.number)
    return stale


def training_objective(space: SearchSpace, settings: TuneSettings, log: Callable[[str], None] = print):
    """The objective of one trial: train with the sampled keys, return val loss (or the eval score)."""
    import optuna

    from aimc.config import load_config
    from aimc.train.config import TrainConfig
    from aimc.train.policy import StopTraining, train_policy

    def objective(trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in space.params}
        over = [*settings.overrides, *(p.override(values[p.key]) for p in space.params),
                f"schedule.n_frames={space.budget_frames}"]
        if space.max_seconds:
            over.append(f"schedule.max_seconds={space.max_seconds:g}")
        if settings.device:
            over.append(f"runtime.device={settings.device}")
        run_dir = Path(settings.out_dir) / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", over)
        retry_of = trial.study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
        log(f"trial {trial.number}" + (f" (retry of {retry_of})" if retry_of is not None else "") + ": "
            + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))
        cfg = load_config(TrainConfig, settings.preset, over)

        def on_validation(v) -> None:
            trial.report(v.val_loss, step=v.frames)
            if trial.should_prune():
                raise StopTraining(f"pruned by the study at {v.frames:,} frames (val/loss {v.val_loss:.4f})")

        result = train_policy(cfg, run_dir, on_validation=on_validation)
        trial.set_user_attr("frames", result.frames)
        trial.set_user_attr("seconds", round(result.seconds, 1))
        trial.set_user_attr("weights", str(result.weights))
        if result.stopped:
            log(f"trial {trial.number}: pruned at {result.frames:,} frames")
            raise optuna.TrialPruned(f"pruned at {result.frames} frames")
        if space.objective == "val_loss":
            if not math.isfinite(result.best_val_loss):
                raise UserError("objective val_loss needs validation: give the stores a val split (aimc data split) "
                                "and keep validation on (validation.enabled=true)")
            value = result.best_val_loss
        else:
            value = evaluate_weights(space, result.weights, run_dir / "eval")
        log(f"trial {trial.number}: {space.objective} {value:.4f} after {result.frames:,} frames in {result.seconds:.0f} s")
        return value

    return objective


def evaluate_weights(space: SearchSpace, weights: Path, out_dir: Path) -> float:
    """A short evaluation of ``weights`` on the space's suite -> mean instructed success or mean lift."""
    from aimc.agent.agent import Agent
    from aimc.eval.report import write_summary
    from aimc.eval.runner import run_suite
    from aimc.eval.suite import load_suite

    ev = space.eval
    suite = load_suite(ev.suite)
    agent = Agent.load(weights, mineclip=ev.mineclip or None, prior=ev.prior or None, need_text=True,
                       cond_scale=ev.cond_scale)
    run_suite(suite, agent, out_dir, episodes=ev.episodes, num_envs=max(1, ev.workers or 1), workers=ev.workers,
              progress=False)
    summary = write_summary(out_dir, suite)
    tasks = summary["tasks"].values()
    if ev.metric == "lift":
        lifts = [t["lift"]["diff"] for t in tasks if t.get("lift")]
        if not lifts:
            raise UserError(f"eval.metric lift: suite {ev.suite} has no unconditioned episodes")
        return float(sum(lifts) / len(lifts))
    rates = [t["instructed"]["rate"] for t in tasks]
    return float(sum(rates) / len(rates))


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def work(space: SearchSpace, settings: TuneSettings, objective: Callable | None = None,
         log: Callable[[str], None] = print) -> None:
    """One worker: take trials until the study holds ``n_trials`` finished ones.

    ``objective`` defaults to :func:`training_objective`; tests pass toy ones. Trials running
    in other processes count as taken; once none is left to take, the worker waits for them
    (a stale one is failed and retried here).
    """
    import optuna

    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(settings, space.direction)
    inner = objective or training_objective(space, settings, log)

    def owned(trial) -> float:  # who runs it: how a journal-file study finds a trial whose process died
        trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})
        return inner(trial)

    while True:
        for number in fail_stale_trials(study, settings.max_retry):
            log(f"trial {number}: its process is gone; marked failed and queued again")
        c = counts(study)
        finished = sum(c.get(s, 0) for s in FINISHED)
        if finished >= settings.n_trials:
            return
        if finished + c.get("RUNNING", 0) >= settings.n_trials:
            time.sleep(settings.poll_s)  # the rest are running elsewhere
            continue
        study.optimize(owned, n_trials=1, catch=(), gc_after_trial=True)


def _worker_main(space: SearchSpace, settings: TuneSettings) -> None:  # runs in a spawned process
    work(space, settings, log=lambda m: print(f"[{settings.device or 'worker'} {os.getpid()}] {m}", flush=True))


def run_workers(space: SearchSpace, settings: TuneSettings, jobs: int) -> None:
    """``jobs`` worker processes on one machine (one per GPU round-robin, CPU threads split)."""
    import dataclasses
    import multiprocessing as mp

    import torch

    open_study(settings, space.direction)  # create it once, before the workers race to
    if jobs <= 1:
        work(space, settings)
        return
    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = mp.get_context("spawn")
    procs = []
    for i in range(jobs):
        s = dataclasses.replace(settings, device=settings.device or (f"cuda:{i % gpus}" if gpus else None),
                                threads=settings.threads or threads)
        p = ctx.Process(target=_worker_main, args=(space, s), name=f"aimc-tune-{i}")
        p.start()
        procs.append(p)
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise UserError(f"{len(bad)} of {jobs} tune workers failed (exit codes {bad}); their output is above. "
                        "Run the same command again to continue the study.")
