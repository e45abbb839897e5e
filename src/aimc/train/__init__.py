"""Training: ``aimc train`` for the policy (``policy.py``, one readable loop), with its config
(``config.py``), optimizer and schedule (``optim.py``), LoRA (``lora.py``), checkpoints
(``checkpoint.py``), multi-GPU (``distributed.py``), pre-flight checks (``preflight.py``), run
directories (``rundir.py``) and metrics (``metrics.py``). The prior and MineCLIP have their own
loops here (``prior.py``, ``mineclip.py``).
"""
