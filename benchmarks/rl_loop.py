"""Environment steps per second of ``aimc rl``'s whole loop (rollout + update) on the built-in world.

    python benchmarks/rl_loop.py --init runs/quickstart/policy/final.safetensors            # ~2 x 90 s
    python benchmarks/rl_loop.py --init ... --seconds 60 --json benchmarks/results/rl-loop.json

Two runs of ``aimc rl`` (the library function, each in a fresh run folder under ``--work``), for
``--seconds`` seconds of updates each, in the same process one after the other:

* ``batched``: the preset as it is (``rl_crafter``: 16 worlds stepped in env worker processes, one
  batched policy forward per step for all of them, the frozen CNN's features kept from acting);
* ``naive``: the same run with one world stepped in this process, one policy forward per step
  (``collect.num_envs=1 collect.workers=0``); the update is the same.

Reported per run: environment steps, seconds of updates (loading and export left out: the run's
own ``wall_seconds``), env steps/s of the whole loop, and the share of time spent collecting.
The machine's load changes the numbers a lot on a shared machine: the load average is recorded
beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from aimc.config import load_config  # noqa: E402
from aimc.rl.config import RLConfig  # noqa: E402
from aimc.rl.loop import run_rl  # noqa: E402

PATHS = {
    "batched": [],
    "naive": ["collect.num_envs=1", "collect.workers=0"],
}


def measure(init: str, preset: str, extra: list[str], seconds: float, work: Path, name: str) -> dict:
    run = work / name
    cfg = load_config(RLConfig, preset, [f"init={json.dumps(init)}", f"schedule.max_seconds={seconds}",
                                         "logging.tensorboard=false", "checkpoint.export=[.safetensors]", *extra])
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = run_rl(cfg, run, progress=False)
    rows = out["rows"]
    collect_s = sum(r["collect_s"] for r in rows)
    update_s = sum(r["update_s"] for r in rows)
    return {"path": name, "overrides": extra, "updates": out["updates"], "env_steps": out["env_steps"],
            "loop_seconds": round(out["seconds"], 2), "command_seconds": round(time.perf_counter() - t0, 2),
            "env_steps_per_s": round(out["env_steps"] / max(out["seconds"], 1e-9), 1),
            "collect_share": round(collect_s / max(collect_s + update_s, 1e-9), 3),
            "load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", default="runs/quickstart/policy/final.safetensors",
                    help="policy weights with MineCLIP and the prior beside them (a quickstart run)")
    ap.add_argument("--preset", default="rl_crafter")
    ap.add_argument("--seconds", type=float, default=90.0, help="seconds of updates per path")
    ap.add_argument("--paths", default="batched,naive")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="aimc-rl-bench-"))
    results = []
    for name in args.paths.split(","):
        r = measure(args.init, args.preset, PATHS[name], args.seconds, work, name)
        results.append(r)
        print(f"{name:8s} {r['env_steps']:>7,} env steps in {r['loop_seconds']:6.1f} s = {r['env_steps_per_s']:6.1f} "
              f"env steps/s ({r['updates']} updates, {100 * r['collect_share']:.0f} % collecting, load "
              f"{r['load_average_before']:.1f})")
    if len(results) == 2:
        print(f"batched / naive: {results[0]['env_steps_per_s'] / max(results[1]['env_steps_per_s'], 1e-9):.1f}x")
    if args.json:
        import subprocess

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
        Path(args.json).write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                           "python": platform.python_version()},
                                               "commit": commit, "date": time.strftime("%Y-%m-%d"),
                                               "command": " ".join(["python", *sys.argv]),
                                               "results": results}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
