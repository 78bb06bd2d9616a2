"""The MPC engine: one CrypTen party per server, and the dealer.

* :mod:`.crypten_compat` — the documented patches that make CrypTen 0.4.1 run
  on torch 2.13 (import CrypTen only through it);
* :mod:`.keyed_random` — :class:`~.keyed_random.KeyedGenerator` (AES-256-CTR)
  and ``install()``, the one patch that keys every CrypTen random stream;
  :mod:`.prng` — who makes which key and where it travels;
* :mod:`.transport` — ``TlsCommunicator``, CrypTen's communicator over mutual
  TLS, and ``install()``/``configure()``; :mod:`.mesh` — an epoch's
  ``SessionParams`` and its mesh of links; :mod:`.listener` — the process's
  one MPC listener; :mod:`.tls_links` — TLS contexts, the hello, dialing;
  :mod:`.links` — framed one-way links; :mod:`.reduce_ops` — combining shares;
* :mod:`.epochs` — the topology file to an epoch's session parameters;
  :mod:`.session` — join/leave an epoch as a compute party;
* :mod:`.worker` — the server's one MPC thread; :mod:`.model` — CrypTen models
  over shares; :mod:`.trainer` — one party's side of a training job;
* :mod:`.dealer` — ``ppml-dealer``;
* :mod:`.relay` — a recording, delaying TCP relay for tests and benchmarks;
* :mod:`.fast` — a dealer-assisted two-party inference engine (FSS comparisons,
  weights masked once), numpy only; not yet used by the servers.
"""
