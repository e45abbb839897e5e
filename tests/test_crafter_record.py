"""``aimc data generate --env crafter``: scripted play recorded into the episode store."""

from __future__ import annotations

import numpy as np
import pytest

from aimc.cli import main
from aimc.data.store import EpisodeStore
from aimc.envs.demonstrator import GOALS


def test_generate_writes_episodes_with_actions_and_captions(tmp_path, capsys):
    out = tmp_path / "store"
    assert main(["data", "generate", "--env", "crafter", "--out", str(out), "--episodes", "2", "--max-steps", "60",
                 "--workers", "1", "--seed", "3"]) == 0
    store = EpisodeStore(out)
    assert store.episode_ids() == ["crafter-00000003", "crafter-00000004"]
    ep = store.open("crafter-00000003")
    n = ep.num_frames
    assert 0 < n <= 60
    acts = ep.actions()["action"]
    assert acts.shape == (n,) and acts.min() >= 0 and acts.max() < 17
    assert ep.meta["world_seed"] == 3
    segs = ep.meta["goal_segments"]
    assert segs[0][0] == 0 and segs[-1][1] == n and all(s[2] in GOALS for s in segs)
    anns = ep.annotations()
    assert anns and all(0 <= a["start"] < a["end"] <= n for a in anns)
    assert {a["lang"] for a in anns} == {"en", "zh"}
    # the frames decode to what the world showed: the first one is the reset observation
    from aimc.envs.crafter import CrafterEnv

    first, _ = CrafterEnv().reset(seed=3)
    assert np.abs(ep.frames(0, 1)[0].astype(int) - first.astype(int)).mean() < 3
    # again: nothing new is written
    assert main(["data", "generate", "--out", str(out), "--episodes", "2", "--max-steps", "60", "--workers", "1",
                 "--seed", "3"]) == 0
    assert "0 episodes written, 2 already there" in capsys.readouterr().out


def test_only_crafter_can_be_generated(tmp_path, capsys):
    assert main(["data", "generate", "--env", "minerl", "--out", str(tmp_path / "s")]) == 2
    assert "only the built-in world" in capsys.readouterr().err
