"""Evaluation: held-out accuracy during training, the benchmark runner for saved checkpoints, and the
lm-eval bridge."""
