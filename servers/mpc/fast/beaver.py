"""Matrix Beaver triples: the product of two secret activations in one opening.

For ``Z = X @ Y`` with both operands additively shared (attention's ``Q Kᵀ``
and ``A V``; batched over leading dims, e.g. heads: ``(h, n, k) @ (h, k, m)``):

* dealer, per forward (:func:`deal`): uniform ``A`` and ``B`` of the two
  operands' shapes (per sample) from its secret AES-CTR stream, ``C = A @ B``
  (mod 2^64), and additive shares of all three for each party;
* parties, online (:func:`masked`, then :func:`product`): open ``E = X - A``
  and ``F = Y - B`` together (both concatenated into one exchange: one
  round), then locally::

      X Y = (E + A)(F + B) = E F + E B + A F + C
      Z_i = [i = 0] E F + E B_i + A_i F + C_i

  Operands at scale ``2^f`` give ``Z`` at ``2^(2f)``, truncated lazily by the
  plan's gates like any weighted layer's output. The product is exact in the
  ring (no error of its own); an operand correct only mod ``2^L`` (a narrow
  gate's output) gives ``Z`` correct mod ``2^L``, all the next gate reads.

Soundness (per party; the dealer receives nothing). ``E = X - A`` with ``A``
fresh, uniform over Z_2^64 and used for this one opening only, so ``E`` is
uniform and independent of ``X``; likewise ``F`` with ``B``, and ``A, B``
are independent, so ``(E, F)`` is jointly uniform even when ``X`` and ``Y``
are related (``x @ xᵀ``). The shares ``A_i, B_i, C_i`` a party receives are
uniform (the other party's share is a fresh uniform value). Reusing a triple
would reveal ``X - X'``: a triple is part of a single-use bundle.

Elementwise (:func:`deal` with ``elementwise``, then :func:`hadamard`): the
same with ``C = A * B`` element by element, ``B`` of a shape that broadcasts
to ``A``'s (each dim 1 or ``A``'s: a row's reciprocal times its entries);
``Z_i = [i = 0] E F + E B_i + A_i F + C_i`` with ``*`` for ``@``. Same
soundness argument (fresh uniform ``A, B`` per opening), same exactness; one
round, ``8 (|X| + |Y|)`` bytes sent, ``8 (2 |X| + |Y|)`` bytes of material.

Cost, per product and sample, with ``|X| = n k``, ``|Y| = k m``, ``|Z| = n m``
(times the leading dims): one round, ``8 (|X| + |Y|)`` bytes sent per party;
``8 (|X| + |Y| + |Z|)`` bytes of dealer material per party; two ring matmuls
per party online (three for party 0), one for the dealer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ppml.servers.mpc.fast.gates import split
from ppml.servers.mpc.fast.prg import KeyedPRG, Ring


def ring_bmm(a: Ring, b: Ring) -> Ring:
    """``a @ b`` over the last two dims, modulo 2^64 (equal leading dims, torch int64)."""
    ta = torch.from_numpy(np.require(a, dtype=np.int64, requirements=["C", "W"]))
    tb = torch.from_numpy(np.require(b, dtype=np.int64, requirements=["C", "W"]))
    return torch.matmul(ta, tb).numpy()


@dataclass(frozen=True)
class Triple:
    """One party's shares of ``A`` (batch, *a), ``B`` (batch, *b) and ``C = A @ B``."""

    a: Ring
    b: Ring
    c: Ring

    @property
    def nbytes(self) -> int:
        return self.a.nbytes + self.b.nbytes + self.c.nbytes

    def rows(self, start: int, stop: int) -> Triple:
        """Samples ``start .. stop - 1`` (views)."""
        return Triple(self.a[start:stop], self.b[start:stop], self.c[start:stop])

    @staticmethod
    def concat(parts: Sequence[Triple]) -> Triple:
        """The stacked batch of ``parts`` (each sample's triple is independent of the others)."""
        return Triple(
            np.concatenate([t.a for t in parts]),
            np.concatenate([t.b for t in parts]),
            np.concatenate([t.c for t in parts]),
        )


def deal(
    batch: int,
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    rng: KeyedPRG,
    elementwise: bool = False,
) -> tuple[Triple, Triple]:
    """Both parties' shares of a fresh triple for ``batch`` samples (the dealer's side).

    ``C = A @ B``, or ``A * B`` (``B`` broadcast to ``A``) if ``elementwise``.
    """
    a = rng.ring((batch, *a_shape))
    b = rng.ring((batch, *b_shape))
    a0, a1 = split(a, rng)
    b0, b1 = split(b, rng)
    with np.errstate(over="ignore"):
        c = a * b if elementwise else ring_bmm(a, b)
    c0, c1 = split(c, rng)
    return Triple(a0, b0, c0), Triple(a1, b1, c1)


def masked(x: Ring, y: Ring, t: Triple) -> Ring:
    """This party's shares of ``E = X - A`` and ``F = Y - B``, flat and concatenated."""
    with np.errstate(over="ignore"):
        e = x - t.a.reshape(x.shape)
        f = y - t.b.reshape(y.shape)
    return np.concatenate([e.reshape(-1), f.reshape(-1)])


def product(party: int, opened: Ring, t: Triple) -> Ring:
    """This party's share of ``X @ Y`` from the opened ``E, F`` (as :func:`masked` laid out)."""
    e = opened[: t.a.size].reshape(t.a.shape)
    f = opened[t.a.size :].reshape(t.b.shape)
    with np.errstate(over="ignore"):
        b = t.b + f if party == 0 else t.b  # party 0 adds E F as E (B_0 + F)
        return ring_bmm(e, b) + ring_bmm(t.a, f) + t.c


def hadamard(party: int, opened: Ring, t: Triple) -> Ring:
    """This party's share of ``X * Y`` (``Y`` broadcast to ``X``) from the opened ``E, F``."""
    e = opened[: t.a.size].reshape(t.a.shape)
    f = opened[t.a.size :].reshape(t.b.shape)
    with np.errstate(over="ignore"):
        b = t.b + f if party == 0 else t.b
        return e * b + t.a * f + t.c
