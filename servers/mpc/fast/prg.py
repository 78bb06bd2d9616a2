"""Keyed randomness for the dealer-assisted engine: AES-CTR streams and a fixed-key AES PRG.

Two primitives, both from ``cryptography`` (OpenSSL, AES-NI):

* :class:`KeyedPRG` -- a secret-keyed AES-CTR keystream (128/192/256-bit key,
  by default 256 bits from ``os.urandom``). All *secret* randomness of the
  engine (wire masks, weight masks, share splits, DCF root seeds) comes from
  it. Invariant: two streams with the same key produce the same bytes; a
  stream never repeats a counter block (one key, nonce 0, 2^128 blocks).
  :func:`derive_key` turns a long-lived master key plus a public label into an
  independent sub-key (HMAC-SHA256), so the dealer can regenerate a model's
  weight masks from one stored key.
* :class:`FixedKeyPRG` -- the length-doubling PRG of the DCF tree expansion:
  ``H_T(s) = AES_K(s XOR T) XOR s XOR T`` (Matyas-Meyer-Oseas with a public,
  fixed key ``K`` and public distinct 128-bit tweaks ``T``), applied to a whole
  array of 128-bit seeds at once, one ECB call per tree level. With AES
  modelled as a random permutation, the outputs for distinct tweaks on a
  uniformly random secret seed are independent and uniform unless someone
  queries the permutation at ``s XOR T``, i.e. guesses a 127-bit seed.
  Every MMO call of the DCFs has its own tweak, unique per (DCF instance,
  tree level, side, block, salt), so one permutation query can only ever
  target one seed of one instance (no multi-instance guessing).

Tweak layout (a 128-bit block as its low and high 64-bit words; fields are
disjoint, so tweaks with any field different differ):

* low word: bit 0 never set (it carries a DCF control bit); bits 1..7 the
  tree level + 1 (0 in the final conversion; the DCF sets it); bits 8..63
  the low 56 bits of the *instance id*;
* high word: bits 0..15 block + 1, bits 16..31 row (the tree side), bits
  32..39 salt (:func:`tweak_table`); bits 40..63 the instance id's top 24
  bits.

Instance ids are 80 bits: a DCF key set of ``n`` elements gets a uniform
80-bit start ``nonce`` (:func:`instance_start`, drawn by the dealer from its
:class:`KeyedPRG`; public between the two parties, who both need it), and
element ``i`` uses ``(nonce + i) mod 2^80`` (:func:`instance_tweaks`). Inside
a key set the ids are distinct (``n < 2^80``). Two key sets of ``n_a`` and
``n_b`` elements overlap with probability at most ``(n_a + n_b) / 2^80``, so
``q`` key sets of ``N`` elements in all share any id with probability at most
``q N / 2^80`` (e.g. ``2^-26`` for 2^22 key sets and 2^32 elements, a million
Network-A bundles); ids that did collide only fall back to sharing a tweak,
which with fresh random seeds is still secure (multi-target bound).

Seeds are numpy ``uint64`` arrays of shape ``(..., 2)`` (little-endian halves
of a 128-bit block). Ring elements are ``int64`` (two's complement, Z_2^64).
No numpy/torch random generator is used anywhere in this package.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

Ring = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

KEY_BYTES = 32
_VALID_KEY_BYTES = (16, 24, 32)
# Public fixed key of the tree PRG: SHA-256 of a label, first 16 bytes (nothing up the sleeve).
FIXED_KEY = hashlib.sha256(b"ppml.servers.mpc.fast fixed-key AES PRG v1").digest()[:16]


def new_key() -> bytes:
    """A fresh 256-bit key from the OS CSPRNG."""
    return os.urandom(KEY_BYTES)


def derive_key(master: bytes, label: bytes) -> bytes:
    """Sub-key ``HMAC-SHA256(master, label)``; invariant: deterministic, independent per label."""
    if len(master) < 16:
        raise ValueError("master key must have at least 128 bits")
    return hmac.new(master, label, hashlib.sha256).digest()


class KeyedPRG:
    """AES-CTR keystream with a secret key, read as bytes, ring elements or seeds.

    Not thread-safe: give each thread (party, dealer) its own instance.
    """

    def __init__(self, key: bytes | None = None) -> None:
        key = new_key() if key is None else key
        if len(key) not in _VALID_KEY_BYTES:
            raise ValueError("AES key must be 16, 24 or 32 bytes")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._zeros = np.zeros(0, dtype=np.uint8)

    @classmethod
    def derived(cls, master: bytes, label: bytes) -> KeyedPRG:
        """Stream keyed by :func:`derive_key` ``(master, label)``."""
        return cls(derive_key(master, label))

    def fill(self, out: npt.NDArray[np.generic]) -> None:
        """Overwrite the C-contiguous array ``out`` with the next ``out.nbytes`` keystream bytes."""
        if not out.flags.c_contiguous:
            raise ValueError("fill needs a C-contiguous array")
        n = out.nbytes
        if n == 0:
            return
        if self._zeros.size < n + 16:
            self._zeros = np.zeros(max(n + 16, 2 * self._zeros.size), dtype=np.uint8)
        buf = np.empty(n + 16, dtype=np.uint8)  # update_into wants block_size - 1 spare bytes
        self._enc.update_into(self._zeros[:n].data, buf.data)
        out.reshape(-1).view(np.uint8)[:] = buf[:n]

    def ring(self, shape: tuple[int, ...] | int) -> Ring:
        """Uniform int64 array (uniform over Z_2^64)."""
        out = np.empty(shape, dtype=np.int64)
        self.fill(out)
        return out

    def uint64(self, shape: tuple[int, ...] | int) -> U64:
        """Uniform uint64 array."""
        out = np.empty(shape, dtype=np.uint64)
        self.fill(out)
        return out

    def seeds(self, n: int) -> U64:
        """``n`` uniform 128-bit seeds, shape ``(n, 2)``."""
        return self.uint64((n, 2))


INSTANCE_BITS = 80
_INSTANCE_LOW_SHIFT = np.uint64(8)  # id bits 0..55 -> low word bits 8..63
_INSTANCE_HIGH_SHIFT = np.uint64(40)  # id bits 56..79 -> high word bits 40..63
_TOP_MASK = np.uint64((1 << (INSTANCE_BITS - 64)) - 1)


def instance_start(rng: KeyedPRG) -> U64:
    """A uniform 80-bit instance-id start from ``rng``: (2,) uint64, low word then top 16 bits."""
    start = rng.uint64(2)
    start[1] &= _TOP_MASK
    return start


def instance_tweaks(starts: U64, runs: npt.NDArray[np.int64]) -> U64:
    """Per element ``(n, 2)`` tweak words of the instance ids (module doc, tweak layout).

    ``starts`` (s, 2): each key set's 80-bit start; ``runs`` (s,): its number
    of elements, in order; element ``i`` of key set ``j`` has id
    ``starts[j] + i mod 2^80``. Bits 0..7 of the low word and 0..39 of the
    high word stay 0.
    """
    runs = np.asarray(runs, dtype=np.int64)
    n = int(runs.sum())
    first = np.repeat(np.cumsum(runs) - runs, runs)
    low0 = np.repeat(starts[:, 0], runs)
    low = low0 + (np.arange(n, dtype=np.int64) - first).astype(np.uint64)  # wraps mod 2^64
    high = (np.repeat(starts[:, 1], runs) + (low < low0).astype(np.uint64)) & _TOP_MASK
    out = np.empty((n, 2), dtype=np.uint64)
    out[:, 0] = low << _INSTANCE_LOW_SHIFT
    out[:, 1] = ((low >> np.uint64(56)) | (high << np.uint64(8))) << _INSTANCE_HIGH_SHIFT
    return out


def tweak_table(rows: int, blocks: int, salt: int = 0) -> U64:
    """Public distinct tweaks (rows, blocks, 2): entry (i, j) = (0, salt<<32 | i<<16 | j+1).

    The low word stays 0, so tweaking never touches the bit that carries a
    DCF control bit; the high word differs for every (salt, row, block).
    Needs ``rows, blocks < 2^16`` and ``salt < 2^8`` (the instance id's bits lie above).
    """
    if not (rows <= 1 << 16 and blocks < 1 << 16 and 0 <= salt < 1 << 8):
        raise ValueError("tweak fields out of range")
    i = np.arange(rows, dtype=np.uint64)[:, None]
    j = np.arange(blocks, dtype=np.uint64)[None, :]
    out = np.zeros((rows, blocks, 2), dtype=np.uint64)
    out[:, :, 1] = (np.uint64(salt) << np.uint64(32)) | (i << np.uint64(16)) | (j + np.uint64(1))
    return out


class FixedKeyPRG:
    """``H(x) = AES_K(x) XOR x`` over arrays of 128-bit blocks, ``K`` = :data:`FIXED_KEY`.

    Callers XOR a public tweak into ``x`` first (see :func:`tweak_table`), so
    one call expands every seed of a tree level into all the blocks it needs.
    Not thread-safe (one OpenSSL context): one instance per thread.
    """

    def __init__(self, key: bytes = FIXED_KEY) -> None:
        self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()

    def mmo(self, blocks: U64) -> U64:
        """``AES_K(b) XOR b`` for every 128-bit block of ``blocks`` (shape ``(..., 2)``)."""
        blocks = np.ascontiguousarray(blocks, dtype=np.uint64)
        out = self.aes_into(blocks, np.empty(blocks.nbytes + 16, dtype=np.uint8))
        out ^= blocks
        return out

    def aes_into(self, blocks: U64, buf: npt.NDArray[np.uint8]) -> U64:
        """``AES_K(b)`` alone (the caller XORs ``b`` in) for the C-contiguous ``blocks``,
        written into ``buf`` (``blocks.nbytes + 16`` bytes, reusable): a view of it, shaped
        as ``blocks``."""
        n = blocks.nbytes
        self._enc.update_into(blocks.reshape(-1).view(np.uint8).data, buf.data)
        out: U64 = buf[:n].view(np.uint64).reshape(blocks.shape)
        return out
