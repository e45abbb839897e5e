"""Training-step speed and memory of a preset: frames/s and peak memory, our eager fp32
baseline beside the optimised path, in one run, next to the original's recorded figures.

    python benchmarks/train_step.py                         # tiny preset on CPU, seconds
    python benchmarks/train_step.py --preset steve1_from_vpt --device cuda
    python benchmarks/train_step.py --preset finetune --device cuda --checkpointing --compile

Random weights, synthetic batches already on the device (no loader), the real loop's
micro-step (forward, per-frame NLL, backward) and AdamW step. One optimizer step =
``grad_accum`` chunks of ``batch x trunc_t`` frames, the recurrent state carried between
chunks. Prints one JSON line per variant; the original STEVE-1 code measured the same way
on one H100 80GB (issue 5): 2x, batch 12, T 640, trunc 64, grad-accum 4, bf16: 2,877
frames/s, 40.8 GiB peak; finetune (batch 8, T 320, grad-accum 2): 2,722 frames/s, 28.5 GiB.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import sys
import time

import torch

from aimc.config import load_config
from aimc.train.config import TrainConfig
from aimc.train.distributed import DistInfo
from aimc.train.policy import SequenceChunks, build_policy, optimizer_step, setup_learner

ORIGINAL = {  # the original code on one H100 80GB, random weights, synthetic on-GPU data
    "steve1_from_vpt": {"frames_per_s": 2877, "peak_gib": 40.8},
    "finetune": {"frames_per_s": 2722, "peak_gib": 28.5},
}


def synthetic_batch(cfg: TrainConfig, policy, device: torch.device, T: int) -> dict:
    pc = policy.cfg
    B = cfg.optim.batch_size
    H, W, _ = pc.img_shape
    g = torch.Generator(device="cpu").manual_seed(0)
    return {
        "img": torch.randint(0, 256, (B, T, H, W, 3), dtype=torch.uint8, generator=g).to(device),
        "goal": torch.randn(B, T, max(pc.mineclip_embed_dim, 1), generator=g).to(device),
        "actions": {k: torch.randint(0, n, (B, T), generator=g).to(device) for k, n in pc.action_heads.items()},
        "first": torch.zeros(B, T, dtype=torch.bool).to(device),
    }


def run_variant(cfg: TrainConfig, device: torch.device, precision: str, steps: int, compile_: bool) -> dict:
    """Time ``steps`` optimizer steps after one warm-up step; returns frames/s and peak memory."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, precision=precision, compile=compile_))
    learner, _ = setup_learner(cfg, build_policy(cfg), DistInfo(), device)  # the training loop's own setup
    learner.policy.train()
    tt, A = cfg.optim.trunc_t, cfg.optim.grad_accum
    T = cfg.data.T
    batch = synthetic_batch(cfg, learner.policy, device, T)

    class OneBatch:  # every index gives the same synthetic batch
        def batch(self, index: int) -> dict:
            return batch

    stream = SequenceChunks(OneBatch(), learner.policy, tt, T // tt, device)

    def step() -> None:  # the training loop's optimizer step
        optimizer_step(learner, stream, A, cfg.optim.max_grad_norm)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_warm = time.perf_counter()
    step()  # warm-up (and compilation)
    sync()
    warm_s = time.perf_counter() - t_warm
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    frames = steps * A * cfg.optim.batch_size * tt
    from aimc.train.preflight import estimate_memory_gib

    out = {
        "frames_per_s": round(frames / dt, 1),
        "estimate_gib": round(estimate_memory_gib(cfg, learner.policy, precision)["total_gib"], 2),
        "step_s": round(dt / steps, 4),
        "warmup_s": round(warm_s, 2),
        "params_m": round(sum(p.numel() for p in learner.policy.parameters()) / 1e6, 2),
    }
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    else:
        out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    del learner, stream, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", help="training preset (tiny, steve1_from_vpt, finetune, finetune_24gb)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, auto")
    ap.add_argument("--batch", type=int, help="sequences per chunk (default: the preset's)")
    ap.add_argument("--T", type=int, help="sequence length (default: the preset's)")
    ap.add_argument("--trunc", type=int, help="trunc_t (default: the preset's)")
    ap.add_argument("--grad-accum", type=int, help="chunks per optimizer step (default: the preset's)")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps (after one warm-up step)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the policy in the optimised variant")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the optimised variant")
    ap.add_argument("--channels-last", action="store_true", help="channels-last CNN in the optimised variant")
    ap.add_argument("--skip-baseline", action="store_true", help="only the optimised variant")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.arch=2x")
    args = ap.parse_args(argv)

    over = list(args.overrides)
    for flag, key in ((args.batch, "optim.batch_size"), (args.T, "data.T"), (args.trunc, "optim.trunc_t"),
                      (args.grad_accum, "optim.grad_accum")):
        if flag is not None:
            over.append(f"{key}={flag}")
    cfg = load_config(TrainConfig, args.preset, over)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    common = {"preset": args.preset, "device": gpu, "batch": cfg.optim.batch_size, "T": cfg.data.T,
              "trunc_t": cfg.optim.trunc_t, "grad_accum": cfg.optim.grad_accum, "torch": torch.__version__}
    variants = []
    if not args.skip_baseline:
        base = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, activation_checkpointing=False,
                                                                  channels_last=False))
        variants.append(("baseline: eager fp32 NCHW", base, "fp32", False))
    opt_precision = "bf16" if device.type == "cuda" else "fp32"
    fast = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, activation_checkpointing=args.checkpointing or cfg.model.activation_checkpointing,
        channels_last=args.channels_last))
    name = "optimised: " + ("bf16 autocast" if opt_precision == "bf16" else "fp32") + \
        (", channels_last" if args.channels_last else "") + \
        (", activation checkpointing" if fast.model.activation_checkpointing else "") + (", torch.compile" if args.compile else "")
    variants.append((name, fast, opt_precision, args.compile))

    for label, vcfg, precision, comp in variants:
        try:
            res = run_variant(vcfg, device, precision, args.steps, comp)
        except torch.OutOfMemoryError as e:
            res = {"error": "out of memory", "detail": str(e).splitlines()[0][:200]}
            gc.collect()
            torch.cuda.empty_cache()
        record = {**common, "variant": label, **res}
        if args.preset in ORIGINAL:
            record["original"] = ORIGINAL[args.preset]
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
