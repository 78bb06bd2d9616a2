"""Keyed randomness for CrypTen: every secret random value from AES-256-CTR.

CrypTen draws all its MPC randomness from ``torch.Generator`` objects
(MT19937): ``manual_seed`` keeps only 32 bits of a seed and the generator is
linear, so a party that sees some outputs recovers the whole stream. This
module holds the replacement for each of those streams, a
:class:`KeyedGenerator`: the keystream of AES-256 in counter mode under a
256-bit key from ``os.urandom``, and :func:`random_ring` / :func:`random_kbit`,
drop-ins for CrypTen's two draws that accept nothing else.

It imports nothing of ppml's: :mod:`ppml.servers.mpc.randomness.prng` (who
holds which key) builds on it, and :mod:`ppml.servers.mpc.randomness.patches`
installs both into CrypTen.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 32  # AES-256
_CHUNK = 1 << 16  # bytes of keystream per update_into call (fits in L2)
_ZEROS = memoryview(bytes(_CHUNK))
_RING = 2**64


def _shape(size: Any) -> tuple[int, ...]:
    """``size`` as a tuple of ints (CrypTen passes ints, tuples or ``torch.Size``)."""
    if isinstance(size, int):
        return (size,)
    return tuple(int(s) for s in size)


class KeyedGenerator:
    """A deterministic keystream: AES-256-CTR under ``key``, counter starting at 0.

    Invariants: the stream depends on all 256 key bits; two generators with
    the same key return the same values for the same sequence of calls (the
    parties sharing a key stay in lockstep as with torch generators); each
    call consumes exactly ``8 * numel`` keystream bytes. One generator must
    only be used from one thread. ``key`` is secret: never log or store it.
    """

    device = torch.device("cpu")  # CrypTen's TTPServer reads generator.device

    def __init__(self, key: bytes | None = None) -> None:
        key = os.urandom(KEY_BYTES) if key is None else bytes(key)
        if len(key) != KEY_BYTES:
            raise ValueError(f"a KeyedGenerator key has {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        # a key is used for exactly one stream, so the all-zero counter block is safe
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    @property
    def key(self) -> bytes:
        """The 256-bit key (secret; for the key exchange and tests only)."""
        return self._key

    @property
    def key_bits(self) -> int:
        return 8 * len(self._key)

    def fill_(self, out: memoryview) -> None:
        """Overwrite the writable byte buffer ``out`` with the next keystream bytes."""
        update_into = self._encryptor.update_into
        n, pos = len(out), 0
        while pos < n:  # CTR is a stream mode: update_into writes exactly len(data) bytes
            step = min(_CHUNK, n - pos)
            update_into(_ZEROS[:step], out[pos : pos + step])
            pos += step

    def ring(self, size: Any) -> torch.Tensor:
        """Uniform int64 tensor over the whole ring Z_2^64 (all 2^64 values)."""
        out = torch.empty(_shape(size), dtype=torch.int64)
        if out.numel():
            self.fill_(out.numpy().data.cast("B"))  # keystream lands in the tensor
        return out

    def kbit(self, size: Any, bits: int = 64) -> torch.Tensor:
        """Uniform int64 tensor over ``[0, 2^bits)``; ``bits=64`` is :meth:`ring`."""
        if not 1 <= bits <= 64:
            raise ValueError(f"bits must be in 1..64, got {bits}")
        out = self.ring(size)
        if bits < 64:
            out.bitwise_and_((1 << bits) - 1)  # low bits of a uniform word are uniform
        return out

    def __repr__(self) -> str:  # never show the key
        return f"KeyedGenerator(AES-256-CTR, {self.key_bits}-bit key)"


def _local_generator(device: Any) -> KeyedGenerator:
    import crypten

    if device is not None and torch.device(device).type != "cpu":
        raise NotImplementedError("keyed randomness runs on CPU only")
    generator = crypten.generators["local"].get(torch.device("cpu"))
    if not isinstance(generator, KeyedGenerator):
        raise RuntimeError("no keyed 'local' generator: call crypten.init() after install()")
    return generator


def _keyed(generator: Any, device: Any) -> KeyedGenerator:
    if generator is None:
        return _local_generator(device)
    if not isinstance(generator, KeyedGenerator):
        raise TypeError(
            f"secret randomness must come from a KeyedGenerator, not {type(generator).__name__}"
        )
    return generator


def random_ring(size: Any, ring_size: int = _RING, generator: Any = None, **kwargs: Any) -> Any:
    """Drop-in for ``crypten.common.rng.generate_random_ring_element`` (keyed)."""
    if ring_size != _RING:
        raise ValueError(f"only the ring Z_2^64 is supported, got ring_size={ring_size}")
    return _keyed(generator, kwargs.get("device")).ring(size)


def random_kbit(
    size: Any, bitlength: int | None = None, generator: Any = None, **kwargs: Any
) -> Any:
    """Drop-in for ``crypten.common.rng.generate_kbit_random_tensor`` (keyed)."""
    bits = 64 if bitlength is None else int(bitlength)
    return _keyed(generator, kwargs.get("device")).kbit(size, bits)


def key_tensor(key: bytes) -> torch.Tensor:
    """A key as a uint8 tensor, to send over the (encrypted) communicator."""
    return torch.from_numpy(np.frombuffer(bytearray(key), dtype=np.uint8))


def tensor_key(tensor: torch.Tensor) -> bytes:
    """Inverse of :func:`key_tensor`."""
    if tensor.dtype != torch.uint8 or tensor.numel() != KEY_BYTES:
        raise ValueError("not a 256-bit key tensor")
    return bytes(tensor.numpy().tobytes())
