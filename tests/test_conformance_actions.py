"""Action space, contractor conversion and resizing against the original code's outputs.

Every input and expected value comes from the case's actions.npz / actions.json /
contractor_sample.jsonl / resize.npz; all comparisons are exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import case_params, require_case

from aimc.actions import contractor, image, minecraft

MARKER = "tiny.model"
CASES = case_params(MARKER)


def _npz(case: Path | None, name: str) -> dict[str, np.ndarray]:
    with np.load(require_case(case, MARKER) / name) as f:
        return {k: f[k] for k in f.files}


def _json(case: Path | None) -> dict:
    return json.loads((require_case(case, MARKER) / "actions.json").read_text())


@pytest.mark.parametrize("case", CASES)
def test_button_orders(case):
    a, j = _npz(case, "actions.npz"), _json(case)
    assert minecraft.ENV_BUTTONS == tuple(a["env_button_keys"])
    assert minecraft.POLICY_BUTTONS == tuple(a["policy_button_order"]) == tuple(j["policy_button_order"])
    assert set(j["env_action_keys"]) == set(minecraft.ENV_BUTTONS) | {"camera"}
    assert {k: tuple(v) for k, v in j["button_groups"].items()} == minecraft.BUTTON_GROUPS
    kw = j["action_transformer_kwargs"]
    assert (kw["camera_maxval"], kw["camera_binsize"], kw["camera_mu"]) == (
        minecraft.CAMERA_MAXVAL,
        minecraft.CAMERA_BINSIZE,
        minecraft.CAMERA_MU,
    )
    assert kw["camera_quantization_scheme"] == "mu_law"
    assert j["n_camera_bins"] == minecraft.N_CAMERA_BINS
    assert j["n_button_combinations"] == minecraft.N_JOINT_BUTTONS
    assert j["n_camera_combinations"] == minecraft.N_JOINT_CAMERA
    assert j["camera_null_joint_index"] == minecraft.NULL_JOINT_CAMERA
    assert j["null_joint_buttons_index"] == minecraft.NULL_JOINT_BUTTONS


@pytest.mark.parametrize("case", CASES)
def test_lookup_tables(case):
    a = _npz(case, "actions.npz")
    np.testing.assert_array_equal(minecraft.button_index_to_factored(), a["BUTTON_IDX_TO_FACTORED"])
    np.testing.assert_array_equal(minecraft.button_index_to_camera_off(), a["BUTTON_IDX_TO_CAMERA_META_OFF"])
    np.testing.assert_array_equal(minecraft.camera_index_to_factored(), a["CAMERA_IDX_TO_FACTORED"])


@pytest.mark.parametrize("dtype", ["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_env_cases_every_stage(case, dtype):
    """env -> factored -> joint -> factored -> env, float64 and float32 camera input."""
    a = _npz(case, "actions.npz")
    camera = a["env_camera_f64"].astype(np.float64 if dtype == "f64" else np.float32)
    p = dtype + "_"

    buttons, bins = minecraft.env_to_factored(a["env_buttons"], camera)
    np.testing.assert_array_equal(buttons, a[p + "factored_buttons"])
    np.testing.assert_array_equal(bins, a[p + "factored_camera_bins"])
    np.testing.assert_array_equal(minecraft.quantize_camera(camera), a[p + "factored_camera_bins"])

    jb, jc = minecraft.factored_to_joint(buttons, bins)
    np.testing.assert_array_equal(jb, a[p + "joint_buttons"].reshape(-1))
    np.testing.assert_array_equal(jc, a[p + "joint_camera"].reshape(-1))

    pol = minecraft.env_to_policy(a["env_buttons"], camera)
    np.testing.assert_array_equal(pol["buttons"], jb)
    np.testing.assert_array_equal(pol["camera"], jc)
    assert pol["buttons"].dtype == pol["camera"].dtype == np.int64

    back_buttons, back_bins = minecraft.joint_to_factored(jb, jc)
    np.testing.assert_array_equal(back_buttons, a[p + "back_factored_buttons"])
    np.testing.assert_array_equal(back_bins, a[p + "back_factored_camera_bins"])

    env, env_camera = minecraft.policy_to_env(jb, jc)
    assert env_camera.dtype == np.float64
    np.testing.assert_array_equal(env_camera, a[p + "back_env_camera"])  # exact, float64
    np.testing.assert_array_equal(minecraft.env_buttons_array(env, minecraft.POLICY_BUTTONS), a[p + "back_env_buttons"])
    for k in minecraft.DROPPED_ENV_BUTTONS:
        np.testing.assert_array_equal(env[k], 0)


@pytest.mark.parametrize("case", CASES)
def test_env_cases_as_dicts(case):
    """The readable cases in actions.json, fed as MineRL-style dicts one by one."""
    for c in _json(case)["env_cases"]:
        action = dict(c["input"])
        for dtype, key in ((np.float64, "factored_camera_bins"), (np.float32, "factored_camera_bins_float32_input")):
            action["camera"] = np.asarray(c["input"]["camera"], dtype=dtype)
            buttons, bins = minecraft.env_to_factored(action)
            assert bins.tolist() == c[key], c["description"]
        action["camera"] = np.asarray(c["input"]["camera"], dtype=np.float64)
        buttons, bins = minecraft.env_to_factored(action)
        assert buttons.tolist() == c["factored_buttons"], c["description"]
        pol = minecraft.env_to_policy(action)
        assert (int(pol["buttons"]), int(pol["camera"])) == (c["joint_buttons"], c["joint_camera"]), c["description"]
        env, cam = minecraft.policy_to_env(pol["buttons"], pol["camera"])
        assert cam.tolist() == c["back_env_camera"], c["description"]
        assert {k: int(env[k]) for k in c["back_env_buttons"]} == c["back_env_buttons"], c["description"]


@pytest.mark.parametrize("case", CASES)
def test_policy_cases(case):
    a = _npz(case, "actions.npz")
    jb, jc = a["pol_joint_buttons"].reshape(-1), a["pol_joint_camera"].reshape(-1)
    buttons, bins = minecraft.joint_to_factored(jb, jc)
    np.testing.assert_array_equal(buttons, a["pol_factored_buttons"])
    np.testing.assert_array_equal(bins, a["pol_factored_camera_bins"])
    env, camera = minecraft.policy_to_env(jb, jc)
    np.testing.assert_array_equal(camera, a["pol_env_camera"])
    np.testing.assert_array_equal(minecraft.env_buttons_array(env, minecraft.POLICY_BUTTONS), a["pol_env_buttons"])
    np.testing.assert_array_equal(minecraft.dequantize_camera(bins), a["pol_env_camera"])
    # batched over a leading (B, T) shape as well
    env2, camera2 = minecraft.policy_to_env(jb.reshape(-1, 1), jc.reshape(-1, 1))
    np.testing.assert_array_equal(camera2[:, 0], a["pol_env_camera"])


@pytest.mark.parametrize("case", CASES)
def test_contractor_lines(case):
    """Per-line json_action_to_env_action on the raw jsonl lines."""
    root, a, j = require_case(case, MARKER), _npz(case, "actions.npz"), _json(case)
    records = [r for _, r in contractor.read_jsonl(root / "contractor_sample.jsonl")]
    assert len(records) == len(a["contractor_line_is_null"]) == len(j["contractor"]["lines"])
    buttons, camera, is_null = contractor.records_to_env_actions(records)
    np.testing.assert_array_equal(buttons, a["contractor_line_env_buttons"])
    np.testing.assert_array_equal(camera, a["contractor_line_env_camera"])
    assert camera.dtype == np.int64
    np.testing.assert_array_equal(is_null, a["contractor_line_is_null"])
    assert j["contractor"]["camera_scaler_deg_per_px"] == contractor.CAMERA_DEG_PER_PIXEL
    for line in j["contractor"]["lines"]:
        action, null = contractor.json_action_to_env_action(json.loads(line["jsonl"]))
        expected = line["line_only_env_action"]
        assert null == line["line_only_is_null"], line["description"]
        assert action["camera"].tolist() == expected["camera"], line["description"]
        assert {k: action[k] for k in expected if k != "camera"} == {
            k: v for k, v in expected.items() if k != "camera"
        }, line["description"]


@pytest.mark.parametrize("case", CASES)
def test_contractor_episode(case):
    """load_episode: kept lines, env actions, agent frames (cursor, BGR->RGB, resize), MineCLIP frames, joint actions."""
    root, a, j = require_case(case, MARKER), _npz(case, "actions.npz"), _json(case)
    video = a["contractor_video_bgr"]  # (L, H, W, 3) BGR
    mineclip = a["contractor_frames_mineclip_chw"]
    ep = contractor.load_contractor_episode(
        iter(video), root / "contractor_sample.jsonl", mineclip_size=mineclip.shape[2:]
    )
    np.testing.assert_array_equal(ep.line_index, a["contractor_kept_line_index"])
    assert ep.line_index.tolist() == [e["line_index"] for e in j["contractor"]["episode"]]
    np.testing.assert_array_equal(minecraft.env_buttons_array(ep.env_actions), a["contractor_env_buttons"])
    np.testing.assert_array_equal(ep.env_actions["camera"], a["contractor_env_camera"])
    assert ep.env_actions["camera"].dtype == np.int64
    np.testing.assert_array_equal(ep.frames, a["contractor_frames_agent_rgb"])
    np.testing.assert_array_equal(ep.frames_mineclip, mineclip)
    np.testing.assert_array_equal(ep.policy_actions["buttons"], a["contractor_agent_joint_buttons"])
    np.testing.assert_array_equal(ep.policy_actions["camera"], a["contractor_agent_joint_camera"])
    assert ep.stats["lines"] == len(video) and ep.stats["kept"] == len(ep.line_index)
    # the shipped cursor is the one the original overlays
    np.testing.assert_array_equal(contractor.load_cursor(), a["contractor_cursor_bgra"])
    # the episode's env actions as dicts, as recorded in actions.json
    for k, e in enumerate(j["contractor"]["episode"]):
        for key, value in e["env_action"].items():
            got = ep.env_actions[key][k]
            assert (got.tolist() if key == "camera" else int(got)) == value, (e["line_index"], key)


@pytest.mark.parametrize("case", CASES)
def test_contractor_stuck_attack_edits(case):
    """The lines after load_episode's edits (stuck attack removed) give the kept env actions line by line."""
    j, a = _json(case), _npz(case, "actions.npz")
    edited = [json.loads(s) if isinstance(s, str) else s for s in j["contractor"]["jsonl_after_load_episode"]]
    buttons, camera, _ = contractor.records_to_env_actions(edited)
    kept = a["contractor_kept_line_index"]
    # hotbar-field changes are added on top by load_episode; compare everything else
    hot = [minecraft.ENV_BUTTONS.index(f"hotbar.{i}") for i in range(1, 10)]
    other = [i for i in range(len(minecraft.ENV_BUTTONS)) if i not in hot]
    np.testing.assert_array_equal(buttons[kept][:, other], a["contractor_env_buttons"][:, other])
    np.testing.assert_array_equal(camera[kept], a["contractor_env_camera"])


@pytest.mark.parametrize("case", CASES)
def test_resize(case):
    r = _npz(case, "resize.npz")
    src = r["src_rgb"]  # (N, H, W, 3)
    size = r["agent_128"].shape[1]
    np.testing.assert_array_equal(image.resize_to_agent(src, size), r["agent_128"])
    hw = r["mineclip_chw"].shape[2:]
    np.testing.assert_array_equal(image.resize_for_mineclip(src, hw).transpose(0, 3, 1, 2), r["mineclip_chw"])
