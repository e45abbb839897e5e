"""Every config class raises the same error type, ConfigError, naming the field."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from aimc.config import ConfigError as ReExported
from aimc.errors import ConfigError, UserError

SRC = Path(__file__).resolve().parents[1] / "src" / "aimc"

# (module, class, bad keyword arguments, text the message must hold)
BAD = [
    ("aimc.models.vpt", "PolicyConfig", {"hidsize": 0}, "PolicyConfig.hidsize"),
    ("aimc.models.mineclip", "MineCLIPConfig", {"vision_heads": 7}, "MineCLIPConfig.vision_width"),
    ("aimc.models.prior", "PriorConfig", {"latent_dim": 0}, "PriorConfig.latent_dim"),
    ("aimc.envs.crafter", "CrafterEnvConfig", {"size": 4}, "CrafterEnvConfig.size"),
    ("aimc.envs.demonstrator", "DemonstratorConfig", {"noise": 2.0}, "DemonstratorConfig.noise"),
    ("aimc.envs.minerl", "MineRLConfig", {"frameskip": 0}, "MineRLConfig.frameskip"),
    ("aimc.actions.discrete", "DiscreteActions", {"n": 0}, "DiscreteActions.n"),
    ("aimc.train.mineclip", "MineCLIPTrainConfig", {"steps": 0}, "MineCLIPTrainConfig.steps"),
    ("aimc.train.prior", "PriorTrainConfig", {"epochs": 0}, "PriorTrainConfig.epochs"),
    ("aimc.train.config", "DataConfig", {"T": 0}, "data.T"),
    ("aimc.train.config", "OptimConfig", {"lr": -1.0}, "optim.lr"),
    ("aimc.train.config", "ScheduleConfig", {"n_frames": 0}, "schedule.n_frames"),
    ("aimc.train.config", "LoRAConfig", {"rank": -1}, "lora"),
    ("aimc.train.config", "ModelConfig", {"freeze": ["everything"]}, "model.freeze"),
    ("aimc.train.config", "ValidationConfig", {"every_frames": -1}, "validation.every_frames"),
    ("aimc.train.config", "CheckpointConfig", {"every_frames": -1}, "checkpoint.every_frames"),
    ("aimc.train.config", "LoggingConfig", {"every_frames": 0}, "logging.every_frames"),
    ("aimc.train.config", "RuntimeConfig", {"precision": "fp8"}, "runtime.precision"),
    ("aimc.train.config", "EvalConfig", {"num_envs": 0}, "eval.num_envs"),
    ("aimc.train.config", "TrainConfig", {"__build__": "trunc_t"}, "optim.trunc_t"),
    ("aimc.data.loader", "AugmentConfig", {"hue": 0.9}, "data.augment.hue"),
    ("aimc.data.store", "VideoSettings", {"chunk_frames": 0}, "video.chunk_frames"),
    ("aimc.data.mixture", "MixtureSource", {"store": "s", "weight": -1.0}, "weight"),
    ("aimc.online.config", "OnlineAgentConfig", {"cond_scale": -1.0}, "agent.cond_scale"),
    ("aimc.online.config", "OnlineCollectConfig", {"episodes": 0}, "collect.episodes"),
    ("aimc.online.config", "MixConfig", {"online_share": 0.0}, "mix.online_share"),
    ("aimc.online.config", "OnlineTrainConfig", {"frames_per_round": 0}, "train.frames_per_round"),
    ("aimc.online.config", "OnlineValidateConfig", {"episodes": -1}, "validate.episodes"),
    ("aimc.online.config", "OnlineConfig", {"rounds": 0}, "rounds must be >= 1"),
    ("aimc.online.plan", "RecordConfig", {"episodes": 0}, "record.episodes"),
    ("aimc.online.plan", "StageConfig", {"name": "a b"}, "name must be a short name"),
    ("aimc.online.plan", "ContinualEvalConfig", {"episodes": 0}, "evaluate.episodes"),
    ("aimc.online.plan", "ContinualConfig", {"frames": 0}, "frames must be > 0"),
    ("aimc.rl.config", "RLAgentConfig", {"device": "tpu"}, "agent.device"),
    ("aimc.rl.config", "RLCollectConfig", {"seed": 1_000_000}, "collect.seed"),
    ("aimc.rl.config", "PPOConfig", {"clip": 0.0}, "ppo.clip"),
    ("aimc.rl.config", "RLBCConfig", {"coef": 1.0}, "bc.coef=1.0 needs episode stores"),
    ("aimc.rl.config", "RLEvalConfig", {"seed": 2_000_000}, "eval.seed"),
    ("aimc.rl.config", "RLScheduleConfig", {"updates": 0}, "schedule.updates"),
    ("aimc.rl.config", "RLCheckpointConfig", {"export": [".pt"]}, "checkpoint.export"),
    ("aimc.rl.config", "RLRuntimeConfig", {"precision": "fp16"}, "runtime.precision"),
    ("aimc.rl.config", "RLConfig", {"schedule": __import__("aimc.rl.config").rl.config.RLScheduleConfig(updates=100_000)},
     "training worlds end"),
]


def test_one_error_type():
    assert ReExported is ConfigError and issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("module,name,kwargs,message", BAD, ids=[b[1] for b in BAD])
def test_bad_field_raises_config_error(module, name, kwargs, message):
    cls = getattr(importlib.import_module(module), name)
    if kwargs.get("__build__") == "trunc_t":  # a check across sections: T=16 with trunc_t=5
        from aimc.train.config import DataConfig, OptimConfig

        kwargs = {"data": DataConfig(T=16), "optim": OptimConfig(trunc_t=5)}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        cls(**kwargs)


def test_every_checked_dataclass_is_covered():
    """A dataclass with checks in __post_init__ must be listed above (so its error type is tested)."""
    checked = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(f, ast.FunctionDef) and f.name == "__post_init__"
                and any(isinstance(n, ast.Raise) or (isinstance(n, ast.Call) and getattr(n.func, "id", "") == "_check")
                        for n in ast.walk(f))
                for f in node.body
            ):
                checked.add(node.name)
    assert checked - {b[1] for b in BAD} == set()
