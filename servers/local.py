"""Moved: ``LocalCluster`` is imported from :mod:`ppml.client` (kept here for one release)."""

import warnings

from ppml.client.deploy.local import LocalCluster

warnings.warn(
    "ppml.servers.local is deprecated and will be removed in the next release: "
    "use `from ppml.client import LocalCluster`",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["LocalCluster"]
