"""Who holds which key: CrypTen's generator setup, rewritten for keyed streams.

These functions replace CrypTen's own (see
:func:`ppml.servers.mpc.randomness.patches.install`). Keys are 256 bits from
``os.urandom``; each travels only over one encrypted, mutually authenticated
link of :mod:`ppml.servers.mpc.network.transport`, to the one party that needs it.

========  ==================  =============================================
stream    made by             known to
========  ==================  =============================================
next      party i             party i ("next") and party i+1 ("prev")
local     party i             party i only
dealer i  the dealer          the dealer and party i (TTPClient.generator)
global    rank 0 (64 bits)    everybody: PUBLIC randomness (dropout masks)
joint     every party         every party, nobody else (DP-SGD batches)
========  ==================  =============================================

A joint key (:func:`joint_secret_key`) is drawn afresh for each use; it is
not a CrypTen stream.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

from ppml.servers.mpc.randomness.keyed_random import (
    KEY_BYTES,
    KeyedGenerator,
    key_tensor,
    tensor_key,
)

_CPU = torch.device("cpu")


def _communicator() -> Any:
    from ppml.servers.mpc.core.crypten_compat import crypten

    comm = crypten.communicator.get()
    if comm.get_world_size() >= 2 and not getattr(comm, "ENCRYPTED_LINKS", False):
        raise RuntimeError(
            "keyed randomness needs ppml's encrypted communicator "
            "(ppml.servers.mpc.network.transport.install()); keys would travel in the clear"
        )
    return comm


def setup_keyed_prng() -> None:
    """Replacement for ``crypten._setup_prng`` (run by ``crypten.init()`` on parties).

    Party i draws the "next" key and sends it to party i+1, which uses it as
    its "prev" key, so PRZS shares ``prev - next`` sum to zero over all
    parties. With one party, prev = next.
    """
    from ppml.servers.mpc.core.crypten_compat import crypten

    comm = _communicator()
    world, rank = comm.get_world_size(), comm.get_rank()
    next_key = os.urandom(KEY_BYTES)
    if world >= 2:
        incoming = torch.empty(KEY_BYTES, dtype=torch.uint8)
        sent = comm.isend(key_tensor(next_key), (rank + 1) % world)
        received = comm.irecv(incoming, (rank - 1) % world)
        sent.wait()
        received.wait()
        prev_key = tensor_key(incoming)
    else:
        prev_key = next_key
    seed = torch.tensor(int.from_bytes(os.urandom(8), "big", signed=True))
    global_seed = int(comm.broadcast(seed, 0).item())

    generators = crypten.generators  # mutate in place: CrypTen modules hold this dict
    for streams in generators.values():
        streams.clear()
    generators["prev"][_CPU] = KeyedGenerator(prev_key)
    generators["next"][_CPU] = KeyedGenerator(next_key)
    generators["local"][_CPU] = KeyedGenerator()
    public = torch.Generator(device="cpu")  # public: dropout masks only, never a secret
    public.manual_seed(global_seed)  # public: every party knows this seed
    generators["global"][_CPU] = public


def joint_secret_key() -> bytes:
    """A fresh 256-bit key that every party holds and nobody outside the servers.

    Collective: every party calls it at the same point. Each draws 32 bytes
    from ``os.urandom`` and sends them to every other party over the
    encrypted links; the key is SHA-256 of the contributions in rank order,
    uniformly random as long as one party's contribution is. The caller must
    keep it in memory only (never store, log or send it on).
    """
    comm = _communicator()
    mine = key_tensor(os.urandom(KEY_BYTES))
    parts = comm.all_gather(mine) if comm.get_world_size() >= 2 else [mine]
    return hashlib.sha256(b"".join(tensor_key(part) for part in parts)).digest()


def refuse_manual_seeds(*_: Any) -> None:
    """Replacement for ``crypten._sync_seeds`` (``crypten.manual_seed``)."""
    raise RuntimeError("crypten.manual_seed is disabled: ppml's MPC randomness is keyed")


def receive_dealer_key(client: Any) -> None:
    """Replacement for ``TTPClient.__TTPClient._setup_generators``: key from the dealer."""
    comm = _communicator()
    received = comm.recv(torch.empty(KEY_BYTES, dtype=torch.uint8), comm.get_ttp_rank())
    client.generator = KeyedGenerator(tensor_key(received))
    client.generator_cuda = None


def deal_party_keys(server: Any) -> None:
    """Replacement for ``TTPServer._setup_generators``: one fresh key per party.

    Party i's key goes to party i only, over the dealer's link to it; the
    dealer keeps ``server.generators[i]`` in lockstep with party i's
    ``TTPClient.generator``.
    """
    comm = _communicator()
    world = comm.get_world_size()
    server.generators = [KeyedGenerator() for _ in range(world)]
    server.generators_cuda = [None] * world
    sent = [comm.isend(key_tensor(g.key), rank) for rank, g in enumerate(server.generators)]
    for request in sent:
        request.wait()


def clear_generators() -> None:
    """Forget the session's keyed generators (after leaving a session)."""
    from ppml.servers.mpc.core.crypten_compat import crypten

    for streams in crypten.generators.values():
        streams.clear()
