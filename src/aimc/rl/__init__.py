"""RL fine-tuning of a goal-conditioned policy: PPO with a KL leash to the starting weights (``aimc rl``)."""
