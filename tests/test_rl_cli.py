"""aimc rl from the command line, two processes (torchrun-style, gloo on CPU), the memory pre-flight."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import rl_world

def test_aimc_rl_command(tmp_path, monkeypatch):
    paths = rl_world.setup_world(tmp_path, monkeypatch)
    # the tiny world is registered in this process only: run the command's function in-process
    from aimc.cli import main

    args = ["rl", "--init", paths["init"], "--out", str(tmp_path / "run"), "--quiet", "--preset", rl_world.preset_file(tmp_path),
            *[o for o in rl_world.overrides(paths, "eval.episodes=3", "eval.workers=0", "schedule.updates=2")
              if not o.startswith("init=")]]
    assert main(args) == 0
    run = tmp_path / "run"
    for f in ("README.md", "config.yaml", "updates.jsonl", "episodes.jsonl", "curve.svg", "final.safetensors",
              "final.yaml", "best.safetensors", "metrics.jsonl"):
        assert (run / f).is_file(), f
    rows = [json.loads(x) for x in (run / "updates.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [0, 1]
    # its own evaluation of the best weights on validation worlds, at guidance scales 1 and 0
    ev = json.loads((run / "rl.json").read_text())["eval"]
    assert set(ev["scales"]) == {"1", "0"} and all(set(t) == {"left", "right"} for t in ev["scales"].values())
    assert all(e["n"] == 3 for t in ev["scales"].values() for e in t.values())
    results = [json.loads(x) for x in (run / "eval" / "cs1" / "results.jsonl").read_text().splitlines()]
    assert sorted({r["seed"] for r in results}) == [4_000_000, 4_000_001, 4_000_002]
    assert "## Evaluation of `best.safetensors` on validation worlds" in (run / "README.md").read_text()
    # the same command again with more updates continues the run
    assert main([*args[:-1], "schedule.updates=3"] if args[-1] == "schedule.updates=2" else args + ["schedule.updates=3"]) == 0
    rows = [json.loads(x) for x in (run / "updates.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [0, 1, 2]


def test_wrong_init_is_a_clear_error(tmp_path, capsys):
    from aimc.cli import main

    assert main(["rl", "--init", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "nope.safetensors" in err and "not found" in err, err
    bad = tmp_path / "w.weights"
    bad.write_bytes(b"x")
    assert main(["rl", "--init", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "aimc checkpoint convert" in capsys.readouterr().err


def test_memory_preflight_of_rl_minecraft_on_a_24gb_card():
    from aimc.config import load_config
    from aimc.models.vpt import PolicyConfig, STEVE1Policy
    from aimc.rl.config import RLConfig
    from aimc.rl.preflight import estimate, memory_report

    with torch.device("meta"):  # the 2x policy's shapes without its memory
        policy = STEVE1Policy(PolicyConfig.vpt_2x(mineclip_embed_dim=512))
    cfg = load_config(RLConfig, "rl_minecraft", ["init=x.safetensors"])
    text = memory_report(cfg, policy=policy)
    assert "fits a 24 GB card" in text, text
    e = estimate(cfg, policy)
    assert e["reference_gib"] > 0.5 and e["total_gib"] < 22
    # everything trained, fp32, big minibatches: too much, and the report says what to change
    with torch.device("meta"):
        policy = STEVE1Policy(PolicyConfig.vpt_2x(mineclip_embed_dim=512))
    big = load_config(RLConfig, "rl_minecraft", ["init=x.safetensors", "model.freeze=[]", "ppo.minibatches=2",
                                                 "runtime.precision=fp32"])
    text = memory_report(big, policy=policy)
    assert "does NOT fit" in text and "ppo.minibatches=4" in text and "model.freeze=[cnn]" in text, text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)

    class MP:
        def setitem(self, d, k, v):
            d[k] = v

    from aimc.config import load_config
    from aimc.rl.config import RLConfig
    from aimc.rl.loop import run_rl

    paths = rl_world.setup_world(Path(tmp) / f"worker{rank}", MP())
    paths["init"] = str(Path(tmp) / "rank0" / "init" / "policy.safetensors")  # the same start weights on both ranks
    cfg = load_config(RLConfig, None, rl_world.overrides(paths, "schedule.updates=2", "ppo.lr=3e-3",
                                                                 "runtime.dist_backend=gloo"))
    out = run_rl(cfg, Path(tmp) / "run", progress=False)
    torch.save(out["policy"].state_dict(), Path(tmp) / f"weights{rank}.pt")


@pytest.mark.slow
def test_two_processes_train_one_policy_on_their_own_worlds(tmp_path):
    """torchrun-style data parallel with 2 gloo CPU processes: each rank plays its own half of every
    update's worlds, gradients are all-reduced, both ranks end with the same weights, which moved."""
    # rank 0 writes the start weights before rank 1 reads them: build them here first
    class MP:
        def setitem(self, d, k, v):
            d[k] = v

    rl_world.setup_world(tmp_path / "rank0", MP())
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    w0, w1 = torch.load(tmp_path / "weights0.pt"), torch.load(tmp_path / "weights1.pt")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    from safetensors.torch import load_file

    init = load_file(str(tmp_path / "rank0" / "init" / "policy.safetensors"))
    assert sum(not torch.allclose(init[k], w0[k]) for k in init) > 5
    eps = [json.loads(x) for x in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    for u in (0, 1):  # every world of the update played once, by one rank or the other
        seeds = sorted(e["seed"] for e in eps if e["update"] == u)
        assert seeds == list(range(u * 16, u * 16 + 16))


def test_a_policy_of_another_env_is_refused(tmp_path, monkeypatch):
    from aimc.config import load_config
    from aimc.errors import UserError
    from aimc.rl.config import RLConfig
    from aimc.rl.loop import run_rl

    paths = rl_world.setup_world(tmp_path, monkeypatch)
    over = [o for o in rl_world.overrides(paths) if not o.startswith("collect.suite=")]
    cfg = load_config(RLConfig, None, [*over, "collect.suite=crafter-core"])  # 17 Crafter actions; the policy has 4
    with pytest.raises(UserError, match="action heads"):
        run_rl(cfg, tmp_path / "run", progress=False)
