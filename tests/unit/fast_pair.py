"""Two fast-engine parties in one process, for the engine's unit tests: encode, forward, spy."""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.bundle import Bundle
from ppml.servers.mpc.fast.engine import PartyModel, forward
from ppml.servers.mpc.fast.gates import split
from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
from ppml.servers.mpc.fast.prg import KeyedPRG, Ring

SCALE = 1 << 16
RNG = KeyedPRG()


def encode(a: np.ndarray) -> Ring:
    """Fixed point at 16 fractional bits, rounded to nearest."""
    return np.rint(a * SCALE).astype(np.int64)


def forward_pair(
    models: tuple[PartyModel, PartyModel],
    bundles: tuple[Bundle, Bundle],
    x: np.ndarray,
    spy: list[Ring] | None = None,
) -> tuple[np.ndarray, int, int]:
    """Reconstructed float outputs, rounds and bytes sent by party 0.

    ``spy`` collects every array party 0 receives (for tests of its view).
    """
    xs = split(encode(x), RNG)
    ex0, ex1 = queue_exchanges()

    def watched(mine: Ring) -> Ring:
        peer = ex0(mine)
        if spy is not None:
            spy.append(peer.copy())
        return peer

    (y0, s0), (y1, s1) = run_pair(
        lambda: forward(models[0], bundles[0], xs[0], watched),
        lambda: forward(models[1], bundles[1], xs[1], ex1),
    )
    assert (s0.rounds, s0.bytes_sent) == (s1.rounds, s1.bytes_sent)
    with np.errstate(over="ignore"):
        return (y0 + y1).astype(np.float64) / SCALE, s0.rounds, s0.bytes_sent
