"""``aimc train`` end to end on a synthetic episode store with the real tiny policy and the
real loader, resume from the command line, and the pre-flight error for each bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_train_support import single_thread  # noqa: F401 (autouse fixture)
from torch import nn

from aimc.checkpoints.vpt import load_policy, save_model_file, save_policy
from aimc.cli import main
from aimc.config import load_config
from aimc.data.split import make_split
from aimc.data.store import EpisodeStore, VideoSettings
from aimc.errors import UserError
from aimc.models.vpt import PolicyConfig, STEVE1Policy
from aimc.train.config import TrainConfig
from aimc.train.preflight import PreflightError, check_memory, check_static, estimate_memory_gib
from aimc.train.policy import train_policy

D = 4  # goal-embedding size of the synthetic store
POLICY = "model.policy={img_shape: [16, 16, 3], action_heads: {action: 5}}"


def make_store(root, n_episodes=4, length=48, embed=True) -> EpisodeStore:
    store = EpisodeStore(root, video=VideoSettings(crf=0, chunk_frames=16), embed_dtype="float32")
    rng = np.random.default_rng(0)
    for e in range(n_episodes):
        frames = rng.integers(0, 255, (length, 16, 16, 3), dtype=np.uint8)
        actions = {"action": (np.arange(length) + e) % 5}
        emb = rng.normal(size=(length, D)).astype(np.float32)
        store.write_episode(f"ep{e}", frames, actions, {"source": "test"},
                            embeddings=emb if embed else None, embed_valid=(np.arange(length) >= 15) if embed else None)
    return store


def test_aimc_train_end_to_end_and_resume(tmp_path, capsys):
    store = make_store(tmp_path / "store")
    make_split(store, val_fraction=0.25, seed=0)
    run = tmp_path / "run"
    base = [f"data.stores=[{store.root}]", f"model.goal_dim={D}", POLICY, "logging.tensorboard=true",
            "validation.max_batches=1"]
    rc = main(["train", "--preset", "tiny", *base, "schedule.n_frames=160", "schedule.warmup_frames=32",
               "--out", str(run)])
    assert rc == 0
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["frames"] == 160 and any("val/loss" in r for r in recs)
    assert any(p.name.startswith("events.") for p in (run / "tb").iterdir())
    # the exported weights load with the policy loader (official layout and safetensors)
    for name in ("final.safetensors", "best.safetensors"):
        p = load_policy(run / name)
        assert isinstance(p, STEVE1Policy) and p.cfg.mineclip_embed_dim == D
    readme = (run / "README.md").read_text()
    assert "## Data as loaded" in readme and "episodes" in readme and "## Result" in readme
    snaps = sorted((run / "checkpoints").glob("snapshot_*"))  # tiny: every 640 frames -> none at 160
    assert not snaps
    cfg_saved = (run / "config.yaml").read_text()
    assert "n_frames: 160" in cfg_saved
    # starting again in the same directory is refused; --resume continues (here: longer)
    with pytest.raises(PreflightError, match="--resume"):
        train_policy(load_config(TrainConfig, "tiny", base), run)
    assert main(["train", "--resume", str(run), "schedule.n_frames=224"]) == 0
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["frames"] == 224 and recs[-1]["step"] == 7
    assert "Resumed" in (run / "README.md").read_text()


def _cfg(*over: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny", [f"model.goal_dim={D}", POLICY, *over])


def test_preflight_reports_each_bad_input(tmp_path):
    run = tmp_path / "run"
    make_store(tmp_path / "store", n_episodes=1, length=24)
    cases = [
        (_cfg(f"model.init={tmp_path / 'nope.safetensors'}", "data.stores=[x]"), "nope.safetensors: file not found"),
        (_cfg("data.stores=[]"), "data.stores is empty"),
        (_cfg(f"data.stores=[{tmp_path / 'missing'}]"), "folder not found"),
    ]
    (tmp_path / "w.weights").write_bytes(b"x")
    cases.append((_cfg(f"model.init={tmp_path / 'w.weights'}", "data.stores=[x]"), "need their .model file"))
    (tmp_path / "w.bin").write_bytes(b"x")
    cases.append((_cfg(f"model.init={tmp_path / 'w.bin'}", "data.stores=[x]"), "unknown weights format"))
    for cfg, msg in cases:
        with pytest.raises(PreflightError, match=msg):
            check_static(cfg, run, resume=False)

    empty = EpisodeStore(tmp_path / "empty")
    empty.root.mkdir()
    with pytest.raises(PreflightError, match="holds no episodes"):
        check_static(_cfg(f"data.stores=[{empty.root}]"), run, resume=False)
    check_static(_cfg(f"data.stores=[{tmp_path / 'store'}:train]"), run, resume=False)  # "path:split" form
    raw = make_store(tmp_path / "raw", n_episodes=1, length=24, embed=False)
    with pytest.raises(PreflightError, match="no goal embeddings.*aimc data embed"):
        check_static(_cfg(f"data.stores=[{raw.root}]"), run, resume=False)
    # output directory: not writable (a file where a folder should be), resume without a run
    (tmp_path / "file").write_text("x")
    with pytest.raises(PreflightError, match="cannot write there"):
        check_static(_cfg(f"data.stores=[{raw.root}]", "model.goal_dim=0"), tmp_path / "file" / "run", resume=False)
    with pytest.raises(PreflightError, match="not a training run directory"):
        check_static(_cfg(), tmp_path / "nothing", resume=True)
    # several problems are reported together
    with pytest.raises(PreflightError) as e:
        check_static(_cfg(f"model.init={tmp_path / 'nope.safetensors'}", "data.stores=[]"), run, resume=False)
    assert len(e.value.problems) == 2


def test_weights_that_do_not_fit_the_config(tmp_path):
    small = STEVE1Policy(PolicyConfig.tiny(img_shape=[16, 16, 3], action_heads={"action": 5}, mineclip_embed_dim=D))
    save_policy(small, tmp_path / "p.weights")
    save_model_file(PolicyConfig.tiny(img_shape=[16, 16, 3], hidsize=48, action_heads={"action": 5}), tmp_path / "p.model")
    store = make_store(tmp_path / "store", n_episodes=1, length=48)  # the data is checked first: it must do
    cfg = _cfg(f"data.stores=[{store.root}]", f"model.init={tmp_path / 'p.weights'}",
               f"model.model_file={tmp_path / 'p.model'}", "model.policy={}", "validation.enabled=false")
    with pytest.raises(UserError, match="do not fit"):
        train_policy(cfg, tmp_path / "run")


class _FakePolicy(nn.Module):
    """Parameter count and config of the VPT 2x policy without allocating it."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = PolicyConfig.vpt_2x()
        self.w = nn.Parameter(torch.empty(249_500_000, device="meta"))


