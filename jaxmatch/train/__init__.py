"""The one training loop every model shares: sharding, steps, checkpoints, logging, evaluation cadence."""
