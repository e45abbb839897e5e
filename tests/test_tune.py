"""``aimc tune``: search, shared storage, crash recovery, pruning, the space file, the report."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_train_cli import POLICY, D, make_store
from test_train_support import single_thread  # noqa: F401 (autouse fixture)

from aimc.config import ConfigError
from aimc.tune.space import check_against_schema, space_from_dict
from aimc.tune.study import TuneSettings, counts, open_study, work

optuna = pytest.importorskip("optuna")

TOY_SPACE = {
    "objective": "val_loss",
    "budget_frames": 64,
    "params": {"optim.lr": {"log_uniform": [1.0e-5, 1.0e-1]}, "optim.weight_decay": {"uniform": [0.0, 0.1]}},
}


def toy_value(lr: float, wd: float) -> float:
    """Minimum at lr = 1e-3, weight_decay = 0.05."""
    return (math.log10(lr) + 3.0) ** 2 + 100 * (wd - 0.05) ** 2


def toy_objective(trial) -> float:
    return toy_value(trial.suggest_float("optim.lr", 1e-5, 1e-1, log=True),
                     trial.suggest_float("optim.weight_decay", 0.0, 0.1))


def settings(tmp_path: Path, n: int, storage: str = "", **kw) -> TuneSettings:
    return TuneSettings(out_dir=str(tmp_path / "tune"), study_name="toy", n_trials=n, storage=storage,
                        poll_s=0.2, **kw)


def test_toy_search_finds_the_optimum_region(tmp_path):
    space = space_from_dict(TOY_SPACE)
    work(space, settings(tmp_path, 40), objective=toy_objective, log=lambda m: None)
    study = open_study(settings(tmp_path, 40), "minimize")
    assert counts(study) == {"COMPLETE": 40}
    best = study.best_trial
    assert 10 ** -3.5 < best.params["optim.lr"] < 10 ** -2.5, best.params
    assert 0.025 < best.params["optim.weight_decay"] < 0.075, best.params
    # random search over the same space does worse on average: the sampler is doing the work
    assert best.value < 0.1


def _record_worker(out_dir: str, storage: str, n: int, log_path: str) -> None:  # a spawned process
    space = space_from_dict(TOY_SPACE)

    def objective(trial):
        value = toy_objective(trial)
        with open(log_path, "a") as f:  # O_APPEND: lines from both processes never interleave
            f.write(f"{trial.number} {os.getpid()}\n")
        time.sleep(0.05)
        return value

    s = TuneSettings(out_dir=out_dir, study_name="toy", n_trials=n, storage=storage, poll_s=0.1, seed=os.getpid())
    work(space, s, objective=objective, log=lambda m: None)


@pytest.mark.parametrize("storage", ["", "journal"])
def test_two_processes_on_one_storage_never_run_a_trial_twice(tmp_path, storage):
    n = 12
    log = tmp_path / "calls.txt"
    open_study(settings(tmp_path, n, storage), "minimize")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_record_worker, args=(str(tmp_path / "tune"), storage, n, str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    calls = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    numbers = [c[0] for c in calls]
    assert len(numbers) == len(set(numbers)), "a trial ran twice"
    assert len({c[1] for c in calls}) == 2, "both processes took trials"
    study = open_study(settings(tmp_path, n, storage), "minimize")
    c = counts(study)
    # each process checks before it takes a trial: at most one more than asked can start at the very end
    assert n <= c["COMPLETE"] <= n + 1 and set(c) == {"COMPLETE"}
    assert sorted(numbers) == sorted(t.number for t in study.trials)


KILLED = """
import os, sys, time
sys.path.insert(0, {tests!r})
from aimc.tune.space import space_from_dict
from aimc.tune.study import TuneSettings, work
from test_tune import TOY_SPACE, toy_objective

def objective(trial):
    value = toy_objective(trial)
    if trial.number == 2:
        open({marker!r}, "w").close()
        time.sleep(300)  # killed here
    return value

