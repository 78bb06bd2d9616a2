"""The secured MPC engine: keyed randomness and one mutually authenticated TLS transport.

* :mod:`.keyed_random` — :class:`~.keyed_random.KeyedGenerator` (AES-256-CTR)
  and ``install()``, the one patch that keys every CrypTen random stream;
* :mod:`.prng` — who makes which key and where it travels;
* :mod:`.transport` — ``TlsCommunicator``, CrypTen's communicator over TLS,
  and ``install()``/``configure()``;
* :mod:`.mesh` — an epoch's ``SessionParams`` and its mesh of links;
  :mod:`.listener` — the process's one MPC listener; :mod:`.tls_links` —
  TLS contexts, the hello, dialing; :mod:`.links` — framed one-way links;
  :mod:`.reduce_ops` — how received shares are combined;
* :mod:`.session` — join/leave an epoch as a compute party;
  :mod:`.secure_dealer` — the dealer on this engine;
* :mod:`.relay` — a recording, delaying TCP relay for tests and benchmarks.
"""
