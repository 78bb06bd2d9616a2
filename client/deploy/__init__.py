"""The operator's deployment tools: they write and check a cluster, they are not read by one.

* :mod:`.local` — ``LocalCluster``: a whole cluster on loopback (the demo,
  ``ppml cluster up``, the tests); public as ``from ppml.client import LocalCluster``;
* :mod:`.provision` — per-host bundles for a multi-host cluster (``ppml deploy init``);
* :mod:`.check` — a host's links before start-up (``ppml deploy check``).

The deployment *contract* every process reads (the topology file, the
certificate layout, token and auth files, channel set-up) stays in
:mod:`ppml.proto.deploy`, shared by the servers, the dealer, the SDK and the
dashboard; these tools only write files in that layout, so nothing on the
server side imports them.
"""
