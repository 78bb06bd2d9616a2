"""Keyed randomness: every secret random value CrypTen draws comes from AES-256-CTR.

* :mod:`.keyed_random` — :class:`~.keyed_random.KeyedGenerator` and CrypTen's
  two draws over it (imports nothing of ppml's);
* :mod:`.prng` — who makes which key and where it travels;
* :mod:`.patches` — ``install()``: the one place CrypTen's streams are replaced.

One way: patches -> prng -> keyed_random.
"""
