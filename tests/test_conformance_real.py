"""Real files found in the wild, against the original code's outputs.

Two case types (see each case folder's README.md):

* ``expected_models.json`` next to official VPT ``.model`` files: the policy built from
  :func:`load_model_file` has exactly the original's state-dict keys and shapes, parameter
  count and architecture. Built on the meta device, so large (2x, 3x) files cost nothing.
* ``expected_contractor.npz`` next to real contractor ``.jsonl`` action logs: the episode
  loader, fed in-memory frames whose colour encodes the line index, keeps exactly the
  original's lines and gives exactly its env actions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import case_params, require_case

from aimc.actions.contractor import load_contractor_episode
from aimc.actions.minecraft import ENV_BUTTONS
from aimc.checkpoints.vpt import inspect_file, load_model_file
from aimc.models.vpt import STEVE1Policy

MODELS = "expected_models.json"
CONTRACTOR = "expected_contractor.npz"


def _model_entries(case: Path | None) -> list[tuple[str, dict]]:
    case = require_case(case, MODELS)
    entries = json.loads((case / MODELS).read_text())
    assert entries, f"{case / MODELS} names no .model file"
    return sorted(entries.items())


def _meta_state_dict(cfg) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return STEVE1Policy(cfg).state_dict()


@pytest.mark.parametrize("case", case_params(MODELS))
def test_real_model_files_build_the_original_network(case):
    for name, want in _model_entries(case):
        path = require_case(case, MODELS) / name
        if "sha256" in want:  # the file is the one the expectations were recorded from
            assert hashlib.sha256(path.read_bytes()).hexdigest() == want["sha256"], name
        cfg = load_model_file(path)
        assert (cfg.hidsize, cfg.attention_heads, cfg.impala_width) == (
            want["hidsize"], want["attention_heads"], want["impala_width"]
        ), name
        assert cfg.temperature == want["temperature"] and isinstance(cfg.temperature, float), name

        vpt = _meta_state_dict(dataclasses.replace(cfg, mineclip_embed_dim=0))
        shapes = {k: list(v.shape) for k, v in vpt.items()}
        assert shapes == want["vpt_state_dict_shapes"], name
        assert len(vpt) == want["vpt_n_tensors"], name
        assert sum(v.numel() for v in vpt.values()) == want["vpt_params"], name

        steve1 = _meta_state_dict(dataclasses.replace(cfg, mineclip_embed_dim=512))
        assert sum(v.numel() for v in steve1.values()) == want["steve1_params_with_512d_goal"], name


@pytest.mark.parametrize("case", case_params(MODELS))
def test_real_model_files_inspect(case):
    for name, want in _model_entries(case):
        info = inspect_file(require_case(case, MODELS) / name)
        arch = info["architecture"]
        assert (arch["hidsize"], arch["attention_heads"], arch["impala_width"], arch["temperature"]) == (
            want["hidsize"], want["attention_heads"], want["impala_width"], want["temperature"]
        )
        assert info["parameters"]["vpt"] == want["vpt_params"]
        assert info["parameters"]["steve1_with_512d_goal"] == want["steve1_params_with_512d_goal"]
        assert "extra_args" in info["ignored"], "the gym3 spaces are named as ignored"


# ---------------------------------------------------------------------------- contractor


def _line_frames(n: int, height: int = 360, width: int = 640):
    """Frame i: uniform BGR (i % 256, i // 256, 77), as the case README defines."""
    for i in range(n):
        frame = np.empty((height, width, 3), np.uint8)
        frame[...] = (i % 256, i // 256, 77)
        yield frame


def _records(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _logs(case: Path | None) -> tuple[Path, list[Path], dict[str, np.ndarray]]:
    case = require_case(case, CONTRACTOR)
    with np.load(case / CONTRACTOR) as f:
        expected = {k: f[k] for k in f.files}
    logs = sorted(case.glob("*.jsonl"))
    named = {k.split("__")[0] for k in expected}
    assert named and named <= {p.stem for p in logs}, f"{case}: expectations for missing logs {named - {p.stem for p in logs}}"
    return case, [p for p in logs if p.stem in named], expected


@pytest.mark.parametrize("case", case_params(CONTRACTOR))
def test_real_contractor_logs_convert_as_the_original(case):
    case, logs, expected = _logs(case)
    for log in logs:
        stem = log.stem
        ep = load_contractor_episode(_line_frames(_records(log)), log)
        np.testing.assert_array_equal(ep.line_index, expected[f"{stem}__kept_line_index"], err_msg=stem)
        keys = {k.split("__env_", 1)[1] for k in expected if k.startswith(f"{stem}__env_")}
        assert keys == set(ENV_BUTTONS) | {"camera"}, f"{stem}: {sorted(keys ^ (set(ENV_BUTTONS) | {'camera'}))}"
        for key in sorted(keys):
            want = expected[f"{stem}__env_{key}"]
            got = ep.env_actions[key]
            assert got.dtype == want.dtype or key != "camera", f"{stem}: camera dtype {got.dtype} != {want.dtype}"
            np.testing.assert_array_equal(got, want, err_msg=f"{stem}: {key}")
        # each kept frame is the frame of its own line (colour read back: G*256 + B, RGB order here)
        rgb = np.median(ep.frames.reshape(len(ep.frames), -1, 3), axis=1).astype(np.int64)
        np.testing.assert_array_equal(rgb[:, 1] * 256 + rgb[:, 2], ep.line_index, err_msg=f"{stem}: frames")
        assert ep.stats["lines"] == _records(log) and ep.stats["missing_frames"] == 0


@pytest.mark.parametrize("case", case_params(CONTRACTOR))
def test_real_contractor_policy_actions_follow_env_actions(case):
    """The policy's joint actions are the conversion of exactly those env actions."""
    from aimc.actions.minecraft import env_to_policy

    case, logs, expected = _logs(case)
    for log in logs:
        stem = log.stem
        ep = load_contractor_episode(_line_frames(_records(log)), log)
        buttons = np.stack([expected[f"{stem}__env_{k}"] for k in ENV_BUTTONS], axis=1)
        want = env_to_policy(buttons, expected[f"{stem}__env_camera"])
        for head in ("buttons", "camera"):
            np.testing.assert_array_equal(ep.policy_actions[head], want[head], err_msg=f"{stem}: {head}")
