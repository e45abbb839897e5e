"""Training-data loader speed, storage size and quality: aimc vs a naive path that does what the original does.

    python benchmarks/loader.py --quick          # ~1 minute: 2 episodes x 2,000 frames
    python benchmarks/loader.py                  # 4 episodes x 8,000 frames, T=640 (the issue's setting)
    python benchmarks/loader.py --workers 1 2 4 8 --items 200   # on a bigger machine

Both paths read the same synthetic episodes (128x128 Minecraft-like frames: a blocky textured
world panned by a smooth random camera; sparse random env actions; 512-d embeddings):

* **aimc**: the episode store (H.264 chunks, npy actions, float16 embeddings) read by
  ``SequenceDataset`` (decode only the window's chunks, memory-mapped arrays, vectorised relabeling).
* **naive** (the original's data path, re-implemented here since it cannot be shipped):
  ``frames.mp4`` written by OpenCV (mp4v) and read from the episode start with ``cv2.VideoCapture``,
  ``actions.pkl`` (a list of MineRL action dicts) and ``embeds_attn.pkl`` (a list of None /
  (1, 512) arrays) unpickled whole for every item, goals relabeled step by step in Python, and
  each action converted to policy indices one frame at a time.

Reported: per-item median frames/s on one core (torch/OpenCV threads = 1; by wall clock and by
the process's CPU time, which a busy shared machine disturbs much less), DataLoader
throughput with 1 and 2 (or ``--workers``) worker processes, bytes per frame of each storage
and PSNR against the source frames; beside the original's figures recorded in the issue.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Recorded for the original STEVE-1 __getitem__ on one core of a 2-core CPU machine (issue 4).
ORIGINAL = {
    "frames_per_s_per_core_median": 3400.0,
    "two_worker_frames_per_s": 5000.0,
    "bytes_per_frame": {"video": 2400.0, "embeddings": 2100.0, "actions": 140.0},
    "where": "original STEVE-1 loader, one core of a 2-core CPU machine (recorded in issue 4)",
}
GOAL_PER_CORE = 2 * ORIGINAL["frames_per_s_per_core_median"]


# --------------------------------------------------------------------------- synthetic data


def synthetic_frames(n: int, seed: int, size: int = 128) -> np.ndarray:
    """Video-like frames: a 512x512 world of 8x8 coloured blocks with texture, panned smoothly."""
    rng = np.random.default_rng(seed)
    world = np.repeat(np.repeat(rng.integers(0, 256, (64, 64, 3)), 8, 0), 8, 1)
    world = np.clip(world + rng.integers(-12, 13, world.shape), 0, 255).astype(np.uint8)
    out = np.empty((n, size, size, 3), np.uint8)
    pos, vel = np.array([100.0, 100.0]), np.zeros(2)
    span = world.shape[0] - size
    for i in range(n):
        vel = 0.9 * vel + rng.normal(0, 0.8, 2)
        pos = (pos + vel) % span
        y, x = pos.astype(int)
        out[i] = world[y : y + size, x : x + size]
    return out


def synthetic_env_actions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from aimc.actions.minecraft import ENV_BUTTONS

    rng = np.random.default_rng(seed)
    buttons = (rng.random((n, len(ENV_BUTTONS))) < 0.08).astype(np.int64)
    camera = np.round(rng.normal(0, 2.0, (n, 2)), 2) * (rng.random((n, 1)) < 0.5)
    return buttons, camera


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# --------------------------------------------------------------------------- the naive path


def write_naive_episode(d: Path, frames: np.ndarray, buttons: np.ndarray, camera: np.ndarray, emb: np.ndarray) -> None:
    import pickle

    import cv2

    from aimc.actions.minecraft import ENV_BUTTONS

    d.mkdir(parents=True)
    w = cv2.VideoWriter(str(d / "frames.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (frames.shape[2], frames.shape[1]))
    for f in frames:
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    # MineRL action dicts: python ints for the buttons, a float array for the camera (~0.2 KB/frame
    # pickled, close to the ~0.14 KB/frame recorded for the original's files)
    actions = [
        {**{k: int(buttons[i, j]) for j, k in enumerate(ENV_BUTTONS)}, "camera": camera[i].copy()}
        for i in range(len(frames))
    ]
    embeds = [None] * 15 + [emb[i : i + 1].astype(np.float32) for i in range(15, len(frames))]
    (d / "actions.pkl").write_bytes(pickle.dumps(actions))
    (d / "embeds_attn.pkl").write_bytes(pickle.dumps(embeds))
    (d / "len.txt").write_text(str(len(frames)))


class NaiveDataset:
    """Does per item what the original's ``get_episode_chunk`` does (see the module docstring)."""

    def __init__(self, dirs: list[Path], T: int, min_btwn: int = 15, max_btwn: int = 200, p_uncond: float = 0.1, seed: int = 0):
        self.dirs, self.T, self.min_btwn, self.max_btwn, self.p_uncond, self.seed = dirs, T, min_btwn, max_btwn, p_uncond, seed
        self.lengths = [int((d / "len.txt").read_text()) for d in dirs]

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, k: int):
        import cv2

        from aimc.actions.minecraft import ENV_BUTTONS, env_to_policy
        from aimc.checkpoints.safe_load import load_plain_pickle

        rng = np.random.default_rng([self.seed, k])
        e = int(rng.integers(len(self.dirs)))
        d, total = self.dirs[e], self.lengths[e]
        start = 15 + int(rng.integers(total - self.T - 15 + 1))
        end = start + self.T
        embeds = load_plain_pickle(d / "embeds_attn.pkl")  # whole episode, every item
        cap = cv2.VideoCapture(str(d / "frames.mp4"))  # read from the start up to the window's end
        frames = []
        for t in range(end):
            ok, f = cap.read()
            if not ok:
                raise RuntimeError(f"{d}: cannot read frame {t}")
            if t >= start:
                frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        cap.release()
        goals, g = [], 0  # goal time steps over the whole episode, then per step
        while g < total - 1:
            g += int(rng.integers(self.min_btwn, self.max_btwn))
            if total - g < self.min_btwn:
                g = total - 1
            goals.append(g)
        per_step, c = [], 0
        for t in range(total):
            per_step.append(embeds[goals[c]])
            if t == goals[c] + 1:
                c += 1
        if rng.random() < self.p_uncond:
            per_step = [np.zeros_like(x) for x in per_step]
        actions = load_plain_pickle(d / "actions.pkl")  # whole episode, every item
        buttons, cameras = [], []
        for t in range(start, end):  # one frame at a time
            a = actions[t]
            pol = env_to_policy({k: np.asarray(a[k])[None] for k in ENV_BUTTONS}, np.asarray(a["camera"])[None])
            buttons.append(pol["buttons"][0])
            cameras.append(pol["camera"][0])
        return {
            "img": np.stack(frames),
            "goal": np.concatenate([per_step[t].reshape(1, -1) for t in range(start, end)]),
            "actions": {"buttons": np.array(buttons), "camera": np.array(cameras)},
            "first": np.arange(self.T) == 0,
        }


