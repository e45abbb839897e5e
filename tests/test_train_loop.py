"""The training loop on CPU with tiny models and synthetic batches (seconds each)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_support import single_thread, GOAL_DIM, SyntheticBatches, TinyPolicy, make_item  # noqa: F401 (autouse fixture)

from aimc.config import load_config
from aimc.train.config import ScheduleConfig, TrainConfig
from aimc.train.optim import decay_split, lr_at
from aimc.train.policy import StopTraining, TrainingDiverged, chunk, micro_step, train_policy


def tiny_cfg(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny", [f"model.goal_dim={GOAL_DIM}", "logging.tensorboard=false", *overrides])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_on_learnable_toy_task(tmp_path):
    cfg = tiny_cfg("optim.lr=1e-2", "schedule.n_frames=1120", "schedule.warmup_frames=64",
                   "validation.every_frames=0", "logging.every_frames=32", "checkpoint.every_frames=0",
                   "checkpoint.snapshot_every_frames=0")
    src = SyntheticBatches(4, 8)
    torch.manual_seed(0)
    train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=src, val_data=src.val())
    losses = [m["train/loss"] for m in metrics(tmp_path / "run") if "train/loss" in m]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 1.5  # chance level is ln 5 = 1.61
    assert last < 0.8 * first, (first, last)
    val = [m["val/loss"] for m in metrics(tmp_path / "run") if "val/loss" in m]
    assert val and val[-1] < 0.8 * math.log(5)
    # run dir conventions
    run = tmp_path / "run"
    for name in ("config.yaml", "README.md", "summary.json", "final.weights", "final.safetensors", "best.weights"):
        assert (run / name).is_file(), name
    assert "## Result" in (run / "README.md").read_text()


def test_lr_schedule_matches_original_formula():
    s = ScheduleConfig(n_frames=100_000_000, warmup_frames=10_000_000)
    lr = 4e-5

    def original(f):  # STEVE-1 train.py get_lr, restated
        if f < 10_000_000:
            return lr * f / 10_000_000
        if f > 110_000_000:
            return 0.0
        r = (f - 10_000_000) / (110_000_000 - 10_000_000)
        return 0.5 * (1 + math.cos(math.pi * r)) * lr

    for f in (0, 3072, 5_000_000, 10_000_000, 10_003_072, 35_000_000, 60_000_000, 99_999_744, 100_000_000,
              110_000_000, 120_000_000):
        assert lr_at(f, lr, s) == pytest.approx(original(f), rel=1e-12, abs=1e-20), f
    assert lr_at(0, lr, s) == 0.0
    assert lr_at(10_000_000, lr, s) == pytest.approx(lr)
    assert lr_at(60_000_000, lr, s) == pytest.approx(lr / 2)  # half-way through the cosine
    assert lr_at(100_000_000, lr, s) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 0.9)))


def test_decay_groups_follow_the_original_rule():
    m = TinyPolicy()
    decay, keep = decay_split(m)
    assert "net.img_process.cnn.weight" in decay and "net.img_process.linear.weight" in decay
    assert "net.recurrent_layer.cell.weight_ih" in decay  # not a bias, not LayerNorm/Embedding
    assert "net.final_ln.weight" in keep and "net.final_ln.bias" in keep
    assert all(n.endswith("bias") or n.startswith("net.final_ln") for n in keep)
    assert set(decay) | set(keep) == {n for n, _ in m.named_parameters()}


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_tbptt_chunks_carry_state_and_truncate_gradients():
    torch.manual_seed(0)
    model = TinyPolicy().eval()  # no dropout: exact comparisons
    batch = {k: v for k, v in SyntheticBatches(3, 8).batch(0).items()}
    dev = torch.device("cpu")
    full = chunk(batch, 0, 8, dev)

    # trunc_t == T: one chunk is exactly the full-sequence loss and gradient
    model.zero_grad()
    micro_step(model, model, full, model.initial_state(3), "fp32", dev)
    g_engine = _grads(model)
    model.zero_grad()
    logits, _, _ = model(full["img"], full["goal"], full["first"], model.initial_state(3))
    (-model.log_prob(logits, full["actions"]).mean()).backward()
    g_full = _grads(model)
    for n in g_full:
        torch.testing.assert_close(g_engine[n], g_full[n], rtol=0, atol=0)

    # two chunks of 4: forward with the carried state equals the full-sequence forward
    with torch.no_grad():
        logits_full, _, _ = model(full["img"], full["goal"], full["first"], model.initial_state(3))
        nll_full = -model.log_prob(logits_full, full["actions"])  # (B, 8)
    model.zero_grad()
    state = model.initial_state(3)
    losses = []
    for t0 in (0, 4):
        loss, state = micro_step(model, model, chunk(batch, t0, t0 + 4, dev), state, "fp32", dev, scale=0.5)
        losses.append(loss)
        assert all(not s.requires_grad for s in state)  # detached between chunks
    torch.testing.assert_close(torch.stack(losses), nll_full.reshape(3, 2, 4).mean(dim=(0, 2)))
    g_chunked = _grads(model)
    # ... and the gradient is the truncated one: each chunk's gradient with the incoming state fixed
    model.zero_grad()
    state = model.initial_state(3)
    for t0 in (0, 4):
        c = chunk(batch, t0, t0 + 4, dev)
        lg, _, new = model(c["img"], c["goal"], c["first"], [s.detach() for s in state])
        (-model.log_prob(lg, c["actions"]).mean() * 0.5).backward()
        state = new
    g_trunc = _grads(model)
    for n in g_trunc:
        torch.testing.assert_close(g_chunked[n], g_trunc[n])
    # which is not the full gradient (the recurrence is cut at t=4)
    w = "net.recurrent_layer.cell.weight_hh"
    assert not torch.allclose(g_chunked[w], g_full[w])


def test_nan_loss_stops_with_checkpoint_and_message(tmp_path):
    cfg = tiny_cfg("checkpoint.every_frames=32", "validation.enabled=false")
    src = SyntheticBatches(4, 8, nan_at=3)  # the 4th batch (steps 4) has NaN goals
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 4 .*lower optim.lr"):
        train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=src)
    latest = tmp_path / "run" / "checkpoints" / "latest"
    prog = json.loads((latest / "progress.json").read_text())
    assert prog["step"] == 3  # weights before the bad step, which was not applied
    state = torch.load(latest / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_max_seconds_stops_training_and_exports(tmp_path):
    """A time limit ends the session early with the same outputs as a finished run."""
    cfg = tiny_cfg("schedule.n_frames=1000000000", "schedule.warmup_frames=64", "schedule.max_seconds=1",
                   "validation.enabled=false", "checkpoint.every_frames=0")
    train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=SyntheticBatches(4, 8))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["frames"] < cfg.schedule.n_frames
    assert (tmp_path / "run" / "final.safetensors").is_file()
    with pytest.raises(Exception, match="max_seconds"):
        tiny_cfg("schedule.max_seconds=-1")


def test_grad_norm_warning(tmp_path):
    cfg = tiny_cfg("optim.warn_grad_norm=1e-6", "schedule.n_frames=64", "schedule.warmup_frames=32", "logging.every_frames=32",
                   "validation.enabled=false")
    with pytest.warns(RuntimeWarning, match="gradient norm"):
        train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=SyntheticBatches(4, 8))


def test_frozen_groups_stay_bit_identical(tmp_path):
    cfg = tiny_cfg("model.freeze=[cnn,heads]", "schedule.n_frames=128", "validation.enabled=false")
    torch.manual_seed(0)
    model = TinyPolicy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_policy(cfg, tmp_path / "run", policy=model, train_data=SyntheticBatches(4, 8))
    after = load_file(str(tmp_path / "run" / "final.safetensors"))
    for k, v in before.items():
        same = torch.equal(v, after[k])
        if k.startswith(("net.img_process.", "pi_head.", "value_head.")):
            assert same, f"frozen {k} changed"
        elif k.startswith("net.recurrent_layer.cell.weight"):
            assert not same, f"trainable {k} did not change"


def test_synthetic_items_are_learnable_and_deterministic():
    a, b = make_item(0, 7, 8), make_item(0, 7, 8)
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["actions"]["action"], b["actions"]["action"])
    # the brightest column is the action
    col = a["img"][0].float().mean(dim=(0, 2))[:5].argmax()
    assert int(col) == int(a["actions"]["action"][0])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_train(tmp_path, precision):
    cfg = tiny_cfg(f"runtime.precision={precision}", "schedule.n_frames=96", "schedule.warmup_frames=32",
                   "validation.enabled=false", "logging.every_frames=32")
    torch.manual_seed(0)
    train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=SyntheticBatches(4, 8))
    recs = metrics(tmp_path / "run")
    assert len(recs) == 3 and all(math.isfinite(r["train/loss"]) for r in recs)
    if precision == "fp16":  # the gradient scaler's state is checkpointed for resume
        state = torch.load(tmp_path / "run" / "checkpoints" / "latest" / "state.pt", weights_only=True)
        assert state["scaler"] is not None and state["scaler"]["scale"] > 0


def test_freeze_groups_cover_the_real_policy():
    from aimc.models.vpt import PolicyConfig, STEVE1Policy
    from aimc.train.config import FREEZE_GROUPS
    from aimc.train.optim import group_parameter_names

    p = STEVE1Policy(PolicyConfig.tiny(img_shape=[16, 16, 3], action_heads={"action": 5}))
    groups = {g: set(group_parameter_names(p, g)) for g in FREEZE_GROUPS}
    assert all(groups.values()), {g: len(v) for g, v in groups.items()}
    names = {n for n, _ in p.named_parameters()}
    assert set().union(*groups.values()) == names  # every parameter belongs to a group ...
    assert sum(len(v) for v in groups.values()) == len(names)  # ... exactly one


@pytest.mark.parametrize("override, message", [
    ("optim.trunc_t=3", "must divide data.T"),
    ("model.freeze=[cnn,eyes]", "unknown group"),
    ("data.min_btwn_goals=5", ">= 15"),
    ("checkpoint.export=[.pt]", "unknown format"),
    ("runtime.precision=fp8", "must be one of"),
    ("schedule.warmup_frames=99999999", "below decay_end"),
])
def test_config_errors_name_the_setting(override, message):
    from aimc.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny_cfg(override)


def test_on_validation_sees_every_validation_and_the_result_says_what_was_made(tmp_path):
    # 8 steps of 32 frames; validation after steps 3 and 6 (every 96 frames), then the final one at step 8
    cfg = tiny_cfg("schedule.n_frames=256", "schedule.warmup_frames=64", "validation.every_begin_frames=96",
                   "validation.switch_at_frames=3200", "checkpoint.every_frames=0")
    src = SyntheticBatches(4, 8)
    seen = []
    result = train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=src, val_data=src.val(),
                          on_validation=seen.append)
    assert [(v.step, v.frames) for v in seen] == [(3, 96), (6, 192), (8, 256)]
    logged = [(m["step"], m["val/loss"]) for m in metrics(tmp_path / "run") if "val/loss" in m]
    assert [(v.step, v.val_loss) for v in seen] == logged
    assert result.best_val_loss == min(v.val_loss for v in seen) == seen[-1].best_val_loss
    assert result.frames == 256 and result.steps == 8 and result.seconds > 0 and not result.stopped
    assert result.weights == tmp_path / "run" / "final.weights" and result.weights.is_file()
    assert result.best_weights == tmp_path / "run" / "best.weights" and result.best_weights.is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["frames"] == result.frames and result.last["train/loss"] == summary["last"]["train/loss"]


def test_on_validation_can_stop_the_run_cleanly(tmp_path):
    cfg = tiny_cfg("schedule.n_frames=640", "schedule.warmup_frames=64", "validation.every_begin_frames=64",
                   "validation.switch_at_frames=3200", "checkpoint.every_frames=0")
    src = SyntheticBatches(4, 8)
    seen = []

    def prune(v):
        seen.append(v.step)
        if v.step == 4:
            raise StopTraining("pruned")

    result = train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=src, val_data=src.val(), on_validation=prune)
    assert seen == [2, 4] and result.stopped and result.steps == 4 and result.frames == 128
    assert (tmp_path / "run" / "final.safetensors").is_file()
    prog = json.loads((tmp_path / "run" / "checkpoints" / "latest" / "progress.json").read_text())
    assert prog["step"] == 4  # resumable from where it stopped
