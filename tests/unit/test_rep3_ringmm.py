"""Tests for ppml.servers.mpc.rep3.ringmm: ring products equal numpy's wrapping int64 product."""

from __future__ import annotations

import numpy as np
import pytest

from ppml.servers.mpc.fast.prg import KeyedPRG
from ppml.servers.mpc.rep3.ringmm import RingMatrix, ring_matmul

RNG = KeyedPRG()


@pytest.mark.parametrize("shape", [(1, 784, 128), (64, 784, 128), (5, 3, 1), (7, 2100, 9)])
def test_ring_product_is_exact_modulo_2_64_on_uniform_and_extreme_words(
    shape: tuple[int, int, int],
) -> None:
    b, k, n = shape
    x, w = RNG.ring((b, k)), RNG.ring((k, n))
    x[0], w[:, 0] = -1, np.iinfo(np.int64).min  # all bits set; only the top bit set
    expected = x @ w  # numpy's int64 loop wraps modulo 2^64
    assert np.array_equal(ring_matmul(x, w), expected)
    m = RingMatrix(w)
    assert np.array_equal(m.left_mul(x), expected)
    assert np.array_equal(m.left_mul(np.asfortranarray(x)), expected)  # any layout


def test_ring_matrix_refuses_what_is_not_a_ring_product() -> None:
    with pytest.raises(ValueError, match="2-D int64"):
        RingMatrix(np.zeros((3, 3), dtype=np.float64))
    with pytest.raises(ValueError, match="cannot multiply"):
        RingMatrix(np.zeros((3, 4), dtype=np.int64)).left_mul(np.zeros((2, 4), dtype=np.int64))
