"""Augmentation strengths come from the training config (``data.augment.*``), reach the loader's
augmenter, and are range-checked; the old ``data.augment=true`` shorthand names the new key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train_cli import POLICY, D, make_store
from test_train_support import single_thread  # noqa: F401 (autouse fixture)

from aimc.config import ConfigError, load_config, save_config
from aimc.data.loader import AugmentConfig
from aimc.data.split import make_split
from aimc.train.config import TrainConfig
from aimc.train.data import make_sources

OFF = ["data.augment.contrast=0", "data.augment.saturation=0", "data.augment.hue=0", "data.augment.grayscale_p=0"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = make_store(tmp_path_factory.mktemp("aug") / "store")
    make_split(store, val_fraction=0.25, seed=0)
    return store


def first_batch(store, *overrides: str) -> torch.Tensor:
    cfg = load_config(TrainConfig, "tiny", [f"data.stores=[{store.root}]", f"model.goal_dim={D}", POLICY,
                                            "optim.batch_size=16", "validation.enabled=false", *overrides])
    train, _ = make_sources(cfg)
    return train.batch(0)["img"].float()  # (B, T, H, W, 3)


def brightness_ratios(store, *overrides: str) -> np.ndarray:
    """Mean pixel of each augmented sequence over the same sequence unaugmented."""
    plain = first_batch(store).mean(dim=(1, 2, 3, 4))
    aug = first_batch(store, "data.augment.enabled=true", *overrides).mean(dim=(1, 2, 3, 4))
    return (aug / plain).numpy()


def test_a_brightness_set_in_the_config_reaches_the_augmenter(store):
    none = brightness_ratios(store, "data.augment.brightness=0", *OFF)
    strong = brightness_ratios(store, "data.augment.brightness=0.9", *OFF)
    mild = brightness_ratios(store, "data.augment.brightness=0.1", *OFF)
    assert np.allclose(none, 1.0)  # every strength 0: the frames as recorded
    assert (np.abs(strong - 1) > 0.02).mean() >= 0.8  # every sequence of the batch is augmented, not only the first
    assert strong.std() > 0.15 and strong.min() < 0.7  # factors U[0.1, 1.9] (bright pixels saturate at 255)
    assert 0.0 < mild.std() < 0.08 and np.abs(mild - 1).max() <= 0.1 + 1e-3
    # the same sequences, only the strength differs: the stronger, the further from 1
    assert np.abs(strong - 1).mean() > 4 * np.abs(mild - 1).mean()


def test_enabled_false_ignores_the_strengths(store):
    a = first_batch(store)
    b = first_batch(store, "data.augment.brightness=0.9", "data.augment.grayscale_p=1")
    assert torch.equal(a, b)


def test_grayscale_probability_from_the_config(store):
    img = first_batch(store, "data.augment.enabled=true", "data.augment.brightness=0", "data.augment.contrast=0",
                      "data.augment.saturation=0", "data.augment.hue=0", "data.augment.grayscale_p=1")
    assert (img[..., 0] - img[..., 1]).abs().max() <= 1 and (img[..., 1] - img[..., 2]).abs().max() <= 1


@pytest.mark.parametrize("override, message", [
    ("data.augment.brightness=1.0", r"data.augment.brightness must be in \[0, 1\), got 1.0"),
    ("data.augment.contrast=-0.1", r"data.augment.contrast must be in \[0, 1\)"),
    ("data.augment.saturation=2", r"data.augment.saturation must be in \[0, 1\)"),
    ("data.augment.hue=0.6", r"data.augment.hue must be in \[0, 0.5\]"),
    ("data.augment.grayscale_p=1.5", r"data.augment.grayscale_p must be in \[0, 1\]"),
    ("data.augment.sharpness=0.2", r"unknown config key 'data.augment.sharpness'; valid keys here: brightness"),
])
def test_strengths_out_of_range_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, "tiny", [override])


def test_the_old_shorthand_is_refused_with_the_new_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^the overrides \(KEY=VALUE\): data.augment=true: data.augment is a section "
                                          r"now: write data.augment.enabled=true"):
        load_config(TrainConfig, "tiny", ["data.augment=true"])
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: tiny\ndata:\n  augment: false\n")
    with pytest.raises(ConfigError, match=rf"^{mine}: data.augment=false: .*data.augment.enabled=false"):
        load_config(TrainConfig, mine)


def test_event_batches_are_not_augmented_so_switching_it_on_there_is_an_error():
    with pytest.raises(ConfigError, match=r"data.augment.enabled=true applies to data.relabel=steve1 only"):
        load_config(TrainConfig, "crafter", ["data.augment.enabled=true"])


def test_the_section_is_saved_with_the_run_and_loads_back(tmp_path):
    cfg = load_config(TrainConfig, "tiny", ["data.augment.enabled=true", "data.augment.hue=0.1"])
    assert cfg.data.augment == AugmentConfig(enabled=True, hue=0.1)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(TrainConfig, tmp_path / "config.yaml") == cfg
