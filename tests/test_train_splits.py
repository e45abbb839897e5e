"""Validation you can trust: a split too small for one batch, or a missing validation split, stops
a run before it trains (naming the split, the store and the sizes); ``validation.enabled=false`` is
the one way to train without validation."""

from __future__ import annotations

import pytest
import torch
from test_crafter_goals import store_with_events
from test_train_cli import POLICY, D, make_store
from test_train_support import GOAL_DIM, SyntheticBatches, TinyPolicy, single_thread  # noqa: F401 (autouse fixture)

from aimc.config import ConfigError, load_config
from aimc.data.split import make_split
from aimc.errors import UserError
from aimc.train.config import TrainConfig
from aimc.train.data import make_sources
from aimc.train.distributed import DistInfo
from aimc.train.policy import train_policy, validate


def cfg_for(store, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny", [f"data.stores=[{store.root}]", f"model.goal_dim={D}", POLICY,
                                             "logging.tensorboard=false", *overrides])


@pytest.fixture
def split_store(tmp_path):
    """4 episodes of 48 frames (33 usable each), one of them in the val split."""
    store = make_store(tmp_path / "store")
    make_split(store, val_fraction=0.25, seed=0)
    return store


def test_a_val_split_smaller_than_one_batch_is_refused_before_training(split_store, tmp_path):
    # val: 33 usable frames = 4 sequences of T=8; batch 8 needs 8 (train: 3 x 26 windows, enough)
    cfg = cfg_for(split_store, "optim.batch_size=8")
    with pytest.raises(UserError) as e:
        train_policy(cfg, tmp_path / "run")
    msg = str(e.value)
    assert "the validation split 'val' is too small for one batch" in msg and str(split_store.root) in msg
    assert "4 sequence(s)" in msg and "optim.batch_size=8 = 8" in msg and "validation.enabled=false" in msg
    assert "optim.batch_size=4 fits" in msg
    assert not (tmp_path / "run").exists()  # said before anything was written
    # the same split fills a batch of 4 ... but not one on each of 2 processes
    make_sources(cfg_for(split_store, "optim.batch_size=4"))
    with pytest.raises(UserError, match=r"optim.batch_size=4 x 2 processes = 8"):
        make_sources(cfg_for(split_store, "optim.batch_size=4"), rank=0, world_size=2)
    # every_nth thins the val sequences: what is left must still fill a batch
    with pytest.raises(UserError, match=r"validation.every_nth=2 keeps 2 of them.*validation.every_nth=1"):
        make_sources(cfg_for(split_store, "optim.batch_size=4", "validation.every_nth=2"))


def test_a_train_split_smaller_than_one_batch_is_refused(split_store):
    # train: 3 episodes x (48 - 8 - 15 + 1) = 78 distinct windows; a batch of 80 cannot be filled
    with pytest.raises(UserError) as e:
        make_sources(cfg_for(split_store, "optim.batch_size=80", "validation.enabled=false"))
    msg = str(e.value)
    assert "the training split 'train' is too small for one batch" in msg and str(split_store.root) in msg
    assert "78 distinct window(s)" in msg and "optim.batch_size=80 = 80" in msg and "data.relabel=steve1" in msg
    # a longer T leaves no usable episode at all: the split and the store are named
    with pytest.raises(UserError, match=r"training split 'train' of .*store: no episode is long enough"):
        make_sources(cfg_for(split_store, "data.T=40", "optim.trunc_t=4", "validation.enabled=false"))


def test_event_batches_are_checked_the_same_way(tmp_path):
    root = store_with_events(tmp_path / "events", n=120, d=4, episodes=3)
    from aimc.data.store import EpisodeStore

    make_split(EpisodeStore(root), val_fraction=0.3, seed=0)  # 1 val episode, 2 train episodes
    over = [f"data.stores=[{root}]", "model.goal_dim=4", "data.T=16", "optim.trunc_t=16"]
    # 105 windows of 16 frames in the val episode, 210 in the train ones
    with pytest.raises(UserError, match=r"the validation split 'val' is too small.*105 distinct window.*"
                                        r"data.relabel=events.*optim.batch_size=128 = 128"):
        make_sources(load_config(TrainConfig, "crafter", [*over, "optim.batch_size=128"]))
    with pytest.raises(UserError, match=r"the training split 'train' is too small.*210 distinct window"):
        make_sources(load_config(TrainConfig, "crafter", [*over, "optim.batch_size=256"]))
    _, val = make_sources(load_config(TrainConfig, "crafter", [*over, "optim.batch_size=64"]))
    assert [b["first"].shape for b in val()] == [(64, 16)] * 4


