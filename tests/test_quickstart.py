"""``aimc quickstart --fast``: every stage of the recipe runs and leaves its artifacts."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from aimc.cli import build_cli, main
from aimc.data.store import EpisodeStore


def test_fast_quickstart_end_to_end(tmp_path, capsys):
    run = tmp_path / "qs"
    assert main(["quickstart", "--fast", "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| instruction | when instructed | unconditioned | lift |" in out
    state = json.loads((run / "quickstart.json").read_text())
    assert list(state["results"]) == ["generate", "embedder", "embed", "policy", "prior", "eval"]

    # 1. demonstrations with captions
    store = EpisodeStore(run / "store")
    ids = store.episode_ids()
    assert len(ids) == 4
    ep = store.open(ids[0])
    assert ep.frames(0, 2).shape == (2, 64, 64, 3)
    assert any(a["lang"] == "zh" for e in ids for a in store.open(e).annotations())
    # 2. embedder, 3. embeddings of every frame + split
    assert (run / "mineclip" / "mineclip.safetensors").is_file()
    emb, valid = ep.embeddings()
    assert emb.shape == (ep.num_frames, 64) and valid[15:].all() and not valid[:15].any()
    assert (run / "store" / "splits.yaml").is_file()
    # 4. policy, 5. prior
    assert (run / "policy" / "final.safetensors").is_file()
    assert (run / "policy" / "metrics.jsonl").read_text().strip()
    assert state["results"]["prior"]["pairs"] > 0
    assert (run / "prior" / "checkpoints").is_dir()
    # 6. evaluation ran: every planned episode has a result line, a summary and a video
    results = [json.loads(x) for x in (run / "eval" / "results.jsonl").read_text().splitlines() if x.strip()]
    assert len(results) == state["results"]["eval"]["episodes"] > 0
    assert (run / "eval" / "summary.md").is_file()
    assert list((run / "eval").glob("videos/*.mp4"))
    assert "collect_wood" in (run / "summary.md").read_text()
    # the closing text names the full evaluation as a command that the CLI accepts
    cmd = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("Full evaluation"))
    args = build_cli().parser.parse_args(shlex.split(cmd)[1:])
    assert (args.episodes, args.suite, args.cond_scale) == (60, "crafter-core", 1.0)
    assert Path(args.weights).is_file() and Path(args.mineclip).is_file() and Path(args.prior).is_file()

    # a second call finds every stage done; --finetune then runs online rounds on the weakest
    # skill from the quickstart's policy and compares every instruction before/after
    assert main(["quickstart", "--fast", "--finetune", "--out", str(run), "--quiet"]) == 0
    state2 = json.loads((run / "quickstart.json").read_text())
    assert state2["results"]["generate"] == state["results"]["generate"]
    ft = state2["finetune"]
    assert ft["skill"] in ("make_wood_pickaxe", "place_table", "collect_stone", "place_plant", "eat_cow", "collect_drink")
    online = json.loads((run / "finetune" / "online" / "online.json").read_text())
    assert online["rounds"]["1"]["collect"]["episodes"] == 2 and ft["rounds"] == 1
    # the measured recipe (online_crafter_skill): the demonstrator drives every step it labels
    assert "--preset online_crafter_skill" in (run / "finetune" / "online" / "README.md").read_text()
    played = [json.loads(x) for x in (run / "finetune" / "online" / "rounds" / "001" / "collected.jsonl").read_text().splitlines()]
    assert played and all(x["expert_steps"] == x["labelled"] > 0 for x in played)
    # validated on every instruction, not only the skill trained: the round kept must not cost the others
    assert set(online["initial"]["tasks"]) == set(online["rounds"]["1"]["validate"]["tasks"]) == {r["condition"] for r in results} - {"_unconditioned"}
    stored = EpisodeStore(run / "finetune" / "online" / "store")
    assert stored.episode_ids() and all(stored.open(e).meta["task"] == ft["skill"] for e in stored.episode_ids())
    assert Path(ft["weights"]).is_file() and (run / "finetune" / "compare" / "report.html").is_file()
    after = [json.loads(x) for x in (run / "finetune" / "eval_after" / "results.jsonl").read_text().splitlines() if x.strip()]
    assert len(after) == len(results)  # every instruction again, on the closing evaluation's worlds
    assert {r["seed"] for r in after} == {r["seed"] for r in results}
    out = capsys.readouterr().out
    assert "online rounds on" in out
    # one round fitted: the closing text gives the command that continues the run, and the CLI takes it as written
    more = next(line for line in out.splitlines() if line.startswith("Only 1 round fitted"))
    cmd = shlex.split(more.split("new budget: ", 1)[1])
    args = build_cli().parser.parse_args(cmd[1:])
    assert (args.preset, Path(args.out)) == ("online_crafter_skill", run / "finetune" / "online")
    assert args.init == state2["results"]["policy"]["weights"] and args.store == [str(run / "store")]
    assert "name=quickstart --finetune" in cmd and "train.overrides=[]" in cmd
    assert main([*cmd[1:], "--quiet"]) == 0  # the same settings: the run is continued (here: already complete), not refused
    assert json.loads((run / "finetune" / "online" / "online.json").read_text())["rounds"].keys() == online["rounds"].keys()


def test_aimc_train_preset_crafter_trains_what_the_quickstart_policy_stage_trains(tmp_path):
    """The same first batches, the same losses and the same weights from the same seed."""
    from safetensors.torch import load_file

    from aimc.config import load_config
    from aimc.quickstart import _Display, make_plan, policy_config, stage_embed, stage_embedder, stage_generate, stage_policy
    from aimc.train.config import TrainConfig
    from aimc.train.data import make_sources

    run = tmp_path / "qs"
    frames = 2 * 1024  # two optimizer steps of the crafter preset (64 sequences x 16 frames)
    plan = replace(make_plan(1.0, fast=True), policy_preset="crafter", policy_frames=frames)
    display = _Display(False)
    for stage in (stage_generate, stage_embedder, stage_embed):
        stage(run, plan, display)
    got = stage_policy(run, plan, display, deadline=0.0, reserve_s=0.0)

    # what the docs tell a user to run on the same store, with the frames the quickstart trained
    over = [f"data.stores=[{run / 'store'}]", "model.goal_dim=64", f"runtime.seed={plan.seed}", f"schedule.n_frames={frames}",
            f"schedule.warmup_frames={frames // 30}", "logging.progress=false"]
    assert main(["train", "--preset", "crafter", *over, "--out", str(tmp_path / "cli")]) == 0

    cfg_q, cfg_cli = policy_config(run, plan, 64, frames), load_config(TrainConfig, "crafter", over)
    assert cfg_q == cfg_cli and cfg_cli.data.relabel == "events"
    (tq, vq), (tc, vc) = make_sources(cfg_q), make_sources(cfg_cli)
    for k in (0, 1):
        a, b = tq.batch(k), tc.batch(k)
        assert all(torch_equal(a[n], b[n]) for n in ("img", "goal", "first")) and torch_equal(a["actions"]["action"], b["actions"]["action"])
    assert all(torch_equal(a["goal"], b["goal"]) for a, b in zip(vq(), vc()))

    def losses(d):
        return [(m["step"], m.get("train/loss"), m.get("val/loss")) for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]

    assert losses(run / "policy") == losses(tmp_path / "cli") and got["loss"] == losses(run / "policy")[0][1]
    assert got["frames"] == frames
    wq, wc = load_file(str(run / "policy" / "final.safetensors")), load_file(str(tmp_path / "cli" / "final.safetensors"))
    assert all(torch_equal(wq[k], wc[k]) for k in wq)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(torch.as_tensor(a), torch.as_tensor(b)))


@pytest.mark.parametrize("minutes", [20, 60])
def test_the_closing_table_is_measured_on_at_least_20_episodes_per_condition(minutes):
    from aimc.quickstart import make_plan

    assert make_plan(minutes, fast=False).eval_episodes >= 20


def test_the_closing_evaluation_is_timed_on_this_machine_and_reserved():
    """The policy stage times a few batched evaluation steps with its own architecture and
    reserves the evaluation's expected steps at that speed."""
    from aimc.eval.runner import plan_jobs
    from aimc.quickstart import EVAL_EPISODE_FILL, EVAL_OVERHEAD, eval_seconds, eval_suite, make_plan, time_eval_step
    from aimc.train.config import TrainConfig
    from aimc.config import load_config
    from aimc.train.policy import build_policy

    plan = make_plan(20, fast=False)
    jobs = plan_jobs(eval_suite(plan), plan.eval_episodes)
    assert len(jobs) == 9 * plan.eval_episodes  # 8 instructions + the unconditioned episodes
    steps = sum(j.horizon for j in jobs) * EVAL_EPISODE_FILL
    assert eval_seconds(plan, 0.02) == pytest.approx(5.0 + steps / 8 * 0.02 * EVAL_OVERHEAD)

    cfg = load_config(TrainConfig, "crafter_fast", ["model.goal_dim=8"])
    fast = replace(make_plan(1, fast=True), eval_workers=0)
    step_s = time_eval_step(build_policy(cfg), fast, num_envs=2, steps=2)
    assert 0.0 < step_s < 5.0
