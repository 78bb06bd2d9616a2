"""The compiled DCF walks (ppml.servers.mpc.fast.dcf_kernels) equal the numpy reference bit for bit.

Keys and shares must not change with the implementation: keys dealt by the
numpy passes (tests/unit/dcf_reference.py) evaluate to the same shares under
the kernels, and the kernels' key generation, from the same secret stream,
makes the very same keys.
"""

from __future__ import annotations

import itertools

import dcf_reference as ref
import numpy as np
import pytest

from ppml.servers.mpc.fast import dcf
from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG, new_key

RNG = KeyedPRG()
PRG = FixedKeyPRG()
LANES = [(1,), (64,), (64, 64), (48, 48, 16), (1, 63, 32)]


def _domain(x: np.ndarray, depth: int) -> np.ndarray:
    return x if depth == 64 else x & np.uint64((1 << depth) - 1)


def _same_keys(a: dcf.DCFKey, b: dcf.DCFKey) -> bool:
    fields = ("seeds", "seed_cw", "t_cw", "v_cw", "final_cw", "nonces", "runs")
    return (a.party, a.lane_bits) == (b.party, b.lane_bits) and all(
        np.array_equal(getattr(a, f), getattr(b, f)) for f in fields
    )


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("depth", [1, 3, 20, 47, 64])
def test_gen_makes_the_reference_keys_from_the_same_stream(
    depth: int, lanes: tuple[int, ...]
) -> None:
    n = 37
    alpha = _domain(RNG.uint64(n), depth)
    beta = RNG.ring((len(lanes), n))
    key = new_key()
    got = dcf.gen(alpha, beta, depth, KeyedPRG(key), PRG, lanes)
    want = ref.gen(alpha, beta, depth, KeyedPRG(key), PRG, lanes)
    assert all(_same_keys(g, w) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("lanes", LANES)
def test_exhaustive_small_depth_equals_the_reference_and_the_comparison(
    lanes: tuple[int, ...],
) -> None:
    """Depth 4: every threshold against every input, reference-dealt keys, both parties."""
    depth = 4
    alpha = np.repeat(np.arange(16, dtype=np.uint64), 16)
    x = np.tile(np.arange(16, dtype=np.uint64), 16)
    beta = RNG.ring((len(lanes), alpha.size))
    keys = ref.gen(alpha, beta, depth, RNG, PRG, lanes)
    masks = np.array([(1 << b) - 1 for b in lanes], dtype=np.uint64)[:, None].view(np.int64)
    shares = []
    for key in keys:
        got = dcf.evaluate(key, x, PRG)
        for tabled in (True, False):
            assert np.array_equal(got, ref.evaluate(key, x, PRG, tabled=tabled))
        shares.append(got)
    with np.errstate(over="ignore"):
        assert np.array_equal((shares[0] + shares[1]) & masks, np.where(x < alpha, beta, 0) & masks)


@pytest.mark.parametrize(("depth", "lanes"), list(itertools.product([31, 47, 48, 64], LANES)))
def test_random_large_depth_equals_the_reference(depth: int, lanes: tuple[int, ...]) -> None:
    """Random thresholds and inputs (and the inputs next to each threshold), joined and cut
    keys (several key sets, a slice that starts inside one)."""
    sizes = (50, 70)
    n = sum(sizes)
    alpha = _domain(RNG.uint64(n), depth)
    beta = RNG.ring((len(lanes), n))
    parts = [ref.gen(alpha[:50], beta[:, :50], depth, RNG, PRG, lanes),
             ref.gen(alpha[50:], beta[:, 50:], depth, RNG, PRG, lanes)]  # fmt: skip
    joined = [dcf.DCFKey.concat([p[b] for p in parts]) for b in (0, 1)]
    one = np.uint64(1)
    with np.errstate(over="ignore"):
        near = [_domain(alpha - one, depth), alpha, _domain(alpha + one, depth)]
    for x in [_domain(RNG.uint64(n), depth), *near]:
        for key in joined:
            assert np.array_equal(dcf.evaluate(key, x, PRG), ref.evaluate(key, x, PRG))
            cut = key.take(13, 97)
            assert np.array_equal(dcf.evaluate(cut, x[13:97], PRG),
                                  ref.evaluate(cut, x[13:97], PRG))  # fmt: skip


@pytest.mark.parametrize("lanes", [(1,), (64, 64), (48, 48, 16)])
def test_new_keys_evaluate_right_under_the_reference_too(lanes: tuple[int, ...]) -> None:
    """Keys from the kernels' gen reconstruct the comparison under both evaluations."""
    n, depth = 500, 48
    alpha = _domain(RNG.uint64(n), depth)
    beta = RNG.ring((len(lanes), n))
    keys = dcf.gen(alpha, beta, depth, RNG, PRG, lanes)
    x = np.concatenate([_domain(RNG.uint64(n - 3), depth), alpha[:3]])
    masks = np.array([(1 << b) - 1 for b in lanes], dtype=np.uint64)[:, None].view(np.int64)
    want = np.where(x < alpha, beta, 0) & masks
    with np.errstate(over="ignore"):
        for evaluate in (dcf.evaluate, ref.evaluate):
            got = evaluate(keys[0], x, PRG) + evaluate(keys[1], x, PRG)
            assert np.array_equal(got & masks, want)


def test_empty_keys_evaluate_to_nothing() -> None:
    keys = dcf.gen(np.zeros(0, dtype=np.uint64), RNG.ring((2, 0)), 10, RNG, PRG)
    assert dcf.evaluate(keys[0], np.zeros(0, dtype=np.uint64), PRG).shape == (2, 0)


@pytest.mark.parametrize("lanes", [(1,), (64, 64, 16)])
def test_more_elements_than_a_chunk_match_the_reference(lanes: tuple[int, ...]) -> None:
    """Key generation and evaluation walk the elements in chunks: past a chunk's end too."""
    n, depth = max(dcf.GEN_CHUNK, dcf.WALK_CHUNK) + 123, 9
    alpha = _domain(RNG.uint64(n), depth)
    beta = RNG.ring((len(lanes), n))
    key = new_key()
    got = dcf.gen(alpha, beta, depth, KeyedPRG(key), PRG, lanes)
    want = ref.gen(alpha, beta, depth, KeyedPRG(key), PRG, lanes)
    assert all(_same_keys(g, w) for g, w in zip(got, want, strict=True))
    x = _domain(RNG.uint64(n), depth)
    for k in got:
        assert np.array_equal(dcf.evaluate(k, x, PRG), ref.evaluate(k, x, PRG, tabled=False))


def test_warm_loads_the_kernels() -> None:
    dcf.warm()
    assert dcf._kernels().eval_level.signatures and dcf._kernels().gen_level.signatures
