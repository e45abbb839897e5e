#!/usr/bin/env bash
# One device session: the acting benchmark (2x config) and the agent's CUDA/bf16 path.
# usage: bash benchmarks/gpu_check.sh OUT_DIR
set -euo pipefail
out=${1:-.}
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 benchmarks/act.py --config 2x --envs 1,64,256 --iters 30 --warmup 5 --json "$out/act_2x.json" 2>&1 | tee "$out/act_2x.log"
python3 - <<'PY' 2>&1 | tee "$out/agent_cuda.log"
import numpy as np, torch
from aimc.agent.agent import Agent
from aimc.models.vpt import PolicyConfig, STEVE1Policy
p = STEVE1Policy(PolicyConfig.tiny(action_heads={"action": 17}, mineclip_embed_dim=16))
for amp in (None, torch.bfloat16):
    for graph in (False, True):
        a = Agent(p, None, None, cond_scale=6.0, device="cuda", amp_dtype=amp, cuda_graph=graph)
        a.reset(4)
        for t in range(3):
            acts = a.act(np.full((4, 64, 64, 3), 40 * t, np.uint8), np.random.randn(4, 16).astype(np.float32),
                         np.array([t == 0] * 4))
            assert acts["action"].shape == (4,) and acts["action"].max() < 17
        a.reset(4)
        print("agent on cuda, amp", amp, "graph", graph, "ok", acts)
# graph and eager give the same argmax actions
from aimc.agent.agent import GraphedGuidedAct
torch.manual_seed(0)
q = STEVE1Policy(PolicyConfig.tiny(action_heads={"action": 17}, mineclip_embed_dim=16)).cuda().eval()
g = GraphedGuidedAct(q, 4, 6.0, stochastic=False)
st = q.initial_state(8, "cuda")
for t in range(4):
    img = torch.randint(0, 255, (4, 64, 64, 3), dtype=torch.uint8, device="cuda")
    goal = torch.randn(4, 16, device="cuda"); first = torch.tensor([t == 0] * 4, device="cuda")
    ea, st, info = q.act(img, goal, first, st, cond_scale=6.0, stochastic=False)
    ga = g(img, goal, first)
    assert torch.equal(ea["action"], ga["action"]), (ea, ga)
    torch.testing.assert_close(g.info["sampled_log_prob"], info["sampled_log_prob"], rtol=1e-4, atol=1e-4)
print("CUDA graph step == eager step (argmax, log-probs), 4 steps")
PY
