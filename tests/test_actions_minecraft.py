"""Properties of the Minecraft action space (fixture-free): round trips, rules, errors."""

from __future__ import annotations

import numpy as np
import pytest

from aimc.actions import minecraft as m


def _canonical(jb: np.ndarray, jc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return m.factored_to_joint(*m.joint_to_factored(jb, jc))


def test_every_joint_button_round_trips_through_env():
    """All 8641 button combos x a few cameras: joint -> env -> joint gives the canonical pair."""
    jb = np.repeat(np.arange(m.N_JOINT_BUTTONS), 3)
    jc = np.tile(np.array([m.NULL_JOINT_CAMERA, 0, 73]), m.N_JOINT_BUTTONS)
    env, camera = m.policy_to_env(jb, jc)
    back = m.env_to_policy(env, camera)
    cb, cc = _canonical(jb, jc)
    np.testing.assert_array_equal(back["buttons"], cb)
    np.testing.assert_array_equal(back["camera"], cc)
    # canonical pairs are fixed points, and every button index is reachable unchanged
    np.testing.assert_array_equal(_canonical(cb, cc)[0], cb)
    camera_on = ~m.button_index_to_camera_off()
    keeps = (jc != m.NULL_JOINT_CAMERA) == camera_on[jb]
    keeps[jb == m.INVENTORY_JOINT] = jc[jb == m.INVENTORY_JOINT] == m.NULL_JOINT_CAMERA
    np.testing.assert_array_equal(cb[keeps], jb[keeps])
    np.testing.assert_array_equal(cc[keeps], jc[keeps])


def test_every_camera_bin_round_trips():
    bins = np.stack(np.meshgrid(np.arange(11), np.arange(11), indexing="ij"), -1).reshape(-1, 2)
    np.testing.assert_array_equal(m.quantize_camera(m.dequantize_camera(bins)), bins)
    np.testing.assert_array_equal(m.quantize_camera(m.dequantize_camera(bins).astype(np.float32)), bins)
    assert m.dequantize_camera(np.array([5, 5])).tolist() == [0.0, 0.0]


def test_quantizer_is_monotonic_and_clipped():
    x = np.linspace(-200, 200, 4001)
    bins = m.quantize_camera(np.stack([x, -x], -1))
    assert np.all(np.diff(bins[:, 0]) >= 0) and np.all(np.diff(bins[:, 1]) <= 0)
    assert bins.min() == 0 and bins.max() == 10
    assert m.quantize_camera(np.array([[0, 0]])).dtype == np.int64  # integer input works (contractor data)


def test_group_rules():
    def press(*names: str) -> np.ndarray:
        b = np.zeros(20, np.int64)
        for n in names:
            b[m.POLICY_BUTTONS.index(n)] = 1
        return b

    null = np.array([5, 5])
    j = lambda *n, cam=null: tuple(int(v) for v in m.factored_to_joint(press(*n), cam))  # noqa: E731
    assert j() == (0, 60)
    assert j("forward", "back") == j()
    assert j("left", "right", "attack") == j("attack")
    assert j("sprint", "sneak") == j("sneak")
    assert j("hotbar.1", "hotbar.5") == j("hotbar.5")
    assert j("inventory", "forward", cam=np.array([7, 2])) == (m.INVENTORY_JOINT, 60)
    assert j(cam=np.array([5, 6])) == (1, 61)  # camera group on, lowest digit
    # joint -> factored for inventory keeps the camera head's output
    buttons, bins = m.joint_to_factored(np.array(m.INVENTORY_JOINT), np.array(3))
    assert buttons.tolist() == press("inventory").tolist() and bins.tolist() == [0, 3]
    # a combo with camera "none" nulls the camera
    _, bins = m.joint_to_factored(np.array(0), np.array(3))
    assert bins.tolist() == [5, 5]


def test_batched_leading_shapes():
    rng = np.random.default_rng(0)
    jb = rng.integers(0, m.N_JOINT_BUTTONS, size=(4, 7))
    jc = rng.integers(0, m.N_JOINT_CAMERA, size=(4, 7))
    env, camera = m.policy_to_env(jb, jc)
    assert camera.shape == (4, 7, 2) and env["attack"].shape == (4, 7) and set(env) == set(m.ENV_BUTTONS)
    flat_env, flat_cam = m.policy_to_env(jb.reshape(-1), jc.reshape(-1))
    np.testing.assert_array_equal(camera.reshape(-1, 2), flat_cam)
    pol = m.env_to_policy(env, camera)
    assert pol["buttons"].shape == (4, 7)
    # array form in ENV_BUTTONS order equals dict form
    arr = m.env_buttons_array(env)
    np.testing.assert_array_equal(m.env_to_policy(arr, camera)["buttons"], pol["buttons"])
    only_policy, _ = m.policy_to_env(jb, jc, include_dropped=False)
    assert tuple(only_policy) == m.POLICY_BUTTONS


def test_dict_input_defaults_and_camera_key():
    pol = m.env_to_policy({"forward": np.array([1]), "camera": np.array([[0.0, 3.0]])})
    assert pol["buttons"].tolist() == [289] and pol["camera"].tolist() == [m.quantize_camera(np.array([0.0, 3.0]))[1] + 55]


@pytest.mark.parametrize(
    "call",
    [
        lambda: m.joint_to_factored(np.array([8641]), np.array([0])),
        lambda: m.joint_to_factored(np.array([0]), np.array([121])),
        lambda: m.joint_to_factored(np.array([0.5]), np.array([0])),
        lambda: m.factored_to_joint(np.zeros((2, 19)), np.zeros((2, 2), int)),
        lambda: m.factored_to_joint(np.zeros((2, 20)), np.full((2, 2), 11)),
        lambda: m.env_to_policy({"jump": np.array([1]), "fly": np.array([1])}, np.zeros((1, 2))),
        lambda: m.env_to_policy({"jump": np.array([1])}),
        lambda: m.env_to_policy(np.zeros((3, 23)), np.zeros((2, 2))),
    ],
)
def test_bad_input_is_a_user_error(call):
    with pytest.raises(m.ActionError):
        call()