def test_memory_estimate_matches_the_recorded_peaks_and_names_the_fix():
    fake = _FakePolicy()
    est = estimate_memory_gib(load_config(TrainConfig, "steve1_from_vpt"), fake, "bf16")
    assert est["total_gib"] == pytest.approx(40.8, rel=0.05)  # original code, H100 (issue 5)
    est = estimate_memory_gib(load_config(TrainConfig, "finetune"), fake, "bf16")
    assert est["total_gib"] == pytest.approx(28.5, rel=0.05)
    # aimc's own peaks on an H100 (benchmarks/train_step.py): checkpointing, fp32
    est24 = estimate_memory_gib(load_config(TrainConfig, "finetune_24gb"), fake, "bf16")
    assert est24["total_gib"] == pytest.approx(8.27, rel=0.1)
    est32 = estimate_memory_gib(load_config(TrainConfig, "steve1_from_vpt"), fake, "fp32")
    assert est32["total_gib"] == pytest.approx(51.33, rel=0.05)
    with pytest.raises(PreflightError, match=r"optim.batch_size=4 optim.grad_accum=4.*activation_checkpointing=true"):
        check_memory(load_config(TrainConfig, "finetune"), fake, torch.device("cuda"), "bf16", free_bytes=23 * 2**30)
    check_memory(load_config(TrainConfig, "finetune_24gb"), fake, torch.device("cuda"), "bf16", free_bytes=23 * 2**30)


def test_interrupted_run_with_the_real_loader_resumes_exactly(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from aimc.train import data as train_data

    store = make_store(tmp_path / "store")
    args = ["--preset", "tiny", f"data.stores=[{store.root}]", f"model.goal_dim={D}", POLICY, "validation.enabled=false",
            "logging.tensorboard=false", "schedule.n_frames=192", "schedule.warmup_frames=32", "checkpoint.every_frames=32",
            "data.T=12", "optim.trunc_t=4"]  # 3 chunks per sequence, 2 per step: stops mid-sequence
    assert main(["train", *args, "--out", str(tmp_path / "straight")]) == 0
    ref = load_file(str(tmp_path / "straight" / "final.safetensors"))

    real_batch = train_data.LoaderBatches.batch

    def failing(self, index):
        if index == 3:
            raise KeyboardInterrupt  # as if stopped by Ctrl-C while fetching the 4th batch
        return real_batch(self, index)

    monkeypatch.setattr(train_data.LoaderBatches, "batch", failing)
    assert main(["train", *args, "--out", str(tmp_path / "stopped")]) == 130
    monkeypatch.setattr(train_data.LoaderBatches, "batch", real_batch)
    assert main(["train", "--resume", str(tmp_path / "stopped")]) == 0
    got = load_file(str(tmp_path / "stopped" / "final.safetensors"))
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_unconditioned_vpt_weights_start_a_goal_conditioned_policy(tmp_path):
    from aimc.train.policy import build_policy

    vpt = STEVE1Policy(PolicyConfig.tiny(img_shape=[16, 16, 3], action_heads={"action": 5}, mineclip_embed_dim=0))
    save_policy(vpt, tmp_path / "vpt.weights", model_path=tmp_path / "vpt.model")
    cfg = _cfg(f"model.init={tmp_path / 'vpt.weights'}", f"model.model_file={tmp_path / 'vpt.model'}", "model.policy={}")
    with pytest.warns(UserWarning, match="no goal layer"):
        p = build_policy(cfg)
    assert p.cfg.mineclip_embed_dim == D and p.net.mineclip_embed_linear is not None
    sd = vpt.state_dict()
    for k, v in p.state_dict().items():
        if k in sd:
            assert torch.equal(v, sd[k]), k
