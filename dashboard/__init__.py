"""ppml.dashboard."""
