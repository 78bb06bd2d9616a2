"""Pairwise keys and the correlated randomness they give, with no dealer.

Party ``i`` draws a 256-bit key ``k_i`` from the OS CSPRNG and sends it to
party ``i - 1`` over their encrypted, authenticated link (one round at the
start of a session, :func:`agree`). Afterwards party ``i`` holds ``k_i``
(shared with ``i - 1``) and ``k_{i+1}`` (shared with ``i + 1``); the third key
``k_{i+2}`` it never sees. Each key feeds AES-CTR streams
(:class:`~ppml.servers.mpc.fast.prg.KeyedPRG`), one per purpose, derived
with a public label, and both holders of a key read its streams in the same
order (every party runs the same protocol steps), so they stay in step with
no messages:

* ``F_j`` (label ``rss``): component ``j`` of a random replicated sharing is
  ``F_j``'s next output; a zero sharing is ``F_i - F_{i+1}`` at party ``i``
  (the three sum to 0, and each is uniform to anyone missing one key), the
  binary one ``F_i XOR F_{i+1}``;
* ``G_j`` (label ``pair``): randomness common to the two holders of ``k_j``
  only, e.g. party 2's truncation masks that party 0 must also know.

A party that learned a third key would hold every component; that is the
honest-majority assumption (no two servers collude), as for any replicated
sharing.
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.prg import KEY_BYTES, U64, KeyedPRG, Ring, new_key
from ppml.servers.mpc.rep3.rounds import Array, Expect, Round, Steps
from ppml.servers.mpc.rep3.stream import ReadAhead

PARTIES = 3
_KEY = Expect((KEY_BYTES,), np.dtype(np.uint8))


def prev_of(rank: int) -> int:
    return (rank - 1) % PARTIES


def next_of(rank: int) -> int:
    return (rank + 1) % PARTIES


class Correlated:
    """Party ``rank``'s streams from ``k_rank`` (own) and ``k_{rank+1}`` (next). Not thread-safe."""

    def __init__(self, rank: int, own: bytes, nxt: bytes) -> None:
        if rank not in range(PARTIES):
            raise ValueError("rank must be 0, 1 or 2")
        if own == nxt:
            raise ValueError("the two pairwise keys must differ")
        self.rank = rank
        # read ahead in blocks: the same words in the same order, far fewer cipher calls
        self._own = ReadAhead(KeyedPRG.derived(own, b"ppml.rep3/rss"))
        self._nxt = ReadAhead(KeyedPRG.derived(nxt, b"ppml.rep3/rss"))
        self._pair = {
            prev_of(rank): ReadAhead(KeyedPRG.derived(own, b"ppml.rep3/pair")),
            next_of(rank): ReadAhead(KeyedPRG.derived(nxt, b"ppml.rep3/pair")),
        }

    def zero(self, shape: tuple[int, ...]) -> Ring:
        """This party's share of an additive sharing of 0 (fresh, uniform alone)."""
        out: Ring = self._own.ring(shape)  # a fresh slice of the read-ahead block: ours to change
        out -= self._nxt.ring(shape)
        return out

    def zero_bits(self, shape: tuple[int, ...]) -> U64:
        """This party's share of an XOR sharing of 0."""
        out: U64 = self._own.uint64(shape)
        out ^= self._nxt.uint64(shape)
        return out

    def random(self, shape: tuple[int, ...]) -> tuple[Ring, Ring]:
        """Components (rank, rank + 1) of a replicated sharing of a uniform ring value."""
        return self._own.ring(shape), self._nxt.ring(shape)

    def common(self, peer: int, shape: tuple[int, ...]) -> Ring:
        """Uniform values only this party and ``peer`` know (their ``pair`` stream)."""
        return self._pair[peer].ring(shape)


def agree(rank: int) -> Steps[Correlated]:
    """One round: send a fresh key to the previous party, receive the next party's."""
    own = np.frombuffer(new_key(), dtype=np.uint8).copy()
    got = yield Round(send={prev_of(rank): [own]}, expect={next_of(rank): [_KEY]})
    nxt: Array = got[next_of(rank)][0]
    return Correlated(rank, own.tobytes(), nxt.tobytes())
