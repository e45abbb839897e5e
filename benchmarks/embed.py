"""Episode embedding speed: aimc's fast path vs the original's per-window recomputation.

    python benchmarks/embed.py --config tiny --device cpu --frames 64            # seconds, any machine
    python benchmarks/embed.py --config official --device cuda --frames 4096 --dtype bf16

Both paths run in the same process on the same random-weight model: ``embed_episode`` (each
frame's ViT once, windows pooled from cached features) and ``embed_episode_naive`` (``encode_video``
on every stride-1 16-frame window, as STEVE-1 does; on fewer frames when ``--naive-frames`` says so).
Prints one JSON line with frames/s of both, their speed-up, the largest difference between their
embeddings on the frames both computed, and the original's figure measured on our reference H100.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch

from aimc.models.mineclip import MineCLIP, MineCLIPConfig, embed_episode, embed_episode_naive

# The original pipeline (STEVE-1 embedding loop, fp32 / bf16 autocast), measured on the reference H100.
ORIGINAL_FPS = {"fp32": 446.0, "bf16": 453.0, "where": "original STEVE-1 embedding, reference H100"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def tiny_config() -> MineCLIPConfig:
    return MineCLIPConfig(
        resolution=(32, 48), patch_size=8, vision_width=128, vision_layers=2, vision_heads=2,
        base_image_resolution=32, embed_dim=32, text_width=8, text_layers=2, text_heads=2, pool_heads=4,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["official", "tiny"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=64, help="episode length for the fast path")
    ap.add_argument("--naive-frames", type=int, default=None, help="episode length for the naive path (default: same, at most 256)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="autocast dtype (fp32 = none)")
    ap.add_argument("--batch-size", type=int, default=None, help="frames per ViT batch of the fast path (default 256 on GPU, 32 on CPU)")
    ap.add_argument("--naive-batch-size", type=int, default=32, help="windows per encode_video call of the naive path (STEVE-1: 4 or 32)")
    ap.add_argument("--repeats", type=int, default=1, help="timed repetitions of each path (best is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions on CUDA (affects fp32 runs)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.frames < 16:
        print("error: --frames must be >= 16 (one window)", file=sys.stderr)
        return 2
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    cfg = MineCLIPConfig.official() if args.config == "official" else tiny_config()
    with torch.device(device):
        model = MineCLIP(cfg).eval()
    amp = DTYPES[args.dtype]
    batch = args.batch_size or (256 if device.type == "cuda" else 32)
    naive_frames = args.naive_frames or min(args.frames, 256)
    naive_frames = max(16, min(naive_frames, args.frames))
    H, W = cfg.resolution
    frames = torch.from_numpy(np.random.default_rng(args.seed).integers(0, 256, (args.frames, 3, H, W), dtype=np.uint8))
    if device.type == "cuda":
        frames = frames.pin_memory()

    # warm-up (kernels, autocast caches, cuDNN choices) on a short prefix
    embed_episode(model, frames[:32], batch_size=batch, device=device, amp_dtype=amp)
    embed_episode_naive(model, frames[:20], batch_size=args.naive_batch_size, device=device, amp_dtype=amp)

    fast_s, (fast_emb, fast_valid) = min(
        (_timed(lambda: embed_episode(model, frames, batch_size=batch, device=device, amp_dtype=amp), device)
         for _ in range(args.repeats)), key=lambda r: r[0])
    naive_s, (naive_emb, naive_valid) = min(
        (_timed(lambda: embed_episode_naive(model, frames[:naive_frames], batch_size=args.naive_batch_size,
                                            device=device, amp_dtype=amp), device)
         for _ in range(args.repeats)), key=lambda r: r[0])

    n = naive_frames
    assert (fast_valid[:n] == naive_valid).all()
    diff = float(np.abs(fast_emb[:n][naive_valid] - naive_emb[naive_valid]).max())
    scale = float(np.abs(naive_emb[naive_valid]).max())
    fast_fps, naive_fps = args.frames / fast_s, naive_frames / naive_s
    result = {
        "benchmark": "embed_episode",
        "config": args.config,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "tf32": args.tf32,
        "torch": torch.__version__,
        "frames": args.frames,
        "fast_fps": round(fast_fps, 1),
        "naive_frames": naive_frames,
        "naive_fps": round(naive_fps, 1),
        "speedup": round(fast_fps / naive_fps, 2),
        "max_abs_diff_fast_vs_naive": diff,
        "max_abs_embedding": scale,
        "batch_size": batch,
        "naive_batch_size": args.naive_batch_size,
        "original_fps_reference": ORIGINAL_FPS,
    }
    if args.config == "official" and args.dtype in ORIGINAL_FPS:
        result["speedup_vs_original_reference"] = round(fast_fps / ORIGINAL_FPS[args.dtype], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
