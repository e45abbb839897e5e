"""Acting speed of the STEVE-1 policy with classifier-free guidance.

    python benchmarks/act.py                       # CPU, tiny config (seconds)
    python benchmarks/act.py --config 2x --envs 1,64 --json out.json   # on a GPU

Measures, on random frames and goals, the time of one acting step (policy forward, guidance,
sampling, and the actions copied back to the host, as an environment loop needs them):

* ``naive fp32``: eager float32, one forward with the conditional rows only (no guidance);
* ``naive guided``: eager float32, the conditional and the unconditional rows as two separate
  forward calls with their own recurrent state, mixed afterwards;
* ``shared-CNN guided``: ``STEVE1Policy.act``, one pass where the IMPALA CNN (most of the
  compute) runs once per frame for both row sets and the trunk on both row sets in one batch,
  float32 (bfloat16 autocast on GPU too);
* ``optimised guided`` (GPU): ``aimc.agent.GraphedGuidedAct``, the same step under
  bfloat16 autocast captured in a CUDA graph (static input buffers, the recurrent state updated
  in place, no host syncs inside).

For N environments it reports env-steps/s = N / step time (policy only; the games themselves
are not stepped). It also checks that bfloat16 keeps the results: the largest difference of the
guided log-probabilities from float32, and how often the argmax action agrees.

Reference (the original code, 2x model, one H100; from the aimc issue tracker): 7.6 ms per
step fp32, 8.5 ms guided, 64 envs batched 3,045 env-steps/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from aimc.agent.agent import GraphedGuidedAct  # noqa: E402
from aimc.models.vpt import PolicyConfig, STEVE1Policy  # noqa: E402

ORIGINAL = {"fp32_ms": 7.6, "guided_ms": 8.5, "batched64_env_steps_per_s": 3045}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()  # ends with actions on the host (an implicit sync)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _inputs(cfg: PolicyConfig, n: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.img_shape[:2]
    img = torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8).to(device)
    goal = torch.randn(n, cfg.mineclip_embed_dim, generator=g).to(device)
    first = torch.zeros(n, dtype=torch.bool, device=device)
    return img, goal, first


def naive_unguided(policy, cfg, n, device):
    img, goal, first = _inputs(cfg, n, device)
    state = [policy.initial_state(n, device)]

    @torch.no_grad()
    def step():
        logits, _v, state[0] = policy(img[:, None], goal[:, None], first[:, None], state[0])
        a = policy.sample({k: l[:, 0] for k, l in logits.items()})
        return {k: v.cpu() for k, v in a.items()}

    return step


def naive_guided(policy, cfg, n, device, scale: float):
    img, goal, first = _inputs(cfg, n, device)
    zero = torch.zeros_like(goal)
    states = [policy.initial_state(n, device), policy.initial_state(n, device)]

    @torch.no_grad()
    def step():
        lc, _v, states[0] = policy(img[:, None], goal[:, None], first[:, None], states[0])
        lu, _v, states[1] = policy(img[:, None], zero[:, None], first[:, None], states[1])
        mixed = {k: (1 + scale) * lc[k][:, 0] - scale * lu[k][:, 0] for k in lc}
        return {k: v.cpu() for k, v in policy.sample(mixed).items()}

    return step


def shared_cnn_guided(policy, cfg, n, device, scale: float, amp: torch.dtype | None = None):
    img, goal, first = _inputs(cfg, n, device)
    state = [policy.initial_state(2 * n, device)]
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else nullcontext

    def step():
        with ctx():
            a, state[0], _ = policy.act(img, goal, first, state[0], cond_scale=scale)
        return {k: v.cpu() for k, v in a.items()}

    return step


def graphed_guided(policy, cfg, n, device, scale: float, amp: torch.dtype | None = torch.bfloat16):
    img, goal, first = _inputs(cfg, n, device)
    g = GraphedGuidedAct(policy, n, scale, stochastic=True, amp_dtype=amp)
    host = None

    def step():
        nonlocal host
        a = g(img, goal, first)
        if host is None:
            host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in a.items()}
        for k, v in a.items():
            host[k].copy_(v, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return host

    return step


@torch.no_grad()
def bf16_agreement(policy, cfg, device, scale: float, n: int = 16, steps: int = 8) -> dict:
    """Run the same inputs through fp32 and bf16 guided steps; compare log-probs and argmax."""
    if device.type != "cuda":
        return {}
    g = torch.Generator().manual_seed(1)
    h, w = cfg.img_shape[:2]
    s32, s16 = policy.initial_state(2 * n, device), policy.initial_state(2 * n, device)
    max_diff, agree, total = 0.0, 0, 0
    for t in range(steps):
        img = torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8).to(device)
        goal = torch.randn(n, cfg.mineclip_embed_dim, generator=g).to(device)
        first = torch.full((n,), t == 0, device=device)
        a32, s32, i32 = policy.act(img, goal, first, s32, cond_scale=scale, stochastic=False)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            a16, s16, i16 = policy.act(img, goal, first, s16, cond_scale=scale, stochastic=False)
        l32, l16 = i32["logits"], i16["logits"]
        for k in a32:
            lp32 = l32[k].float() - l32[k].float().logsumexp(-1, keepdim=True)
            lp16 = l16[k].float() - l16[k].float().logsumexp(-1, keepdim=True)
            max_diff = max(max_diff, float((lp32.exp() - lp16.exp()).abs().max()))
            agree += int((a32[k] == a16[k]).sum())
            total += a32[k].numel()
    return {"bf16_max_prob_diff": max_diff, "bf16_argmax_agreement": agree / total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=["tiny", "2x"], default=None, help="default: 2x on GPU, tiny on CPU")
    ap.add_argument("--device", default=None, help="default: cuda if available")
    ap.add_argument("--envs", default="1,16", help="comma-separated numbers of environments (default 1,16)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cond-scale", type=float, default=6.0)
    ap.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph path")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = args.config or ("2x" if device.type == "cuda" else "tiny")
    cfg = PolicyConfig.vpt_2x() if name == "2x" else PolicyConfig.tiny(mineclip_embed_dim=512, img_shape=[128, 128, 3])
    torch.manual_seed(0)
    policy = STEVE1Policy(cfg).to(device).eval()
    params = sum(p.numel() for p in policy.parameters())
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"policy {name}: {params / 1e6:.1f} M parameters, {hw}, torch {torch.__version__}")

    rows = []
    for n in [int(x) for x in args.envs.split(",")]:
        variants = {
            "naive fp32 (unguided)": naive_unguided(policy, cfg, n, device),
            "naive guided (2 forwards, fp32)": naive_guided(policy, cfg, n, device, args.cond_scale),
            "shared-CNN guided (fp32)": shared_cnn_guided(policy, cfg, n, device, args.cond_scale),
        }
        if device.type == "cuda":
            variants["shared-CNN guided (bf16)"] = shared_cnn_guided(policy, cfg, n, device, args.cond_scale, torch.bfloat16)
            if not args.no_graph:
                for amp, label in ((None, "fp32"), (torch.bfloat16, "bf16")):
                    try:
                        variants[f"optimised guided ({label} + CUDA graph)"] = graphed_guided(policy, cfg, n, device,
                                                                                              args.cond_scale, amp)
                    except Exception as e:  # noqa: BLE001 - report and go on
                        print(f"CUDA graph capture ({label}) failed for {n} envs: {type(e).__name__}: {e}")
        for label, fn in variants.items():
            ms = _time(fn, device, args.iters, args.warmup)
            med = statistics.median(ms)
            rows.append({"envs": n, "variant": label, "ms_per_step_median": med, "ms_p90": sorted(ms)[int(0.9 * len(ms))],
                         "env_steps_per_s": n / (med / 1000)})
            print(f"{n:4d} envs  {label:40s} {med:8.3f} ms/step  {n / (med / 1000):10.0f} env-steps/s")
        del variants
        if device.type == "cuda":
            torch.cuda.empty_cache()
    agreement = bf16_agreement(policy, cfg, device, args.cond_scale)
    if agreement:
        print(f"bf16 vs fp32 (guided, argmax): max |p32 - p16| = {agreement['bf16_max_prob_diff']:.4f}, "
              f"argmax agreement {100 * agreement['bf16_argmax_agreement']:.1f} %")
    print(f"original code (2x, H100): {ORIGINAL['fp32_ms']} ms fp32, {ORIGINAL['guided_ms']} ms guided, "
          f"{ORIGINAL['batched64_env_steps_per_s']} env-steps/s with 64 envs")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": name, "params": params, "device": hw, "torch": torch.__version__,
                                               "rows": rows, **agreement, "original": ORIGINAL}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
