"""ppml's dealer on the secured engine: keyed per-party streams over TLS links.

:class:`SecureDealer` is :class:`ppml.servers.dealer.Dealer` (CrypTen's TTP
functions, one session per ``serve``) with one change: its per-party streams
are :class:`~ppml.servers.mpc.keyed_random.KeyedGenerator` objects under fresh
256-bit keys, each key sent only to its party over that party's encrypted
link (:func:`ppml.servers.mpc.prng.deal_party_keys`).

The dealer's listener: the dealer is rank ``world_size``, the highest, so
every compute party dials it and it dials nobody. ``params.peers[world_size]``
must carry the host and port it binds (once, for the life of the process),
and its certificate's name must be ``params.peers[world_size].name``.
"""

from __future__ import annotations

from ppml.servers.dealer import Dealer
from ppml.servers.mpc import prng, session, transport
from ppml.servers.mpc.mesh import SessionParams


class SecureDealer(Dealer):
    """CrypTen's TTP with keyed per-party streams."""

    def _setup_generators(self) -> None:
        prng.deal_party_keys(self)


def serve_epoch(dealer: SecureDealer, params: SessionParams) -> str:
    """Serve epoch ``params.epoch`` until rank 0 ends it or a party fails; returns why.

    Raises ``RuntimeError`` if the parties do not all link within the join timeout.
    """
    if params.rank != params.world_size:
        raise ValueError("the dealer has rank world_size")
    session.install()
    session.configure_crypten()
    transport.configure(params)
    return str(dealer.serve())
