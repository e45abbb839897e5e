"""Hyperparameter search for ``aimc train`` on Optuna: ``aimc tune``.

``space`` reads the search space file, ``study`` runs trials (every trial an ordinary training
run) on a shared database with pruning and crash recovery, ``report`` writes the summary, the
best config as a preset, plots and an HTML page.
"""
