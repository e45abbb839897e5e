"""`aimc compare` on training run folders: curves side by side, final numbers, the settings that
differ; the page renders in a real browser; a mix of kinds or anything else is a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_compare_report import render_in_chromium
from test_train_support import GOAL_DIM, SyntheticBatches, TinyPolicy, single_thread  # noqa: F401 (autouse fixture)

from aimc.cli import main
from aimc.config import load_config
from aimc.train.config import TrainConfig
from aimc.train.policy import train_policy


def _train(run: Path, *overrides: str) -> Path:
    cfg = load_config(TrainConfig, "tiny", [f"model.goal_dim={GOAL_DIM}", "logging.tensorboard=false", "logging.every_frames=1",
                                            "schedule.n_frames=320", "schedule.warmup_frames=32", "validation.every_frames=64",
                                            "validation.switch_at_frames=0", "checkpoint.every_frames=0", *overrides])
    src = SyntheticBatches(4, 8)
    torch.manual_seed(0)
    train_policy(cfg, run, policy=TinyPolicy(), train_data=src, val_data=src.val())
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-runs")
    a = _train(root / "lr-3e-3", "name=fast", "optim.lr=3e-3")
    b = _train(root / "lr-3e-4", "name=slow", "optim.lr=3e-4")
    return root, a, b


def test_compare_training_runs(runs, capsys):
    root, a, b = runs
    out = root / "report"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md == capsys.readouterr().out.split("report: ")[0].rstrip("\n") + "\n"  # printed as written
    assert "(training runs)" in md and "| lr-3e-3 | finished | 10 | 320 |" in md
    # the settings that differ, and only those
    settings = md.split("## Settings that differ", 1)[1]
    assert "| `optim.lr` | 0.003 | 0.0003 |" in settings and "| `name` | fast | slow |" in settings
    assert "schedule.n_frames" not in settings and "data.T" not in settings
    # the final numbers are the runs' own
    for run in (a, b):
        summary = json.loads((run / "summary.json").read_text())
        assert f"{summary['last']['train/loss']:.4g}" in md.split("## Final numbers", 1)[1]
        assert f"{summary['best_val_loss']:.4f}" in md
    page = (out / "report.html").read_text()
    assert page.count('<svg') >= 4 and "train/loss" in page and "val/loss" in page and "(frames)" in page
    assert page.count("<polyline") >= 8  # two runs in each chart
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_compare_training_runs_renders_in_headless_chromium(runs):
    root, a, b = runs
    out = root / "report-browser"
    assert main(["compare", str(a), str(b), "--out", str(out), "--names", "fast,slow"]) == 0
    dom, img = render_in_chromium(out / "report.html", out, height=1600)
    assert "Settings that differ" in dom and "optim.lr" in dom and dom.count("<svg") >= 4
    assert dom.count("<circle") >= 40  # 10 logged losses per run, as dots on the lines
    # both runs' curves are drawn: the palette's first two colours appear on the page
    for color in ((0x4C, 0x72, 0xB0), (0xDD, 0x84, 0x52)):
        assert (np.abs(img.astype(int) - color).sum(-1) < 40).sum() > 150, color


def test_a_run_that_is_still_training_is_compared_as_far_as_it_got(runs, tmp_path):
    _, a, b = runs
    unfinished = tmp_path / "unfinished"
    shutil.copytree(b, unfinished)
    (unfinished / "summary.json").unlink()
    (unfinished / "README.md").unlink()
    from aimc.eval.report import compare

    html_path, md_path = compare([a, unfinished], tmp_path / "r")
    md = md_path.read_text()
    assert "| unfinished | unfinished (no summary.json yet) | - | 320 |" in md
    assert "val/loss" in html_path.read_text()


def _eval_folder(root: Path) -> Path:
    from aimc.eval.report import write_summary
    from aimc.eval.runner import run_suite

    from test_eval_runner import ScriptedAgent, toy_suite

    suite = toy_suite(episodes=1)
    run_suite(suite, ScriptedAgent(), root, num_envs=2, progress=False)
    write_summary(root, suite)
    return root


def _bad_inputs(tmp: Path, train_run: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the error must say besides the path)."""
    text = tmp / "notes.txt"
    text.write_text("my notes\n")
    empty = tmp / "empty"
    empty.mkdir()
    other = tmp / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    broken = tmp / "broken-summary"
    shutil.copytree(train_run, broken)
    (broken / "summary.json").write_bytes(b"\x00\x01 not json")
    cut = tmp / "cut-config"
    shutil.copytree(train_run, cut)
    (cut / "config.yaml").write_text("data:\n  stores: [a\n  T: 8\n")
    half_eval = tmp / "half-eval"
    half_eval.mkdir()
    (half_eval / "results.jsonl").write_text('{"key": "a"}\n')
    weird = tmp / "weird-summary"
    weird.mkdir()
    (weird / "summary.json").write_text("[1, 2, 3]")
    return {
        "missing": (tmp / "nope", "no such folder"),
        "a file": (text, "is a file, not a folder"),
        "an empty folder": (empty, "an empty folder"),
        "something else": (other, "neither an evaluation folder nor a training run"),
        "unreadable summary": (broken / "summary.json", "not readable JSON"),
        "broken config": (cut / "config.yaml", "not readable YAML"),
        "unfinished evaluation": (half_eval, "no summary.json here"),
        "a summary of neither kind": (weird / "summary.json", "neither an evaluation summary nor a training run's"),
    }


