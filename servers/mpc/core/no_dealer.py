"""A CrypTen provider for sessions with no dealer: any request for correlated randomness fails.

A cluster with ``engine = "replicated"`` runs three servers and no dealer
(:mod:`ppml.servers.mpc.rep3`). Its sessions still use ppml's CrypTen
communicator (links, counters, failure handling), so ``crypten.init()``
needs a provider that does not dial a trusted third party. CrypTen's own
"TFP" provider would hand party 0 every triple; this one hands out nothing:
a CrypTen operation that needs a triple or a random wrap raises
:class:`NoDealerError` naming the cluster's engine, so nothing can fall back
to an insecure path by mistake.
"""

from __future__ import annotations

from typing import Any

from ppml.servers.mpc.core.crypten_compat import crypten

NAME = "NONE"
MESSAGE = (
    "this cluster has no dealer (engine = 'replicated'): CrypTen operations that need "
    "correlated randomness do not run here; the replicated engine does this work"
)


class NoDealerError(RuntimeError):
    """A CrypTen step asked for a dealer's randomness on a cluster without a dealer."""


class NoDealer(crypten.mpc.provider.provider.TupleProvider):
    NAME = NAME

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise NoDealerError(MESSAGE)

    generate_additive_triple = _refuse
    square = _refuse
    generate_binary_triple = _refuse
    wrap_rng = _refuse
    B2A_rng = _refuse
    rand = _refuse


def install() -> None:
    """Register the provider under :data:`NAME` (idempotent)."""
    providers = vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]
    if NAME not in providers:
        providers[NAME] = NoDealer()