s = TuneSettings(out_dir={out!r}, study_name="toy", n_trials=5, storage={storage!r}, heartbeat_s=1, grace_s=2)
work(space_from_dict(TOY_SPACE), s, objective=objective, log=lambda m: None)
"""


@pytest.mark.parametrize("storage", ["", "journal"])
def test_kill_9_during_a_trial_then_rerun_continues_the_study(tmp_path, storage):
    marker = tmp_path / "in_trial_2"
    script = tmp_path / "killed.py"
    out = str(tmp_path / "tune")
    script.write_text(KILLED.format(tests=str(Path(__file__).parent), marker=str(marker), out=out, storage=storage))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, "the worker ended before trial 2"
            assert time.time() < deadline
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    s = TuneSettings(out_dir=out, study_name="toy", n_trials=5, storage=storage, heartbeat_s=1, grace_s=2, poll_s=0.2)
    before = {t.number: (t.state.name, t.value, t.params) for t in open_study(s, "minimize").trials}
    assert before[2][0] == "RUNNING" and before[0][0] == before[1][0] == "COMPLETE"

    work(space_from_dict(TOY_SPACE), s, objective=toy_objective, log=lambda m: None)

    study = open_study(s, "minimize")
    trials = {t.number: t for t in study.trials}
    for k in (0, 1):  # finished trials kept as they were
        assert (trials[k].state.name, trials[k].value, trials[k].params) == before[k]
    assert trials[2].state.name == "FAIL"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == 2]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE" and retries[0].params == before[2][2]
    c = counts(study)
    assert c["COMPLETE"] == 5 and c["FAIL"] == 1 and "RUNNING" not in c


# ------------------------------------------------------------------------- the space file


def test_unknown_key_is_refused_naming_it():
    space = space_from_dict({**TOY_SPACE, "params": {"optim.lrr": {"log_uniform": [1e-5, 1e-3]}}})
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        check_against_schema(space, "tiny", [])


@pytest.mark.parametrize("params,message", [
    ({"optim.lr": {"log_uniform": [0.0, 1e-3]}}, "log scale needs low > 0"),
    ({"optim.lr": {"uniform": [1e-3, 1e-5]}}, "must be below high"),
    ({"optim.lr": {"gaussian": [0, 1]}}, "unknown kind 'gaussian'"),
    ({"optim.batch_size": {"int": [2.5, 8]}}, "integer bounds"),
    ({"optim.batch_size": {"choice": ["many"]}}, "optim.batch_size"),
])
def test_bad_spaces_say_what_is_wrong(params, message):
    with pytest.raises(ConfigError, match=message):
        space = space_from_dict({**TOY_SPACE, "params": params})
        check_against_schema(space, "tiny", [])


def test_space_keys_and_objective_are_checked():
    with pytest.raises(ConfigError, match="unknown key 'budget'"):
        space_from_dict({**TOY_SPACE, "budget": 5})
    with pytest.raises(ConfigError, match="budget_frames"):
        space_from_dict({k: v for k, v in TOY_SPACE.items() if k != "budget_frames"})
    assert space_from_dict({**TOY_SPACE, "objective": "eval"}).direction == "maximize"


# ------------------------------------------------------------------------- real trials


def _store(tmp_path: Path) -> list[str]:
    from aimc.data.split import make_split

    store = make_store(tmp_path / "store")
    make_split(store, val_fraction=0.25, seed=0)
    return [f"data.stores=[{store.root}]", f"model.goal_dim={D}", POLICY, "logging.tensorboard=false",
            "validation.max_batches=1", "schedule.warmup_frames=32", "checkpoint.every_frames=0"]


def test_pruning_stops_a_trial_at_a_validation(tmp_path):
    from aimc.tune.study import training_objective

    base = _store(tmp_path)
    space = space_from_dict({"budget_frames": 320, "params": {"optim.lr": {"log_uniform": [1e-4, 1e-2]}}})
    s = TuneSettings(out_dir=str(tmp_path / "tune"), study_name="prune", n_trials=1, preset="tiny",
                     overrides=[*base, "validation.every_begin_frames=64", "validation.switch_at_frames=3200"])

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", pruner=AlwaysPrune())
    study.optimize(training_objective(space, s, log=lambda m: None), n_trials=1)
    t = study.trials[0]
    assert t.state.name == "PRUNED"
    assert list(t.intermediate_values) == [64]  # reported at the first validation (step 2 = 64 frames), then stopped
    assert t.user_attrs["frames"] == 64
    run = Path(t.user_attrs["run_dir"])
    assert "pruned by the study at 64 frames" in (run / "README.md").read_text() + (run / "summary.json").read_text()


def test_aimc_tune_end_to_end_best_preset_reproduces_and_report_renders(tmp_path, capsys):
    from aimc.cli import main

    base = _store(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent("""\
        objective: val_loss
        budget_frames: 96
        params:
          optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}
          optim.weight_decay: {uniform: [0.0, 0.1]}
    """))
    out = tmp_path / "tune"
    argv = ["tune", "--preset", "tiny", "--space", str(space), "--trials", "3", "--out", str(out), "--pruner", "none", *base]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["states"] == {"COMPLETE": 3}
    for name in ("history", "importances", "parallel"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000, name
    best = summary["best"]
    # the best config, re-run with aimc train --preset, reproduces its validation loss (seeded)
    assert main(["train", "--preset", str(out / "best.yaml"), "--out", str(tmp_path / "again")]) == 0
    again = [json.loads(x) for x in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert min(r["val/loss"] for r in again if "val/loss" in r) == pytest.approx(best["value"], rel=1e-6)
    # a rerun of the same command continues the finished study: nothing new is trained
    assert main(argv) == 0
    assert "continuing with 3 finished trial(s)" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["states"] == {"COMPLETE": 3}

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("chromium is not installed (CI installs it with `apt-get install -y chromium`)")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome-profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", (out / "report.html").as_uri()], check=True, timeout=120,
                         capture_output=True, text=True).stdout
    assert f"Best trial: {best['number']}" in dom and dom.count("<img") == 3 and dom.count("<tr>") >= 4


def test_policy_keys_are_checked_against_the_policy_config():
    space = space_from_dict({**TOY_SPACE, "params": {"model.policy.hidsizee": {"choice": [128, 256]}}})
    with pytest.raises(ConfigError, match=r"model\.policy\.hidsizee"):
        check_against_schema(space, "crafter", [])


def test_the_shipped_crafter_space_fits_the_crafter_preset():
    from aimc.tune.space import load_space

    space = load_space("crafter")
    check_against_schema(space, "crafter", ["data.stores=[store]"])
    assert not {p.key for p in space.params} & {"data.T", "data.p_uncond"}
