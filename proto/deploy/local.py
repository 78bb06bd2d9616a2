"""Moved: ``LocalCluster`` lives in :mod:`ppml.client.deploy.local` (kept here for one release).

Import it as ``from ppml.client import LocalCluster``.
"""

import warnings

from ppml.client.deploy.local import LocalCluster, free_port, wait_serving, write_local_topology

warnings.warn(
    "ppml.proto.deploy.local is deprecated and will be removed in the next release: "
    "use `from ppml.client import LocalCluster`",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["LocalCluster", "free_port", "wait_serving", "write_local_topology"]
