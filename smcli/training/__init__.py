"""Training matchers: data joining, ranking losses, the training loop, resumable checkpoints."""
