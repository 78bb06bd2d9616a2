"""ppml.client."""
