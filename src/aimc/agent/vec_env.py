"""Several environments stepped together, in this process or in worker processes.

The policy runs one batched forward for all slots; the environments (the slow, single-threaded
part for Crafter and the crash-prone part for MineRL) run in ``workers`` processes, each holding
some of the slots. Every slot can be reset on its own with its own env config and seed, so an
evaluator can keep all slots busy with different tasks.

A crash inside an environment (an exception, or the worker process dying) is reported for that
slot as an :class:`EnvCrash` value; the environment is rebuilt on the slot's next reset. Crashes
are never fatal to the caller.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from dataclasses import dataclass
from typing import Any

from aimc.agent.envs import EpisodeLost, EvalEnv, make_env


@dataclass
class EnvCrash:
    """An environment failed in reset/step; ``message`` holds the error (last traceback line)."""

    slot: int
    message: str


class _SlotEnvs:
    """The environments of some slots, rebuilt when a slot's config changes or after a crash."""

    def __init__(self) -> None:
        self.envs: dict[int, EvalEnv] = {}
        self.cfgs: dict[int, dict] = {}

    def _drop(self, slot: int) -> None:
        env = self.envs.pop(slot, None)
        self.cfgs.pop(slot, None)
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - a crashed env may not close cleanly
                pass

    def reset(self, slot: int, cfg: dict, seed: int) -> Any:
        try:
            if self.cfgs.get(slot) != cfg:
                self._drop(slot)
                self.envs[slot] = make_env(cfg)
                self.cfgs[slot] = dict(cfg)
            return self.envs[slot].reset(seed)
        except Exception as e:  # noqa: BLE001 - reported to the caller, env rebuilt next time
            self._drop(slot)
            return EnvCrash(slot, _short_error(e))

    def step(self, actions: dict[int, dict]) -> dict[int, Any]:
        out = {}
        for slot, action in actions.items():
            try:
                out[slot] = self.envs[slot].step(action)
            except Exception as e:  # noqa: BLE001
                if not isinstance(e, EpisodeLost):  # that env already restarted itself
                    self._drop(slot)
                out[slot] = EnvCrash(slot, _short_error(e))
        return out

    def close(self) -> None:
        for slot in list(self.envs):
            self._drop(slot)


def _short_error(e: BaseException) -> str:
    lines = traceback.format_exception_only(type(e), e)
    return lines[-1].strip() if lines else repr(e)


class SyncVecEnv:
    """All slots in this process (simplest; fine for one or two fast envs)."""

    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._envs = _SlotEnvs()

    def reset(self, slot: int, cfg: dict, seed: int) -> Any:
        """-> (frame (H, W, 3) uint8, measures) or EnvCrash."""
        return self._envs.reset(slot, cfg, seed)

    def step(self, actions: dict[int, dict]) -> dict[int, Any]:
        """{slot: action} -> {slot: (frame, measures, done) or EnvCrash}."""
        return self._envs.step(actions)

    def close(self) -> None:
        self._envs.close()


def _worker(conn) -> None:  # runs in a child process
    envs = _SlotEnvs()
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "reset":
                conn.send(envs.reset(msg[1], msg[2], msg[3]))
            elif msg[0] == "step":
                conn.send(envs.step(msg[1]))
            elif msg[0] == "close":
                break
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        envs.close()


class SubprocVecEnv:
    """Slots spread over ``workers`` processes (slot i lives in worker ``i % workers``).

    Steps are sent to every worker first and collected afterwards, so the workers run in
    parallel. A dead worker is restarted and its slots report :class:`EnvCrash`.
    """

    def __init__(self, num_slots: int, workers: int, start_method: str = "spawn") -> None:
        self.num_slots = num_slots
        self.workers = max(1, min(workers, num_slots))
        self._ctx = mp.get_context(start_method)
        self._procs: list[Any] = [None] * self.workers
        self._conns: list[Any] = [None] * self.workers
        for w in range(self.workers):
            self._start(w)

    def _start(self, w: int) -> None:
        parent, child = self._ctx.Pipe()
        p = self._ctx.Process(target=_worker, args=(child,), daemon=True, name=f"aimc-env-{w}")
        p.start()
        child.close()
        self._procs[w], self._conns[w] = p, parent

    def _restart(self, w: int) -> None:
        p = self._procs[w]
        if p is not None and p.is_alive():
            p.kill()
        if p is not None:
            p.join(timeout=5)
        self._start(w)

    def _call(self, w: int, msg: tuple) -> Any:
        try:
            self._conns[w].send(msg)
            return self._conns[w].recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as e:
            self._restart(w)
            return e

    def reset(self, slot: int, cfg: dict, seed: int) -> Any:
        out = self._call(slot % self.workers, ("reset", slot, cfg, seed))
        if isinstance(out, BaseException):
            return EnvCrash(slot, f"env worker died: {out!r}")
        return out

    def step(self, actions: dict[int, dict]) -> dict[int, Any]:
        by_worker: dict[int, dict[int, dict]] = {}
        for slot, a in actions.items():
            by_worker.setdefault(slot % self.workers, {})[slot] = a
        sent = []
        for w, acts in by_worker.items():
            try:
                self._conns[w].send(("step", acts))
                sent.append(w)
            except (BrokenPipeError, ConnectionResetError, OSError):
                self._restart(w)
        out: dict[int, Any] = {}
        for w, acts in by_worker.items():
            if w in sent:
                try:
                    out.update(self._conns[w].recv())
                    continue
                except (EOFError, ConnectionResetError, OSError):
                    self._restart(w)
            for slot in acts:
                out[slot] = EnvCrash(slot, "env worker process died")
        return out

    def close(self) -> None:
        for w in range(self.workers):
            try:
                self._conns[w].send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


def make_vec_env(num_slots: int, workers: int = 0) -> SyncVecEnv | SubprocVecEnv:
    """``workers`` = 0: every env in this process; otherwise that many env processes."""
    if workers <= 0:
        return SyncVecEnv(num_slots)
    return SubprocVecEnv(num_slots, workers)
