"""ppml.servers.mpc: secure multi-party computation engines."""
