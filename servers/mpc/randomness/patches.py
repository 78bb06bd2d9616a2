"""Patch CrypTen so that every MPC random value is keyed (install, uninstall).

:func:`install` patches CrypTen (never its files) in one place:

1. ``crypten.common.rng.generate_random_ring_element`` and
   ``generate_kbit_random_tensor``, and the copies of those names already
   imported into ``crypten.mpc.primitives.arithmetic``,
   ``crypten.mpc.primitives.binary``, ``crypten.mpc.provider.ttp_provider``
   and ``crypten.mpc.provider.tfp_provider``, become :func:`random_ring` and
   :func:`random_kbit`: they draw from the :class:`KeyedGenerator` passed as
   ``generator``, or from the party's ``"local"`` one when it is ``None``, and
   refuse anything else (a torch generator is never used for a secret).
2. ``crypten._setup_prng`` (run by ``crypten.init()`` on each compute party)
   becomes :func:`ppml.servers.mpc.randomness.prng.setup_keyed_prng`:
   ``"prev"``/``"next"`` are keyed with fresh 256-bit keys swapped between
   neighbouring parties over the communicator, which must be ppml's encrypted
   one; ``"local"`` gets a private key; ``"global"`` stays a torch generator
   seeded by rank 0 and is public randomness only (CrypTen draws dropout masks
   from it). ``crypten._sync_seeds`` (behind ``crypten.manual_seed``) refuses.
3. ``TTPClient``'s ``_setup_generators`` receives the party's 256-bit key
   from the dealer; ``TTPServer._setup_generators`` draws one key per party
   and sends each key only to its party (ppml's dealer uses the same function,
   see :mod:`ppml.servers.mpc.dealer`). Both refuse to run unless the
   communicator is ppml's encrypted one.

Invariant: after :func:`install`, no CrypTen code path draws a secret value
from a ``torch.Generator``; only ``generators["global"]`` is one, and it is public.
"""

from __future__ import annotations

import importlib
from typing import Any

from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.servers.mpc.randomness import prng
from ppml.servers.mpc.randomness.keyed_random import random_kbit, random_ring

_RING_NAME, _KBIT_NAME = "generate_random_ring_element", "generate_kbit_random_tensor"
_RNG_NAMES = {  # module -> the rng names it holds (its own copies, bound at import)
    "crypten.common.rng": (_RING_NAME, _KBIT_NAME),
    "crypten.mpc.primitives.arithmetic": (_RING_NAME,),
    "crypten.mpc.primitives.binary": (_KBIT_NAME,),
    "crypten.mpc.provider.ttp_provider": (_RING_NAME, _KBIT_NAME),
    "crypten.mpc.provider.tfp_provider": (_RING_NAME, _KBIT_NAME),
}
_KEYED = {_RING_NAME: random_ring, _KBIT_NAME: random_kbit}
_saved: dict[tuple[str, str], Any] = {}


def _patch(owner: Any, owner_name: str, attribute: str, value: Any) -> None:
    if (owner_name, attribute) not in _saved:
        _saved[(owner_name, attribute)] = getattr(owner, attribute)
    setattr(owner, attribute, value)


def install() -> None:
    """Make every CrypTen MPC random value keyed (see the module docstring).

    Idempotent. Call it before ``crypten.init()``, in every compute party and
    in the dealer, together with :func:`ppml.servers.mpc.network.transport.install`
    (the key exchange needs the encrypted communicator).
    """
    for name, attributes in _RNG_NAMES.items():
        module = importlib.import_module(name)
        for attribute in attributes:
            _patch(module, name, attribute, _KEYED[attribute])
    _patch(crypten, "crypten", "_setup_prng", prng.setup_keyed_prng)
    _patch(crypten, "crypten", "_sync_seeds", prng.refuse_manual_seeds)
    ttp = crypten.mpc.provider.ttp_provider
    client_class = ttp.TTPClient._TTPClient__TTPClient
    _patch(client_class, "TTPClient", "_setup_generators", prng.receive_dealer_key)
    _patch(ttp.TTPServer, "TTPServer", "_setup_generators", prng.deal_party_keys)


def uninstall() -> None:
    """Undo :func:`install` (tests only)."""
    owners = {name: importlib.import_module(name) for name in _RNG_NAMES}
    owners["crypten"] = crypten
    ttp = crypten.mpc.provider.ttp_provider
    owners["TTPClient"] = ttp.TTPClient._TTPClient__TTPClient
    owners["TTPServer"] = ttp.TTPServer
    for (owner_name, attribute), value in _saved.items():
        setattr(owners[owner_name], attribute, value)
    _saved.clear()


def is_installed() -> bool:
    return crypten.common.rng.generate_random_ring_element is random_ring