# --------------------------------------------------------------------------- measurement


def per_item_fps(ds, items: int, T: int, offset: int = 0) -> tuple[float, float, float]:
    """Frames/s of single items in this process: (median by wall clock, mean by wall clock,
    median by this process's CPU time). On a shared machine the CPU-time figure is the one that
    does not depend on how busy the other processes keep the cores."""
    ds[offset]  # warm-up (imports, first opens)
    wall, cpu = [], []
    for k in range(offset + 1, offset + 1 + items):
        t0, c0 = time.perf_counter(), time.process_time()
        ds[k]
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return T / statistics.median(wall), T * items / sum(wall), T / statistics.median(cpu)


def loader_fps(ds, workers: int, items: int, T: int, batch_size: int) -> float:
    """Frames/s through a DataLoader with ``workers`` processes, after the first batch."""
    import torch

    from aimc.data.loader import collate_sequences

    aimc_path = isinstance(getattr(ds, "ds", ds), SequenceDatasetType())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, prefetch_factor=4 if workers else None,
                                         collate_fn=collate_sequences if aimc_path else _stack)
    it = iter(loader)
    next(it)
    n = 0
    t0 = time.perf_counter()
    for _ in range(max(1, items // batch_size)):
        b = next(it)
        n += b["img"].shape[0] * b["img"].shape[1]
    dt = time.perf_counter() - t0
    del it
    return n / dt


def SequenceDatasetType():
    from aimc.data.loader import SequenceDataset

    return SequenceDataset


def _stack(batch):
    return {"img": np.stack([b["img"] for b in batch])}


class _Window:
    """A view of a dataset from item ``offset`` on (so timed items differ from warm-up items)."""

    def __init__(self, ds, offset: int) -> None:
        self.ds, self.offset = ds, offset

    def __len__(self) -> int:
        return 10**6

    def __getitem__(self, i: int):
        return self.ds[self.offset + i]

    def __getitems__(self, indices: list[int]):
        if hasattr(self.ds, "__getitems__"):
            return self.ds.__getitems__([self.offset + i for i in indices])
        return [self.ds[self.offset + i] for i in indices]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (~1 minute): 2 episodes x 2,000 frames, fewer items")
    ap.add_argument("--episodes", type=int, default=None, help="synthetic episodes (default 4, quick 2)")
    ap.add_argument("--frames", type=int, default=None, help="frames per episode (default 8000, quick 2000)")
    ap.add_argument("--T", type=int, default=640, help="frames per item")
    ap.add_argument("--items", type=int, default=None, help="timed items per measurement (default 40, quick 12)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts to measure")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--crf", type=int, default=10)
    ap.add_argument("--chunk-frames", type=int, default=256)
    ap.add_argument("--dir", default=None, help="where to build the stores (default: a temporary folder)")
    args = ap.parse_args(argv)
    n_ep = args.episodes or (2 if args.quick else 4)
    n_fr = args.frames or (2000 if args.quick else 8000)
    items = args.items or (12 if args.quick else 40)

    import cv2
    import torch

    from aimc.actions.minecraft import env_to_policy
    from aimc.data.loader import SequenceDataset
    from aimc.data.store import EpisodeStore, VideoSettings

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    tmp = tempfile.TemporaryDirectory() if args.dir is None else None
    root = Path(args.dir or tmp.name)  # type: ignore[union-attr]
    store = EpisodeStore(root / "aimc", video=VideoSettings(crf=args.crf, chunk_frames=args.chunk_frames))
    naive_dirs, psnr_ours, psnr_naive = [], [], []
    t_build = time.perf_counter()
    for e in range(n_ep):
        frames = synthetic_frames(n_fr, seed=e)
        buttons, camera = synthetic_env_actions(n_fr, seed=100 + e)
        emb = np.random.default_rng(200 + e).normal(size=(n_fr, 512)).astype(np.float32)
        valid = np.arange(n_fr) >= 15
        pol = env_to_policy(buttons, camera)
        store.write_episode(
            f"ep{e}", frames, {"buttons": pol["buttons"], "camera": pol["camera"], "env_buttons": buttons.astype(np.int8), "env_camera": camera},
            {"policy_heads": ["buttons", "camera"], "fps": 20.0}, embeddings=emb, embed_valid=valid,
        )
        d = root / "naive" / f"ep{e}"
        write_naive_episode(d, frames, buttons, camera, emb)
        sl = slice(0, min(n_fr, 1000))
        psnr_ours.append(psnr(store.open(f"ep{e}").frames(sl.start, sl.stop), frames[sl]))
        cap = cv2.VideoCapture(str(d / "frames.mp4"))
        dec = np.stack([cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB) for _ in range(sl.stop)])
        psnr_naive.append(psnr(dec, frames[sl]))
        naive_dirs.append(d)
    build_s = time.perf_counter() - t_build
    total_frames = n_ep * n_fr

    ours = SequenceDataset([store.root], T=args.T, min_btwn_goals=15, max_btwn_goals=200, p_uncond=0.1, seed=0, num_items=10**6)
    naive = NaiveDataset(naive_dirs, T=args.T)
    ours_median, ours_mean, ours_cpu = per_item_fps(ours, items, args.T)
    naive_median, naive_mean, naive_cpu = per_item_fps(naive, max(4, items // 2), args.T)
    scaling = {}
    for w in args.workers:
        scaling[w] = loader_fps(_Window(ours, 10_000 * (w + 1)), w, items * max(1, w), args.T, args.batch_size)
    naive_w = max(args.workers)
    naive_loader = loader_fps(_Window(naive, 10_000), naive_w, max(4, items // 4) * naive_w, args.T, args.batch_size)

    def part_bytes(prefix: str) -> float:
        return sum(p.stat().st_size for p in store.root.rglob("*") if p.is_file() and p.relative_to(store.root).parts[1:2] and p.relative_to(store.root).parts[1].startswith(prefix)) / total_frames

    ours_bytes = {"video": part_bytes("video"), "embeddings": part_bytes("embed"), "actions": part_bytes("actions")}
    naive_bytes = {
        "video": sum((d / "frames.mp4").stat().st_size for d in naive_dirs) / total_frames,
        "embeddings": sum((d / "embeds_attn.pkl").stat().st_size for d in naive_dirs) / total_frames,
        "actions": sum((d / "actions.pkl").stat().st_size for d in naive_dirs) / total_frames,
    }
    w1 = scaling.get(1)
    w2 = scaling.get(2)
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, python {platform.python_version()}".strip(),
        "setting": {"episodes": n_ep, "frames_per_episode": n_fr, "T": args.T, "timed_items": items, "crf": args.crf, "chunk_frames": args.chunk_frames},
        "build_seconds": round(build_s, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "per_core_frames_per_s": {"aimc_median": round(ours_median), "aimc_mean": round(ours_mean), "naive_median": round(naive_median),
                                  "naive_mean": round(naive_mean), "aimc_vs_naive": round(ours_median / naive_median, 2),
                                  "aimc_vs_original_recorded": round(ours_median / ORIGINAL["frames_per_s_per_core_median"], 2)},
        "per_cpu_second_frames_per_s": {"aimc_median": round(ours_cpu), "naive_median": round(naive_cpu),
                                        "aimc_vs_naive": round(ours_cpu / naive_cpu, 2),
                                        "aimc_vs_original_recorded": round(ours_cpu / ORIGINAL["frames_per_s_per_core_median"], 2)},
        "dataloader_frames_per_s": {str(w): round(v) for w, v in scaling.items()},
        "scaling_2_vs_1": round(w2 / w1, 2) if w1 and w2 else None,
        f"naive_dataloader_{naive_w}_workers_frames_per_s": round(naive_loader),
        "bytes_per_frame": {"aimc": {k: round(v, 1) for k, v in ours_bytes.items()}, "aimc_total": round(sum(ours_bytes.values()), 1),
                            "naive": {k: round(v, 1) for k, v in naive_bytes.items()}, "naive_total": round(sum(naive_bytes.values()), 1)},
        "psnr_db": {"aimc": round(min(psnr_ours), 2), "naive_mp4v": round(min(psnr_naive), 2)},
        "original_recorded": ORIGINAL,
        "goals": {
            "per_core_>=_2x_original (wall)": bool(ours_median >= GOAL_PER_CORE),
            "per_core_>=_2x_original (cpu time)": bool(ours_cpu >= GOAL_PER_CORE),
            "fewer_bytes_than_original": bool(sum(ours_bytes.values()) < sum(ORIGINAL["bytes_per_frame"].values())),
            "psnr_>=_40": bool(min(psnr_ours) >= 40),
        },
    }
    print(json.dumps(result, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
