"""Tests for ppml.servers.mpc.fast.prg: keyed AES-CTR streams and the fixed-key tree PRG."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ppml.servers.mpc.fast import prg
from ppml.servers.mpc.fast.prg import (
    FixedKeyPRG,
    KeyedPRG,
    derive_key,
    instance_start,
    instance_tweaks,
    new_key,
    tweak_table,
)

FAST_DIR = Path(prg.__file__).resolve().parent


def test_same_key_same_stream_and_reads_concatenate() -> None:
    key = new_key()
    a, b = KeyedPRG(key), KeyedPRG(key)
    whole = a.ring(10)
    assert np.array_equal(np.concatenate([b.ring(3), b.ring(7)]), whole)


def test_stream_is_aes_ctr_keystream() -> None:
    key = bytes(range(32))
    got = KeyedPRG(key).uint64(6)
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    want = np.frombuffer(enc.update(bytes(48)), dtype=np.uint64)
    assert np.array_equal(got, want)


def test_different_keys_differ_and_bits_look_uniform() -> None:
    a, b = KeyedPRG(), KeyedPRG()
    x, y = a.uint64(4096), b.uint64(4096)
    assert not np.array_equal(x, y)
    bits = np.unpackbits(x.view(np.uint8)).mean()
    assert abs(bits - 0.5) < 0.01


@pytest.mark.parametrize("bad", [b"", bytes(8), bytes(20), bytes(33)])
def test_rejects_short_or_odd_keys(bad: bytes) -> None:
    with pytest.raises(ValueError):
        KeyedPRG(bad)


def test_derive_key_is_deterministic_and_label_separated() -> None:
    master = new_key()
    assert derive_key(master, b"a") == derive_key(master, b"a")
    assert derive_key(master, b"a") != derive_key(master, b"b")
    assert len(derive_key(master, b"a")) == 32
    with pytest.raises(ValueError):
        derive_key(bytes(8), b"a")


def test_mmo_matches_blockwise_reference_and_keeps_shape() -> None:
    blocks = KeyedPRG().uint64((3, 5, 2))
    got = FixedKeyPRG().mmo(blocks)
    enc = Cipher(algorithms.AES(prg.FIXED_KEY), modes.ECB()).encryptor()
    want = np.frombuffer(enc.update(blocks.tobytes()), dtype=np.uint64).reshape(3, 5, 2) ^ blocks
    assert got.shape == blocks.shape
    assert np.array_equal(got, want)


def test_tweaks_are_distinct_and_leave_low_word_zero() -> None:
    t = np.concatenate([tweak_table(2, 4, 0).reshape(-1, 2), tweak_table(1, 4, 1).reshape(-1, 2)])
    assert len({tuple(r) for r in t.tolist()}) == len(t)
    assert not t[:, 0].any()


def test_instance_ids_are_consecutive_mod_2_80_and_stay_in_their_bits() -> None:
    """Element i of a key set has id start + i (wrapping at 2^80); fields do not overlap."""
    top = np.array([2**64 - 2, 2**16 - 1], dtype=np.uint64)  # 2^80 - 2: wraps after 2 ids
    starts = np.stack([top, np.array([5, 7], dtype=np.uint64)])
    t = instance_tweaks(starts, np.array([4, 3]))
    ids = [(int(hi) >> 40 << 56) | (int(lo) >> 8) for lo, hi in t.tolist()]
    assert ids == [2**80 - 2, 2**80 - 1, 0, 1, 7 << 64 | 5, 7 << 64 | 6, 7 << 64 | 7]
    assert not (t[:, 0] & np.uint64(0xFF)).any()  # control bit and level field untouched
    assert not (t[:, 1] & np.uint64((1 << 40) - 1)).any()  # block, row and salt fields too
    assert np.all(instance_start(KeyedPRG())[1] < 2**16)
    with pytest.raises(ValueError):
        tweak_table(2, 3, salt=256)  # would reach the instance id's bits


def test_package_uses_no_weak_or_crypten_randomness() -> None:
    """Secrets come from keyed AES only; the package stays independent of CrypTen."""
    banned = re.compile(
        r"np\.random|numpy\.random|torch\.Generator|manual_seed|torch\.rand|"
        r"^import random|^from random|import crypten|from crypten|ppml\.servers\.crypten",
        re.M,
    )
    for path in FAST_DIR.glob("*.py"):
        assert not banned.search(path.read_text()), path.name
