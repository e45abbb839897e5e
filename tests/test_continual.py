"""``aimc continual``: plans of stages with replay and L2-SP, the forgetting matrix, resumable runs.

Tiny models on the built-in world: the batches of a stage hold exactly the configured share of
earlier data, stages chain their weights, the matrix's numbers come from the evaluations, the L2-SP
gradient is alpha (theta - theta0), a stopped run continues where it stopped, plan errors name the
file and the field, and ``aimc compare`` draws the matrices as heatmaps in a real browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from aimc.data.store import EpisodeStore
from aimc.errors import ConfigError, UserError

from test_agent import TINY_EMBED, make_bundle


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def marked_store(root: Path, action: int, n: int = 48, episodes: int = 3, seed: int = 0) -> Path:
    """Demonstration-like data whose every action is ``action`` (so a batch row tells its store):
    64x64 frames, 16-d goals, one captioned event per episode; one episode is the val split."""
    from aimc.data.split import make_split

    store = EpisodeStore(root)
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        emb = rng.standard_normal((n, TINY_EMBED)).astype(np.float32)
        anns = [{"start": 10, "end": 31, "text": "collect wood", "lang": "en", "event": "collect_wood"}]
        store.write_episode(f"ep{e}", rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8),
                            {"action": np.full(n, action, np.int64)}, {"fps": 10}, annotations=anns, embeddings=emb,
                            embed_valid=np.arange(n) >= 15)
    make_split(store, val_frames=1, seed=0)
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    return {"base": marked_store(root / "base", 0, seed=1), "a": marked_store(root / "a", 5, seed=2),
            "b": marked_store(root / "b", 9, seed=3)}


def write_plan(path: Path, bundle: Path, stores: dict[str, Path], **extra) -> Path:
    import yaml

    plan = {
        "name": "tiny", "init": str(bundle), "preset": "crafter_fast", "frames": 128, "overrides": ["checkpoint.every_frames=64"],
        "agent": {"device": "cpu"},
        "evaluate": {"episodes": 1, "max_steps": 8, "num_envs": 4, "workers": 0},
        "stages": [{"name": "wood", "stores": [str(stores["a"])], "tasks": ["collect_wood"]},
                   {"name": "sapling", "stores": [str(stores["b"])], "tasks": ["collect_sapling", "collect_wood"]}],
        **extra,
    }
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


# ---------------------------------------------------------------------------- the data mix


def _sources(plan, run: Path, j: int):
    from aimc.online.continual import stage_sources, stage_train_config

    tcfg = stage_train_config(plan, run, j, str(plan.init), TINY_EMBED)
    return tcfg, stage_sources(plan, run, j, tcfg)


def _rows(batch) -> list[int]:
    """The store of every sequence of a batch (its constant action)."""
    acts = batch["actions"]["action"]
    assert all(len(set(row.tolist())) == 1 for row in acts)
    return [int(row[0]) for row in acts]


def test_replay_0_and_0_5_give_the_configured_mix_of_every_batch(tmp_path, bundle, stores):
    from aimc.online.plan import load_plan

    path = write_plan(tmp_path / "plan.yaml", bundle, stores)
    plan0 = load_plan(path)
    tcfg, (src, val) = _sources(plan0, tmp_path, 2)
    assert tcfg.optim.batch_size == 4 and val is not None
    for k in range(8):  # replay 0: stage 2 trains on its own data only
        assert _rows(src.batch(k)) == [9, 9, 9, 9]
    plan5 = load_plan(path, ["replay=0.5"])
    _, (src, _) = _sources(plan5, tmp_path, 2)
    assert [(n, k) for n, _, k in src.parts] == [("stage 2 sapling", 2), ("stage 1 wood", 2)]
    for k in range(8):  # exactly half of every batch from stage 1's data
        assert _rows(src.batch(k)) == [9, 9, 5, 5]
    _, (src, _) = _sources(plan5, tmp_path, 1)  # stage 1 has no earlier data (no base_stores): its own fills it
    assert _rows(src.batch(0)) == [5, 5, 5, 5]
    # with base_stores: the replay share is split equally over base and each earlier stage
    planb = load_plan(path, ["replay=0.5", f"base_stores=[{stores['base']}]", "overrides=[optim.batch_size=8]"])
    tcfg, (src, _) = _sources(planb, tmp_path, 2)
    assert [(n, k) for n, _, k in src.parts] == [("stage 2 sapling", 4), ("base", 2), ("stage 1 wood", 2)]
    for k in range(6):
        assert _rows(src.batch(k)) == [9] * 4 + [0] * 2 + [5] * 2
    # the stage's saved config lists the same shares as data.weights
    assert tcfg.data.stores == [str(stores["b"]), str(stores["base"]), str(stores["a"])]
    assert tcfg.data.weights == pytest.approx([0.5, 0.25, 0.25])


# ---------------------------------------------------------------------------- the matrix


def _ev(rates: dict[str, tuple[int, int]]) -> dict:
    from aimc.eval.metrics import rate

    return {"tasks": {t: {"instructed": rate(s, n).to_dict(), "unconditioned": None} for t, (s, n) in rates.items()},
            "seconds": 1.0, "dir": "x"}


def test_forgetting_matrix_numbers_and_intervals_from_known_results(tmp_path, bundle, stores):
    from aimc.eval.metrics import difference, rate
    from aimc.eval.report import forgetting_markdown
    from aimc.online.continual import forgetting_matrix
    from aimc.online.plan import load_plan

    plan = load_plan(write_plan(tmp_path / "plan.yaml", bundle, stores))
    state = {"stages": {"0": {"eval": _ev({"collect_wood": (2, 10), "collect_sapling": (1, 10)})},
                        "1": {"eval": _ev({"collect_wood": (9, 10), "collect_sapling": (2, 10)})},
                        "2": {"eval": _ev({"collect_wood": (3, 10), "collect_sapling": (8, 10)})}}}
    m = forgetting_matrix(plan, state)
    assert m["tasks"] == ["collect_wood", "collect_sapling"]
    assert [c["name"] for c in m["columns"]] == ["init", "wood", "sapling"]
    assert [c["successes"] for c in m["cells"]["collect_wood"]] == [2, 9, 3]
    w = rate(9, 10)
    assert m["cells"]["collect_wood"][1]["low"] == pytest.approx(w.low) and m["cells"]["collect_wood"][1]["high"] == pytest.approx(w.high)
    assert m["taught_by"] == {"collect_wood": 1, "collect_sapling": 2}
    # wood: best earlier = after stage 1 (0.9), final 0.3: forgetting 0.6 with Newcombe's interval
    f = m["forgetting"]["collect_wood"]
    ref = difference(rate(9, 10), rate(3, 10))
    assert (f["best_stage"], f["final_stage"]) == (1, 2)
    assert f["diff"] == pytest.approx(0.6) and f["low"] == pytest.approx(ref.low) and f["high"] == pytest.approx(ref.high)
    assert f["low"] > 0  # more than the noise of 10 episodes
    # sapling: learned in the last stage, nothing forgotten (best earlier 0.2 < final 0.8)
    assert m["forgetting"]["collect_sapling"]["diff"] == pytest.approx(-0.6)
    assert m["gain"]["collect_sapling"]["diff"] == pytest.approx(0.6)  # after stage 2 - after stage 1
    assert m["gain"]["collect_wood"]["diff"] == pytest.approx(0.7)  # after stage 1 - init
    md = forgetting_markdown(m)
    assert "| collect_wood | 0.20 [0.06, 0.51] (2/10) | **0.90 [0.60, 0.98] (9/10)** | 0.30 [0.11, 0.60] (3/10) |" in md
    assert "+0.60 [" in md and "* (stage 1 -> 2)" in md
    # a run stopped after stage 1: the last column is not there yet, forgetting is measured so far
    del state["stages"]["2"]
    m = forgetting_matrix(plan, state)
    assert m["cells"]["collect_wood"][2] is None and m["forgetting"]["collect_wood"]["final_stage"] == 1
    assert "…" in forgetting_markdown(m)


# ---------------------------------------------------------------------------- L2-SP


def test_l2sp_gradient_is_alpha_times_the_distance_to_the_start(bundle):
    """One optimizer step with L2-SP (SGD, lr 1) moves the weights by exactly the gradient of
    loss + alpha/2 ||theta - theta0||^2, computed by autograd."""
    from aimc.checkpoints.vpt import load_policy
    from aimc.config import load_config
    from aimc.train import distributed as D
    from aimc.train.config import TrainConfig
    from aimc.train.policy import bc_loss, optimizer_step, setup_learner

    alpha = 0.3
    cfg = load_config(TrainConfig, "crafter_fast", [f"model.init={bundle}", f"model.goal_dim={TINY_EMBED}",
                                                     "model.policy={}", f"optim.l2sp={alpha}", "optim.max_grad_norm=0"])
    policy = load_policy(bundle)
    learner, _ = setup_learner(cfg, policy, D.DistInfo(), torch.device("cpu"))
    start = load_file(str(bundle))
    assert set(learner.anchor) == {n for n, p in policy.named_parameters() if p.requires_grad}
    assert all(torch.equal(learner.anchor[n], start[n]) for n in learner.anchor)  # theta0 = model.init's weights
    torch.manual_seed(0)
    with torch.no_grad():  # move away from theta0, as after some training
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    learner.optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    rng = np.random.default_rng(0)
    c = {"img": torch.as_tensor(rng.integers(0, 255, (2, 8, 64, 64, 3), dtype=np.uint8)),
         "goal": torch.randn(2, 8, TINY_EMBED), "actions": {"action": torch.as_tensor(rng.integers(0, 17, (2, 8)))},
         "first": torch.zeros(2, 8, dtype=torch.bool)}

    # the reference: autograd of the whole objective
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    policy.zero_grad()
    loss, _ = bc_loss(policy, policy, c, policy.initial_state(2))
    params = dict(policy.named_parameters())
    penalty = sum(((params[n] - a) ** 2).sum() for n, a in learner.anchor.items()) * alpha / 2
    (loss + penalty).backward()
    expected = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for n, p in policy.named_parameters()}
    policy.zero_grad()

    class One:
        def next(self):
            return c, policy.initial_state(2)

        def done(self, state):
            pass

    optimizer_step(learner, One(), grad_accum=1)
    for n, p in policy.named_parameters():
        torch.testing.assert_close(before[n] - p.detach(), expected[n], rtol=1e-4, atol=1e-6)
    # and the pull is really there: without L2-SP the step differs by alpha (theta - theta0)
    n0 = "net.lastlayer.weight" if "net.lastlayer.weight" in before else next(iter(before))
    assert (expected[n0] - alpha * (before[n0] - learner.anchor[n0])).abs().max() < expected[n0].abs().max()


def test_l2sp_settings_errors(tmp_path, bundle):
    from aimc.config import load_config
    from aimc.train.config import TrainConfig

    with pytest.raises(ConfigError, match="optim.l2sp=0.1 pulls the weights toward.*set model.init"):
        load_config(TrainConfig, "crafter_fast", ["optim.l2sp=0.1"])
    with pytest.raises(ConfigError, match="optim.l2sp must be >= 0"):
        load_config(TrainConfig, "crafter_fast", ["optim.l2sp=-1"])
    with pytest.raises(ConfigError, match="optim.l2sp_anchor must be aimc .safetensors"):
        load_config(TrainConfig, "crafter_fast", ["optim.l2sp=1", "optim.l2sp_anchor=x.weights"])


# ---------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def straight(tmp_path_factory, bundle, stores) -> Path:
    """A 2-stage plan with replay 0.5 and L2-SP, in one go through the command line."""
    from aimc.cli import main

    root = tmp_path_factory.mktemp("straight")
    plan = write_plan(root / "plan.yaml", bundle, stores)
    run = root / "run"
    assert main(["continual", str(plan), "--out", str(run), "--quiet", "replay=0.5", "l2sp=0.01"]) == 0
    return run


def test_continual_run_chains_stages_and_writes_the_matrix(straight, bundle, stores):
    import yaml

    state = json.loads((straight / "continual.json").read_text())
    assert sorted(state["stages"]) == ["0", "1", "2"]
    s1, s2 = state["stages"]["1"], state["stages"]["2"]
    # each stage starts from the previous stage's weights
    c1 = yaml.safe_load((straight / "stages" / "01-wood" / "train" / "config.yaml").read_text())
    c2 = yaml.safe_load((straight / "stages" / "02-sapling" / "train" / "config.yaml").read_text())
    assert c1["model"]["init"] == str(bundle) and c2["model"]["init"] == s1["train"]["weights"]
    assert s1["train"]["weights"] == str(straight / "stages" / "01-wood" / "train" / "final.safetensors")
    # L2-SP anchored at the plan's init in both stages (not at the previous stage)
    assert c1["optim"]["l2sp"] == c2["optim"]["l2sp"] == 0.01 and c2["optim"]["l2sp_anchor"] == str(bundle)
    assert s2["train"]["l2sp_distance"] is not None and s2["train"]["frames"] == 128
    assert s2["train"]["parts"] == [{"name": "stage 2 sapling", "sequences": 2}, {"name": "stage 1 wood", "sequences": 2}]
    final = load_file(str(straight / "final.safetensors"))
    last = load_file(s2["train"]["weights"])
    assert all(torch.equal(final[k], last[k]) for k in last)
    # every stage's tasks evaluated after every stage (stage 0 = init), each an aimc eval folder
    for j, name in enumerate(["00-init", "01-wood", "02-sapling"]):
        summary = json.loads((straight / "eval" / name / "summary.json").read_text())
        assert sorted(summary["tasks"]) == ["collect_sapling", "collect_wood"]
        assert summary["tasks"]["collect_wood"]["unconditioned"]["n"] == 1  # instructed and unconditioned
        assert state["stages"][str(j)]["eval"]["tasks"]["collect_wood"]["instructed"] == summary["tasks"]["collect_wood"]["instructed"]
    m = json.loads((straight / "forgetting.json").read_text())
    assert all(c is not None for row in m["cells"].values() for c in row) and len(m["columns"]) == 3
    readme = (straight / "README.md").read_text()
    assert "| 0 init |" in readme and "\n| 1 wood | a | 0.5 | 0.01 | 128 |" in readme and "\n| 2 sapling | b |" in readme
    assert "## Forgetting matrix" in readme and (straight / "forgetting.md").read_text().startswith("# Forgetting matrix")


def _run(run: Path, plan_path: Path, phases: list | None = None, stop_at: tuple | None = None):
    from aimc.online.continual import run_continual
    from aimc.online.plan import load_plan

    def on_phase(j: int, phase: str) -> None:
        if phases is not None:
            phases.append((j, phase))
        if (j, phase) == stop_at:
            raise KeyboardInterrupt  # as Ctrl-C between two phases

    return run_continual(load_plan(plan_path, ["replay=0.5", "l2sp=0.01"]), run, progress=False, on_phase=on_phase)


@pytest.mark.parametrize("stop_at,rest", [((2, "train"), [(2, "train"), (2, "eval")]), ((1, "eval"), [(1, "eval"), (2, "train"), (2, "eval")])])
def test_a_stopped_run_continues_without_repeating_or_losing_a_stage(tmp_path, bundle, stores, straight, stop_at, rest):
    plan = write_plan(tmp_path / "plan.yaml", bundle, stores)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _run(run, plan, stop_at=stop_at)
    phases: list = []
    state = _run(run, plan, phases)
    assert phases == rest
    assert not state["stages"]["2"]["train"]["resumed"]
    a, b = json.loads((run / "forgetting.json").read_text()), json.loads((straight / "forgetting.json").read_text())
    assert a["cells"] == b["cells"]  # the same evaluations: nothing lost, nothing repeated
    x, y = load_file(str(run / "final.safetensors")), load_file(str(straight / "final.safetensors"))
    assert all(torch.equal(x[k], y[k]) for k in y)
    for name in ("00-init", "01-wood", "02-sapling"):
        lines = (run / "eval" / name / "results.jsonl").read_text().splitlines()
        assert len(lines) == 2 + 1  # crafter-core is a matrix suite: 2 instructed + 1 unconditioned episode, each once


def test_more_evaluation_episodes_extend_every_evaluation_and_nothing_else(tmp_path, bundle, stores, straight):
    from aimc.online.continual import run_continual
    from aimc.online.plan import load_plan

    plan = write_plan(tmp_path / "plan.yaml", bundle, stores)
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    before = json.loads((run / "forgetting.json").read_text())
    phases: list = []
    run_continual(load_plan(plan, ["replay=0.5", "l2sp=0.01", "evaluate.episodes=2"]), run, progress=False,
                  on_phase=lambda j, ph: phases.append((j, ph)))
    assert phases == [(0, "eval"), (1, "eval"), (2, "eval")]  # no stage trained again
    after = json.loads((run / "forgetting.json").read_text())
    assert {c["n"] for row in after["cells"].values() for c in row} == {2} and after["episodes"] == 2
    for name in ("00-init", "01-wood", "02-sapling"):  # the first episode kept, the second added
        rows = [json.loads(x) for x in (run / "eval" / name / "results.jsonl").read_text().splitlines()]
        assert len(rows) == 2 * 3 and sorted({r["seed"] for r in rows}) == [1_000_000, 1_000_001]
    first = {t: [c["successes"] for c in row] for t, row in before["cells"].items()}
    assert all(a <= b for t in first for a, b in zip(first[t], [c["successes"] for c in after["cells"][t]]))
    with pytest.raises(UserError, match="evaluate.episodes=2; it may rise.*but not fall to 1"):
        run_continual(load_plan(plan, ["replay=0.5", "l2sp=0.01"]), run, progress=False)
    with pytest.raises(UserError, match="started with replay=0.5, now 0.0"):
        run_continual(load_plan(plan, ["l2sp=0.01", "evaluate.episodes=2"]), run, progress=False)


def test_a_run_stopped_inside_training_resumes_that_training(tmp_path, bundle, stores, straight, monkeypatch):
    from aimc.train.data import SplitBatches

    plan = write_plan(tmp_path / "plan.yaml", bundle, stores)
    run = tmp_path / "run"
    real = SplitBatches.batch
    seen: list = []

    def batch(self, index):
        seen.append(index)
        if self.parts[0][0] == "stage 2 sapling" and index == 1 and not getattr(SplitBatches, "_stopped", False):
            SplitBatches._stopped = True
            raise KeyboardInterrupt  # after stage 2's first checkpoint (64 frames)
        return real(self, index)

    monkeypatch.setattr(SplitBatches, "batch", batch)
    with pytest.raises(KeyboardInterrupt):
        _run(run, plan)
    assert (run / "stages" / "02-sapling" / "train" / "checkpoints" / "latest" / "state.pt").is_file()
    phases: list = []
    state = _run(run, plan, phases)
    assert phases == [(2, "train"), (2, "eval")] and state["stages"]["2"]["train"]["resumed"]
    x, y = load_file(str(run / "final.safetensors")), load_file(str(straight / "final.safetensors"))
    assert all(torch.equal(x[k], y[k]) for k in y)  # the resumed training ends where the straight one did


def test_plan_errors_name_the_file_the_field_and_the_fix(tmp_path, bundle, stores, capsys):
    from aimc.cli import main
    from aimc.online.plan import load_plan

    path = write_plan(tmp_path / "plan.yaml", bundle, stores)
    with pytest.raises(ConfigError, match=r"unknown config key 'stages\[0\]\.tsks'.*typo\.yaml"):
        p = tmp_path / "typo.yaml"
        p.write_text(path.read_text().replace("tasks:", "tsks:", 1))
        load_plan(p)
    with pytest.raises(ConfigError, match="stage wood: give its data as stores.*or as record"):
        load_plan(path, ['stages=[{name: wood, tasks: [collect_wood]}]'])
    with pytest.raises(ConfigError, match="data.stores is set by aimc continual"):
        load_plan(path, ["overrides=[data.stores=x]"])
    with pytest.raises(ConfigError, match="replay must be in"):
        load_plan(path, ["replay=1"])
    with pytest.raises(ConfigError, match="reserved test worlds"):
        load_plan(path, ["evaluate.seed=3000000"])
    with pytest.raises(ConfigError, match="record.seed: recordings are made on training worlds"):
        load_plan(path, ['stages=[{name: s, record: {task: collect_stone, seed: 999999, episodes: 4}, tasks: [collect_stone]}]'])
    with pytest.raises(ConfigError, match="no such file.*crafter_three_skills"):
        load_plan(tmp_path / "nope.yaml")
    out = str(tmp_path / "run")
    cases = [
        ([f"stages=[{{name: a, stores: [{tmp_path / 'missing'}], tasks: [collect_wood]}}]"], "stage a: stores"),
        (['stages=[{name: a, record: {task: fly}, tasks: [collect_wood]}]'], "record.task 'fly' is not a skill"),
        ([f"stages=[{{name: a, stores: [{stores['a']}], tasks: [swim]}}]"], "no task 'swim'"),
        (["evaluate.seed=500"], "evaluation worlds 500-500"),
        (["overrides=[optim.lr=-1]"], "optim.lr must be > 0"),
    ]
    for extra, message in cases:
        assert main(["continual", str(path), "--out", out, "--quiet", *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["continual", str(path), "--out", out, "--quiet", "--init", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors" in capsys.readouterr().err


def test_the_shipped_plan_loads_with_replay_and_records_its_skills():
    from aimc.online.plan import load_plan

    plan = load_plan("crafter_three_skills", ["replay=0.5", "base_stores=[runs/quickstart/store]"])
    assert [s.record.task for s in plan.stages] == ["collect_stone", "collect_drink", "eat_cow"]
    assert [plan.stage_replay(j) for j in (1, 2, 3)] == [0.5] * 3 and plan.preset == "crafter_finetune"
    assert [plan.record_seed(j) for j in (1, 2, 3)] == [600_000, 610_000, 620_000]


# ---------------------------------------------------------------------------- the report


def test_compare_draws_the_matrices_as_heatmaps_in_chromium(tmp_path, straight):
    from aimc.cli import main

    from test_compare_report import render_in_chromium

    other = tmp_path / "other"
    shutil.copytree(straight, other, ignore=shutil.ignore_patterns("stages", "tb"))
    m = json.loads((other / "forgetting.json").read_text())
    m["cells"]["collect_wood"][2] = None  # as a run still going
    (other / "forgetting.json").write_text(json.dumps(m))
    out = tmp_path / "report"
    assert main(["compare", str(straight), str(other), "--out", str(out), "--names", "replay,other"]) == 0
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert "## Forgetting matrix: replay" in md and "## Forgetting matrix: other" in md
    dom, img = render_in_chromium(out / "report.html", tmp_path, height=1200)
    assert dom.count('class="heatmap"') == 2
    cells = dom.count('<rect class="cell"')
    assert cells == 2 * 2 * 3  # 2 runs x 2 tasks x 3 columns (stage 0, 1, 2)
    assert dom.count("data-rate=") == cells - 1 and "not yet" in dom
    assert "Forgetting per task" in dom and html.count("<svg") == 2
    # the cells are painted: colours of the scale (red for 0 ... green for 1) are on the screen
    from aimc.eval.report import _heat_colour

    rates = {float(x) for x in __import__("re").findall(r'data-rate="([0-9.]+)"', dom)}
    colours = {_heat_colour(r) for r in rates}
    for c in colours:
        rgb = tuple(int(c[i:i + 2], 16) for i in (1, 3, 5))
        assert (np.abs(img.astype(int) - rgb).sum(-1) < 10).sum() > 500, c