def test_a_missing_val_split_stops_a_fine_tune_unless_validation_is_switched_off(tmp_path):
    from aimc.checkpoints.vpt import save_policy
    from aimc.train.policy import build_policy

    store = make_store(tmp_path / "store")  # no splits.yaml: train = every episode, no val split
    init = tmp_path / "start.safetensors"
    save_policy(build_policy(cfg_for(store)), init)
    ft = [f"model.init={init}", "schedule.n_frames=64", "schedule.warmup_frames=32"]
    with pytest.raises(UserError) as e:
        train_policy(cfg_for(store, *ft), tmp_path / "refused")
    msg = str(e.value)
    assert msg.startswith(f"validation split 'val' of {store.root}: ") and "no splits.yaml" in msg
    assert "A fine-tune (model.init is set) needs it most" in msg
    assert f"aimc data split {store.root} --val-fraction 0.1" in msg and "validation.enabled=false" in msg
    assert not (tmp_path / "refused").exists()
    # a split file without a val split: the same
    make_split(store, val_fraction=0.0, seed=0)
    with pytest.raises(UserError, match=r"validation split 'val' of .*no episode is long enough"):
        train_policy(cfg_for(store, *ft), tmp_path / "refused")
    # a run from scratch is refused too, without the fine-tune sentence
    with pytest.raises(UserError) as e:
        make_sources(cfg_for(store))
    assert "validation split 'val'" in str(e.value) and "fine-tune" not in str(e.value)

    # switched off explicitly: trains, no val split read, the run's README says so
    result = train_policy(cfg_for(store, *ft, "validation.enabled=false"), tmp_path / "run")
    assert result.frames == 64 and result.best_weights is None and result.best_val_loss == float("inf")
    readme = (tmp_path / "run" / "README.md").read_text()
    assert "validation off (validation.enabled=false)" in readme and "- validation: off" in readme


def test_an_empty_val_split_name_is_refused_with_the_switch_to_use():
    with pytest.raises(ConfigError, match=r"data.val_split is empty: to train without validation set "
                                          r"validation.enabled=false"):
        load_config(TrainConfig, "tiny", ["data.val_split="])


def test_validation_on_needs_val_batches_from_the_caller_too(tmp_path):
    cfg = load_config(TrainConfig, "tiny", [f"model.goal_dim={GOAL_DIM}", "logging.tensorboard=false",
                                            "schedule.n_frames=64", "schedule.warmup_frames=32"])
    with pytest.raises(UserError, match=r"validation.enabled is true but no validation batches were given"):
        train_policy(cfg, tmp_path / "run", policy=TinyPolicy(), train_data=SyntheticBatches(4, 8))
    assert not (tmp_path / "run").exists()


def test_validation_without_a_single_batch_is_an_error_not_a_zero_loss():
    cfg = load_config(TrainConfig, "tiny", [f"model.goal_dim={GOAL_DIM}"])
    with pytest.raises(UserError, match="validation got no batch"):
        validate(TinyPolicy(), [], cfg, torch.device("cpu"), "fp32", DistInfo())
    loss = validate(TinyPolicy(), SyntheticBatches(4, 8).val(1)(), cfg, torch.device("cpu"), "fp32", DistInfo())
    assert loss > 1.0  # about ln 5 for an untrained policy


def test_the_val_batches_cover_the_split_and_max_batches_caps_them(tmp_path):
    store = make_store(tmp_path / "store", n_episodes=6, length=79)  # 64 usable frames per episode
    make_split(store, val_fraction=0.5, seed=0)  # 3 val episodes: 192 usable frames = 24 sequences of 8
    _, val = make_sources(cfg_for(store, "validation.max_batches=0"))  # (tiny caps it at 2)
    assert len(list(val())) == 6  # 24 sequences / batch 4
    _, val = make_sources(cfg_for(store, "validation.max_batches=0", "validation.every_nth=2"))
    assert len(list(val())) == 3  # every 2nd: 12 sequences
    _, val = make_sources(cfg_for(store, "validation.max_batches=2"))
    assert len(list(val())) == 2
