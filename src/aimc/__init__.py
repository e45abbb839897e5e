"""aimc: train, fine-tune, run and evaluate STEVE-1 style agents.

Layers (each a sub-package):
  models/       pure nn.Modules (VPT/STEVE-1 policy, MineCLIP, prior CVAE)
  checkpoints/  official file formats, key mapping, safe loading
  actions/      Minecraft and generic discrete action spaces
  data/         episode store, converters, embedding, splits, loader
  envs/         Crafter (built-in world) and MineRL adapters
  train/        training loops (policy, prior, MineCLIP)
  agent/        acting with classifier-free guidance
  eval/         evaluation suites, metrics, reports
  configs/      YAML presets shipped with the package
"""

__version__ = "0.1.0"
