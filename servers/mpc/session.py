"""Join and leave one secured MPC epoch: keyed randomness over the TLS transport.

Order for a compute party (every epoch)::

    session.join(params)      # install() + CrypTen settings + configure(params) + crypten.init()
    ...                       # CrypTen MPC on this thread only
    session.leave()           # never raises; then join(next_params) for the next epoch

The dealer runs :func:`ppml.servers.mpc.dealer.serve_epoch` instead.
"""

from __future__ import annotations

import contextlib
import logging

from ppml.servers.mpc.core import no_dealer, truncation, ttp_plan
from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.servers.mpc.network import transport
from ppml.servers.mpc.network.mesh import SessionParams
from ppml.servers.mpc.randomness import patches as keyed_random_patches
from ppml.servers.mpc.randomness import prng

log = logging.getLogger(__name__)


def install() -> None:
    """The patches: keyed randomness, ppml's communicator, planned dealer requests,
    exact truncation (idempotent)."""
    keyed_random_patches.install()
    transport.install()
    ttp_plan.install()
    truncation.install()
    no_dealer.install()


def configure_crypten(dealer: bool = True) -> None:
    """Settings every ppml MPC process uses: the dealer's triples, counted traffic.

    A session without a dealer (``engine = "replicated"``) gets a provider that
    refuses every request for triples (:mod:`ppml.servers.mpc.core.no_dealer`).
    """
    crypten.cfg.mpc.provider = "TTP" if dealer else no_dealer.NAME
    crypten.cfg.communicator.verbose = True


def join(params: SessionParams) -> None:
    """Join epoch ``params.epoch`` as rank ``params.rank`` (blocks until linked).

    Raises ``RuntimeError`` if the mesh is not complete within the join timeout.
    """
    install()
    configure_crypten(dealer=len(params.peers) > params.world_size)
    transport.configure(params)
    crypten.init()


def leave() -> None:
    """Leave the current epoch, healthy or broken; never raises."""
    try:
        if crypten.communicator.is_initialized():
            crypten.uninit()
    except Exception as exc:  # pragma: no cover - shutdown itself does not raise
        log.info("leaving a broken MPC session (%s)", exc)
    with contextlib.suppress(Exception):
        crypten.mpc.provider.ttp_provider.TTPClient.uninit()
    prng.clear_generators()


def is_joined() -> bool:
    return bool(crypten.communicator.is_initialized())


def comm_stats() -> tuple[int, int]:
    """(rounds, bytes) this process has counted in the current session."""
    comm = crypten.communicator.get()
    return int(comm.comm_rounds), int(comm.comm_bytes)


FAILURE_BARRIER_S = 5.0  # how long a party that failed a job waits for the others to fail it too


def survives_job_failure() -> bool:
    """After a job raised on this party: may the session go on?

    Only if no link broke and every compute party reaches a barrier, i.e. they
    all failed the same job at the same point (a deterministic failure, such
    as an operation CrypTen does not support). A party still inside one of
    the job's collectives receives the barrier where it expected data, which
    breaks its links: then the session restarts, as after a crash.

    A party that did *not* fail the job (the failure was local to this party,
    after the job's last collective) is idle or in the next job and never
    sends the barrier. So the barrier waits at most :data:`FAILURE_BARRIER_S`
    (parties that fail alike reach it within their skew, well below that),
    not the session's whole timeout: then it breaks the session, every link
    is shut down, the peers' next receive fails at once, and the session
    restarts within seconds instead of stalling every job for
    ``mpc_timeout_s``.
    """
    if not is_joined():
        return False
    comm = crypten.communicator.get()
    if getattr(comm, "broken", None) is not None:
        return False
    bounded = getattr(comm, "reads_bounded", None)
    try:
        with bounded(FAILURE_BARRIER_S) if bounded else contextlib.nullcontext():
            comm.barrier()
    except Exception:
        return False
    return True
