"""Starter models: presets, Branch-Train-Merge pretraining, the generalist, checkpoints."""
