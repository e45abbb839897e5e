"""The generic discrete action space."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aimc.actions.discrete import DiscreteActions
from aimc.errors import UserError


def test_round_trip_and_names():
    space = DiscreteActions(4, ("noop", "left", "right", "do"))
    assert space.action_heads == {"action": 4}
    assert space.index("do") == 3
    pol = space.to_policy(np.array([[0, 3], [2, 1]]))
    assert pol["action"].dtype == np.int64 and pol["action"].shape == (2, 2)
    np.testing.assert_array_equal(space.from_policy(pol), [[0, 3], [2, 1]])
    assert space.from_policy({"action": torch.tensor([1, 2])}).tolist() == [1, 2]
    assert DiscreteActions(3).names == ("action_0", "action_1", "action_2")
    assert DiscreteActions(2, head="move").to_policy(1) == {"move": np.array(1)}


@pytest.mark.parametrize(
    "make",
    [
        lambda: DiscreteActions(0),
        lambda: DiscreteActions(2, ("a",)),
        lambda: DiscreteActions(2, ("a", "a")),
        lambda: DiscreteActions(3).to_policy([0, 3]),
        lambda: DiscreteActions(3).to_policy([-1]),
        lambda: DiscreteActions(3).to_policy([0.5]),
        lambda: DiscreteActions(3).from_policy({"buttons": np.array([0])}),
        lambda: DiscreteActions(3).index("jump"),
    ],
)
def test_bad_input(make):
    with pytest.raises(UserError):
        make()
