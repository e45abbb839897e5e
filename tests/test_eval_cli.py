"""`aimc eval` and `aimc compare` from the command line on the built-in world (tiny agent, few steps)."""

from __future__ import annotations

import json

from aimc.cli import main
from aimc.eval.runner import read_results

from test_agent import make_bundle


def test_eval_cli_builtin_world_and_compare(tmp_path, capsys):
    weights = make_bundle(tmp_path / "bundle")
    common = ["--suite", "crafter-core", "--tasks", "collect_wood,collect_sapling", "--episodes", "2",
              "--max-steps", "8", "--num-envs", "3", "--quiet"]
    assert main(["eval", "--weights", str(weights), "--out", str(tmp_path / "model"), "--videos", "1",
                 "--device", "cpu", *common]) == 0
    assert main(["eval", "--baseline", "random", "--out", str(tmp_path / "random"), *common]) == 0
    rows = read_results(tmp_path / "model" / "results.jsonl")
    # 2 goals + unconditioned, 2 episodes each, every episode scored on both goals
    assert len(rows) == 6 and all(set(r["success"]) == {"collect_wood", "collect_sapling"} for r in rows)
    assert {r["seed"] for r in rows} == {1_000_000, 1_000_001}
    summary = json.loads((tmp_path / "model" / "summary.json").read_text())
    assert summary["matrix_cells"]["conditions"] == ["collect_wood", "collect_sapling", "_unconditioned"]
    assert (tmp_path / "model" / "videos").is_dir() and len(list((tmp_path / "model" / "videos").glob("*.mp4"))) == 3
    # resuming a finished evaluation plays nothing and keeps the results
    assert main(["eval", "--weights", str(weights), "--out", str(tmp_path / "model"), "--device", "cpu", *common]) == 0
    assert len(read_results(tmp_path / "model" / "results.jsonl")) == 6
    out = capsys.readouterr().out
    assert "Instruction matrix" in out
    assert main(["compare", str(tmp_path / "random"), str(tmp_path / "model"), "--out", str(tmp_path / "cmp"),
                 "--names", "random,tiny"]) == 0
    assert "| collect_wood |" in (tmp_path / "cmp" / "report.md").read_text()
    assert "tiny - random" in (tmp_path / "cmp" / "report.html").read_text()


def test_eval_cli_errors(tmp_path, capsys):
    assert main(["eval", "--out", str(tmp_path / "x"), "--suite", "crafter-core"]) == 2
    assert "needs --weights" in capsys.readouterr().err
    assert main(["eval", "--baseline", "random", "--out", str(tmp_path / "x"), "--suite", "no-such-suite"]) == 2
    assert "shipped suite" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2


def test_eval_expert_baseline_follows_instructions(tmp_path):
    """The scripted demonstrator as the ceiling: told to place a table, it does, on held-out worlds."""
    assert main(["eval", "--baseline", "expert", "--suite", "crafter-core", "--tasks", "place_table,collect_sapling",
                 "--episodes", "2", "--max-steps", "60", "--num-envs", "2", "--out", str(tmp_path / "expert"),
                 "--quiet"]) == 0
    summary = json.loads((tmp_path / "expert" / "summary.json").read_text())
    cells = summary["matrix_cells"]["cells"]
    assert cells["place_table"]["place_table"]["successes"] == 2
    assert cells["collect_sapling"]["collect_sapling"]["successes"] == 2
    assert cells["place_table"]["collect_sapling"]["successes"] == 0  # told to find saplings, it builds no table
