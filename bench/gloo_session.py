"""The plain-gloo MPC session, kept for ``bench/`` baselines only (the servers use TLS).

One CrypTen party's MPC session: join a rendezvous, leave it, rejoin.

CrypTen keeps one communicator per process, configured from environment
variables. ppml runs sessions in *epochs*: the leader (rank 0) hosts one
TCP store for its whole life, and each epoch uses a fresh key prefix in it
(``ppml://host:port/<prefix>``, served by the rendezvous handler registered
here). After a peer dies every survivor leaves the session and all parties
join the next epoch; a restarted leader starts a new store and prefixes carry
its incarnation, so stale parties never meet new ones.

Every session uses CrypTen's TTP provider: Beaver triples come from the dealer
(rank ``world_size``). Nothing here runs CrypTen's insecure TFP provider.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import torch
import torch.distributed as dist

from ppml.servers.mpc.core.crypten_compat import crypten, set_process_group_timeout

log = logging.getLogger(__name__)

_SCHEME = "ppml"
_master_lock = threading.Lock()
_master_store: dict[tuple[str, int], dist.TCPStore] = {}


def host_master_store(host: str, port: int) -> None:
    """Rank 0 only: start the long-lived rendezvous store (idempotent)."""
    with _master_lock:
        if (host, port) not in _master_store:
            _master_store[(host, port)] = dist.TCPStore(
                host,
                port,
                is_master=True,
                wait_for_workers=False,
                timeout=timedelta(seconds=60),
            )


def _rendezvous_handler(
    url: str, timeout: timedelta = timedelta(seconds=60), **_: Any
) -> Iterator[tuple[dist.Store, int, int]]:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    rank, world_size = int(query["rank"][0]), int(query["world_size"][0])
    host, port = parsed.hostname or "127.0.0.1", int(parsed.port or 0)
    prefix = parsed.path.strip("/")
    with _master_lock:
        master = _master_store.get((host, port))
    store: dist.Store
    if master is not None:
        store = master
    else:
        store = dist.TCPStore(host, port, is_master=False, timeout=timeout)
    yield dist.PrefixStore(prefix, store), rank, world_size
    raise RuntimeError("ppml:// rendezvous cannot be re-used; join a new epoch")


dist.register_rendezvous_handler(_SCHEME, _rendezvous_handler)


def configure_crypten(timeout_s: float) -> None:
    """Settings every ppml MPC process uses (parties and dealer alike)."""
    set_process_group_timeout(timeout_s)
    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True  # count rounds and bytes
    torch.set_num_threads(1)


def _set_env(rank: int, world_size: int, store_address: tuple[str, int], prefix: str) -> None:
    host, port = store_address
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        DISTRIBUTED_BACKEND="gloo",
        RENDEZVOUS=f"{_SCHEME}://{host}:{port}/{prefix}",
    )


def join(
    rank: int, world_size: int, store_address: tuple[str, int], prefix: str, timeout_s: float
) -> None:
    """Join epoch ``prefix`` as compute party ``rank`` (blocks until all joined)."""
    configure_crypten(timeout_s)
    _set_env(rank, world_size, store_address, prefix)
    crypten.init()


def join_as_dealer(
    world_size: int, store_address: tuple[str, int], prefix: str, timeout_s: float
) -> None:
    """Prepare the environment for the dealer (CrypTen's TTP has rank world_size)."""
    configure_crypten(timeout_s)
    _set_env(world_size, world_size, store_address, prefix)


def communicator() -> Any:
    return crypten.communicator.get()


def comm_stats() -> tuple[int, int]:
    """(rounds, bytes) this party has counted in the current session."""
    comm = communicator()
    return int(comm.comm_rounds), int(comm.comm_bytes)


def is_joined() -> bool:
    return bool(crypten.is_initialized())


def leave() -> None:
    """Leave the current session, healthy or broken; never raises.

    On a healthy session rank 0's ``crypten.uninit()`` also tells the dealer
    to end its session. On a broken one the process groups are destroyed one
    by one and CrypTen's singletons are reset so the next ``join`` starts clean.
    """
    from crypten.communicator import DistributedCommunicator
    from crypten.mpc.provider.ttp_provider import TTPClient

    if DistributedCommunicator.instance is not None:
        try:
            crypten.uninit()
        except Exception as exc:  # broken session: peers gone
            log.info("leaving a broken MPC session (%s)", exc)
            for group in ("main_group", "ttp_group", "ttp_comm_group"):
                with contextlib.suppress(Exception):
                    dist.destroy_process_group(getattr(DistributedCommunicator.instance, group))
            with contextlib.suppress(Exception):
                if dist.is_initialized():
                    dist.destroy_process_group()
            DistributedCommunicator.instance = None
    TTPClient.uninit()


def gloo_dealer() -> object:
    """ppml's dealer with its former per-party seeds sent over gloo (baseline only).

    torch's generator keeps 32 bits of each seed: this is the insecure
    behaviour the keyed streams replaced, kept to measure against.
    """
    import torch

    from ppml.servers.mpc.core.crypten_compat import csprng_seed
    from ppml.servers.mpc.dealer import Dealer

    class GlooDealer(Dealer):
        def _setup_generators(self) -> None:
            world_size = crypten.communicator.get().get_world_size()
            seeds = [torch.tensor(csprng_seed()) for _ in range(world_size)]
            pending = [
                dist.isend(tensor=seeds[i], dst=i, group=self.ttp_group)
                for i in range(world_size)
            ]
            self.generators = []
            for seed in seeds:
                generator = torch.Generator(device="cpu")  # public baseline: 32-bit seeds
                generator.manual_seed(int(seed.item()))  # public baseline only
                self.generators.append(generator)
            self.generators_cuda = [None] * world_size
            for request in pending:
                if request is not None:
                    request.wait()
            dist.barrier(group=self.ttp_group)

    return GlooDealer()