@pytest.mark.parametrize("case", ["missing", "a file", "an empty folder", "something else", "unreadable summary",
                                  "broken config", "unfinished evaluation", "a summary of neither kind"])
def test_compare_refuses_what_it_cannot_read(runs, tmp_path, capsys, case):
    _, a, _ = runs
    path, expected = _bad_inputs(tmp_path, a)[case]
    folder = path.parent if path.name in ("summary.json", "config.yaml") else path
    assert main(["compare", str(a), str(folder), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err and expected in err, err
    if case in ("missing", "a file", "an empty folder", "something else"):
        assert "aimc compare reads evaluation folders" in err and "training run folders" in err
    assert not (tmp_path / "report" / "report.html").exists()


def test_a_mix_of_evaluations_and_training_runs_is_refused(runs, tmp_path, capsys):
    _, a, _ = runs
    ev = _eval_folder(tmp_path / "eval")
    assert main(["compare", str(ev), str(a), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert f"{ev} is an evaluation folder" in err and f"{a} is a training run" in err and "one kind" in err


def test_out_that_is_a_file_is_refused(runs, tmp_path, capsys):
    _, a, b = runs
    f = tmp_path / "report"
    f.write_text("x")
    assert main(["compare", str(a), str(b), "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(f) in err and "is a file" in err


def test_prior_runs_compare_with_each_other_but_not_with_policy_runs(runs, tmp_path, capsys):
    _, a, _ = runs
    pairs = tmp_path / "pairs.npz"
    rng = np.random.default_rng(0)
    np.savez(pairs, text_embeddings=rng.normal(size=(64, 8)).astype(np.float32),
             visual_embeddings=rng.normal(size=(64, 8)).astype(np.float32))
    for name, lr in (("prior-a", "1e-3"), ("prior-b", "3e-3")):
        assert main(["prior", "train", "--data", str(pairs), "--fast", "--out", str(tmp_path / name), f"lr={lr}"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "prior-a"), str(tmp_path / "prior-b"), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| prior-a | prior run |" in md and "| prior-b | prior run |" in md
    assert "| `lr` | 0.001 | 0.003 |" in md and "val_loss" in md
    assert "val_loss" in (tmp_path / "r" / "report.html").read_text()
    capsys.readouterr()
    assert main(["compare", str(a), str(tmp_path / "prior-a"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{a} trained a policy" in err and f"{tmp_path / 'prior-a'} trained a prior" in err
