"""The MPC engine: one CrypTen party per server, and the dealer.

Subpackages, lowest first (each imports only those above it in this list):

* :mod:`.core` — CrypTen itself (compat patches, planned dealer requests,
  models over shares, checked clipping);
* :mod:`.fast` — a dealer-assisted two-party inference engine (FSS
  comparisons, weights masked once), numpy only;
* :mod:`.randomness` — keyed AES-256-CTR streams and who holds which key;
* :mod:`.network` — CrypTen's communicator over mutual TLS, the mesh of links,
  the listener, the test relay;
* :mod:`.training`, :mod:`.aggregation`, :mod:`.fast.service` — training
  maths, federated aggregation, the fast engine's service side.

Modules at this level, on top of them all:

* :mod:`.epochs` — the topology file to an epoch's session parameters;
* :mod:`.session` — join/leave an epoch as a compute party;
* :mod:`.worker` — the server's one MPC thread;
* :mod:`.dealer` — ``ppml-dealer``.
"""
