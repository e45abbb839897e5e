"""Vectorised environments: slots in worker processes, crashes reported per slot, never fatal."""

from __future__ import annotations

import numpy as np

from aimc.agent.vec_env import EnvCrash, SubprocVecEnv, SyncVecEnv

TOY = {"name": "test_eval_runner:ToyEnv"}


def test_subproc_matches_sync_and_survives_a_dead_worker():
    sync, sub = SyncVecEnv(3), SubprocVecEnv(3, workers=2)
    try:
        for vec in (sync, sub):
            for s in range(3):
                frame, m = vec.reset(s, TOY, seed=100 + s)
                assert frame.shape == (8, 8, 3) and m["pos.x"] == 0
        for _ in range(3):
            a = {0: {"action": 3}, 1: {"action": 1}, 2: {"action": 3}}
            o1, o2 = sync.step(a), sub.step(a)
            for s in range(3):
                np.testing.assert_array_equal(o1[s][0], o2[s][0])
                assert o1[s][1] == o2[s][1]
        assert o2[0][1]["pos.x"] == 3 and o2[1][1]["inventory.wood"] == 3
        sub._procs[1].kill()  # worker 1 holds slot 1
        sub._procs[1].join()
        out = sub.step({0: {"action": 3}, 1: {"action": 3}, 2: {"action": 3}})
        assert isinstance(out[1], EnvCrash) and not isinstance(out[0], EnvCrash)
        assert out[0][1]["pos.x"] == 4
        frame, m = sub.reset(1, TOY, seed=7)  # the worker was restarted
        assert m["pos.x"] == 0
        crash = sub.reset(2, {**TOY, "no_such_option": 1}, seed=1)  # bad settings -> reported, not raised
        assert isinstance(crash, EnvCrash) and "no_such_option" in crash.message
    finally:
        sync.close()
        sub.close()
