"""ppml.servers."""
