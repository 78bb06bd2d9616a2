"""The parties' links: mutual TLS between compute parties and the dealer.

* :mod:`.transport` — ``TlsCommunicator``, CrypTen's communicator over mutual
  TLS, and ``install()``/``configure()``;
* :mod:`.mesh` — an epoch's ``SessionParams`` and its mesh of links;
* :mod:`.listener` — the process's one MPC listener;
* :mod:`.tls_links` — TLS contexts, the hello, dialing;
* :mod:`.links` — framed one-way links; :mod:`.reduce_ops` — combining shares;
* :mod:`.relay` — a recording, delaying TCP relay for tests and benchmarks.

Imports :mod:`ppml.servers.mpc.core` and :mod:`ppml.servers.mpc.randomness`
(a closed communicator forgets the session's keys).
"""
