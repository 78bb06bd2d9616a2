"""ppml.proto."""
