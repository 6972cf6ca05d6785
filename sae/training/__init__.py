"""Training: the loop, checkpoints, and where metrics are logged."""
