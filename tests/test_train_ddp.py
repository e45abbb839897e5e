"""Two CPU processes with DDP (gloo) train the same weights as one process with the doubled
batch: each rank draws its own half of every global batch, DDP averages the gradients."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_train_support import GOAL_DIM, SyntheticBatches, TinyPolicy, single_thread  # noqa: F401 (autouse fixture)

from aimc.config import load_config
from aimc.train.config import TrainConfig
from aimc.train.policy import train_policy

COMMON = [f"model.goal_dim={GOAL_DIM}", "logging.tensorboard=false", "schedule.n_frames=512",
          "schedule.warmup_frames=64", "checkpoint.every_frames=128", "validation.every_frames=128",
          "checkpoint.snapshot_every_frames=0"]  # every 4 steps of 32 frames (1 x batch 4 or 2 x batch 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    cfg = load_config(TrainConfig, "tiny", COMMON + ["optim.batch_size=2", "runtime.dist_backend=gloo"])
    torch.manual_seed(0)
    src = SyntheticBatches(2, 8, rank=rank, world_size=world)
    # validation: each rank its own half of the val batches; the losses are averaged
    val = SyntheticBatches(2, 8, rank=rank, world_size=world, seed=999)
    train_policy(cfg, run, policy=TinyPolicy(dropout=0.0), train_data=src, val_data=lambda: [val.batch(0), val.batch(1)])


def test_two_process_ddp_equals_one_process_with_doubled_batch(tmp_path):
    # one process, batch 4
    cfg = load_config(TrainConfig, "tiny", COMMON + ["optim.batch_size=4"])
    torch.manual_seed(0)
    val = SyntheticBatches(4, 8, seed=999)
    train_policy(cfg, tmp_path / "one", policy=TinyPolicy(dropout=0.0), train_data=SyntheticBatches(4, 8),
                 val_data=lambda: [val.batch(0), val.batch(1)])
    single = load_file(str(tmp_path / "one" / "final.safetensors"))

    # two processes, batch 2 each
    # spawn, not fork: a fork copies the locks that other threads of this test process (earlier
    # tests' writers and progress tickers) may hold, and a child can then hang forever
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True, start_method="spawn")
    ddp = load_file(str(tmp_path / "two" / "final.safetensors"))

    assert set(ddp) == set(single)
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-5, msg=k)
    torch.manual_seed(0)  # the same initial weights as both runs
    init = TinyPolicy().state_dict()
    moved = sum(not torch.allclose(init[k], single[k]) for k in single)
    assert moved > 5  # training really changed the weights
    # only rank 0 wrote: one metrics file, with the averaged val loss close to the single run's
    import json

    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    v1 = [m["val/loss"] for m in one if "val/loss" in m]
    v2 = [m["val/loss"] for m in two if "val/loss" in m]
    assert len(v1) == len(v2) > 0
    for a, b in zip(v1, v2):
        assert abs(a - b) < 1e-4
