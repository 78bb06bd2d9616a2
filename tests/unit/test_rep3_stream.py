"""Tests for ppml.servers.mpc.rep3.stream: read-ahead gives exactly the underlying stream."""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.prg import KeyedPRG
from ppml.servers.mpc.rep3 import keys
from ppml.servers.mpc.rep3.stream import ReadAhead

KEY = bytes(range(32))


def test_reads_of_any_size_are_the_streams_words_in_order() -> None:
    sizes = [1, 7, 0, 5000, 3, 20_000, (4, 5), 1]  # across, inside and beyond read-ahead blocks
    direct, ahead = KeyedPRG(KEY), ReadAhead(KeyedPRG(KEY), block_words=4096)
    for i, size in enumerate(sizes):
        if i % 2:
            got, want = ahead.ring(size), direct.ring(size)
        else:
            got, want = ahead.uint64(size), direct.uint64(size)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)


def test_slices_handed_out_are_independent_and_writable() -> None:
    ahead = ReadAhead(KeyedPRG(KEY))
    a, b = ahead.ring(10), ahead.ring(10)
    expected_b = b.copy()
    a[:] = 0
    assert np.array_equal(b, expected_b)


def test_correlated_streams_are_unchanged_by_reading_ahead() -> None:
    corr = keys.Correlated(0, KEY, KEY[::-1])
    own = KeyedPRG.derived(KEY, b"ppml.rep3/rss")
    nxt = KeyedPRG.derived(KEY[::-1], b"ppml.rep3/rss")
    pair = KeyedPRG.derived(KEY, b"ppml.rep3/pair")  # shared with party 2 (the previous one)
    assert np.array_equal(corr.zero((3, 4)), own.ring((3, 4)) - nxt.ring((3, 4)))
    assert np.array_equal(corr.common(2, (9,)), pair.ring(9))
    assert np.array_equal(corr.zero_bits((5,)), own.uint64(5) ^ nxt.uint64(5))
