from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aimc.config import ConfigError, load_config, parse_overrides, save_config, to_dict


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Cfg:
    name: str = "x"
    steps: int = 10
    use_amp: bool = False
    optim: Optim = field(default_factory=Optim)
    tags: list[str] = field(default_factory=list)
    init: str | None = None


def test_overrides_are_typed_and_nested():
    cfg = load_config(Cfg, None, ["optim.lr=1e-5", "steps=20", "use_amp=true", "tags=[a,b]", "init=null"])
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.steps == 20 and cfg.use_amp is True and cfg.tags == ["a", "b"] and cfg.init is None
    assert cfg.optim.betas == (0.9, 0.999)  # untouched nested default kept


def test_unknown_key_names_key_and_valid_keys():
    with pytest.raises(ConfigError, match=r"optim\.lrr.*valid keys here: betas, lr"):
        load_config(Cfg, None, ["optim.lrr=1"])


def test_bad_types_are_errors():
    with pytest.raises(ConfigError, match="steps"):
        load_config(Cfg, None, ["steps=abc"])
    with pytest.raises(ConfigError, match="steps"):
        load_config(Cfg, None, ["steps=1.5"])
    with pytest.raises(ConfigError, match="use_amp"):
        load_config(Cfg, None, ["use_amp=maybe"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["steps"])


def test_preset_file_with_base_and_roundtrip(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("steps: 5\noptim:\n  lr: 0.1\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\n")
    cfg = load_config(Cfg, tmp_path / "child.yaml", ["optim.lr=0.2"])
    assert (cfg.name, cfg.steps, cfg.optim.lr) == ("child", 5, 0.2)
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(Cfg, tmp_path / "out.yaml")
    assert to_dict(again) == to_dict(cfg)


def test_missing_preset_lists_available():
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, "no_such_preset_anywhere")
