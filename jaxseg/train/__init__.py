"""Training: state, steps, data parallelism, checkpoints and the loop."""
