"""ppml.training."""
