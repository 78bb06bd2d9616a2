"""Unpredictable random draws for privacy noise, from the operating system's CSPRNG.

Differential privacy holds only if the noise is unpredictable to whoever sees
the output. numpy's and torch's generators (PCG64, Mersenne Twister) are
seeded and, given some outputs, predictable; so every draw here comes from
``secrets.token_bytes`` (``os.urandom``). There is deliberately no seed.

Invariants: :meth:`SecureRandom.random` returns multiples of 2**-53 in
[0, 1), each with probability 2**-53; :meth:`SecureRandom.integers` is
exactly uniform on ``0..high-1`` (rejection sampling, no modulo bias).
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def _words(count: int) -> npt.NDArray[np.uint64]:
    return np.frombuffer(secrets.token_bytes(8 * count), dtype="<u8").astype(np.uint64)


class SecureRandom:
    """Vectorised uniform, integer and normal draws from ``secrets`` (no state, no seed)."""

    def random(self, size: int) -> Floats:
        """``size`` uniform floats in [0, 1), 53 random bits each."""
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        return (_words(size) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def integers(self, high: int, size: int) -> Ints:
        """``size`` integers uniform on ``0..high-1`` (``1 <= high <= 2**62``)."""
        if not 1 <= high <= 1 << 62:
            raise ValueError(f"high must lie in 1..2**62, got {high}")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        limit = ((1 << 64) // high) * high  # accept words below a multiple of high
        out = np.empty(0, dtype=np.uint64)
        while out.size < size:
            need = size - out.size
            words = _words(need + need // 8 + 1)
            if limit < 1 << 64:
                words = words[words < np.uint64(limit)]
            out = np.concatenate([out, words[:need]])
        return (out % np.uint64(high)).astype(np.int64)

    def normal(self, size: int, std: float = 1.0) -> Floats:
        """``size`` draws from N(0, std**2) by the Box-Muller transform, in float64.

        Each pair comes from two uniforms of 53 random bits (:meth:`random`);
        ``log``, ``sqrt``, ``cos`` and ``sin`` are numpy's float64 functions.
        This is the sampler the MPC servers use for their DP noise too (DP-SGD,
        ``servers/mpc/training/dpsgd.py``; DP federated averaging,
        ``servers/mpc/aggregation/aggregate.py``): each server draws here and then rounds
        its draws to the fixed-point grid (multiples of 2**-16) when it adds
        them to its own share. It is not a discrete Gaussian sampler: the
        output's distribution is the continuous Gaussian's only up to float64
        rounding and the 2**-53 granularity of the uniforms (at most about
        8.6 std in magnitude, from ``u1 >= 2**-53``), and the privacy analysis
        (``ppml.training.privacy.accounting``) assumes the exact continuous
        Gaussian. The rounding to 2**-16 hides the low-order float bits that
        Mironov's attack on floating-point noise reads (CCS 2012), but it is
        not a proof that the gap is closed.
        """
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std}")
        pairs = -(-size // 2)
        u1 = 1.0 - self.random(pairs)  # in (0, 1]: log is finite
        u2 = self.random(pairs)
        radius = np.sqrt(-2.0 * np.log(u1))
        both = np.concatenate(
            [radius * np.cos(2 * math.pi * u2), radius * np.sin(2 * math.pi * u2)]
        )
        return std * both[:size]
