"""Tests for ppml.servers.mpc.fast.dcf: eval_0(x) + eval_1(x) == beta * 1{x < alpha} (mod 2^64)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import dcf_reference
import numpy as np
import pytest

from ppml.servers.mpc.fast import dcf
from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG

RNG = KeyedPRG()


def _domain(x: np.ndarray, depth: int) -> np.ndarray:
    return x if depth == 64 else x & np.uint64((1 << depth) - 1)


def _reconstruct(keys: tuple[dcf.DCFKey, dcf.DCFKey], x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return dcf.evaluate(keys[0], x) + dcf.evaluate(keys[1], x)


def _edges(alpha: np.ndarray, depth: int) -> list[np.ndarray]:
    """Per element: alpha - 1, alpha, alpha + 1, 0, the top of the domain (wrapping inside it)."""
    one = np.uint64(1)
    top = np.uint64((1 << depth) - 1)
    with np.errstate(over="ignore"):
        return [
            _domain(alpha - one, depth),
            alpha,
            _domain(alpha + one, depth),
            np.zeros_like(alpha),
            np.full_like(alpha, top),
        ]


@pytest.mark.parametrize(("depth", "width"), [(1, 1), (2, 2), (5, 3), (16, 2), (31, 3), (64, 3)])
def test_random_and_edge_points(depth: int, width: int) -> None:
    n = 300
    alpha = _domain(RNG.uint64(n), depth)
    alpha[:4] = [0, 1, (1 << depth) - 1, 1 << (depth - 1)]  # extreme thresholds
    beta = RNG.ring((width, n))
    keys = dcf.gen(alpha, beta, depth, RNG)
    for x in [_domain(RNG.uint64(n), depth), *_edges(alpha, depth)]:
        want = np.where(x < alpha, beta, 0)
        assert np.array_equal(_reconstruct(keys, x), want)


def test_exhaustive_small_domain() -> None:
    depth = 4
    alpha = np.repeat(np.arange(16, dtype=np.uint64), 16)
    x = np.tile(np.arange(16, dtype=np.uint64), 16)
    beta = RNG.ring((2, alpha.size))
    got = _reconstruct(dcf.gen(alpha, beta, depth, RNG), x)
    assert np.array_equal(got, np.where(x < alpha, beta, 0))


def test_signed_extremes_in_full_64_bit_domain() -> None:
    """2^63 - 1 and -2^63 (as uint64 2^63) on both sides of each other."""
    lo, hi = np.uint64(2**63 - 1), np.uint64(2**63)
    alpha = np.array([hi, hi, lo, lo, 0, 2**64 - 1], dtype=np.uint64)
    x = np.array([lo, hi, hi, lo, 2**64 - 1, 2**64 - 2], dtype=np.uint64)
    beta = RNG.ring((1, 6))
    got = _reconstruct(dcf.gen(alpha, beta, 64, RNG), x)
    assert np.array_equal(got, np.where(x < alpha, beta, 0))


def test_shares_of_each_party_look_uniform() -> None:
    """One party's output alone is a uniform ring element, whatever the comparison bit."""
    n = 4000
    alpha = np.full(n, 1 << 10, dtype=np.uint64)
    keys = dcf.gen(alpha, np.ones((1, n), dtype=np.int64), 20, RNG)
    for x in (np.zeros(n, dtype=np.uint64), np.full(n, (1 << 20) - 1, dtype=np.uint64)):
        share = dcf.evaluate(keys[1], x)[0]
        assert abs(np.unpackbits(share.view(np.uint8)).mean() - 0.5) < 0.01


@pytest.mark.parametrize(
    ("depth", "lanes", "per"),
    [
        (31, (64, 64, 64), 1311),
        (31, (48, 48, 16), 991),
        (31, (32, 32), 799),
        (47, (64, 64, 16), 1679),
        (47, (16, 16), 1007),
        (64, (64,), 1624),
        (47, (1,), 712),  # early termination: 40 levels and a 16-byte leaf (816 without)
        (8, (1,), 49),
        (7, (1,), 136),  # too shallow to terminate early: 7 levels and a one-bit final
    ],
)
def test_key_size_matches_formula_and_serialised_arrays(
    depth: int, lanes: tuple[int, ...], per: int
) -> None:
    n = 10
    k0, k1 = dcf.gen(
        np.zeros(n, dtype=np.uint64), RNG.ring((len(lanes), n)), depth, RNG, None, lanes
    )
    assert dcf.key_bytes_per_element(depth, lanes) == per
    assert k0.nbytes == k1.nbytes == n * per + dcf.NONCE_BYTES  # one key set: one nonce
    arrays = k0.to_arrays("k")
    assert sum(a.nbytes for name, a in arrays.items() if name != "k.meta") == k0.nbytes


@pytest.mark.parametrize("lanes", [(48, 48, 16), (1, 63, 32), (16,), (1,)])
def test_narrow_lanes_hold_modulo_their_width(lanes: tuple[int, ...]) -> None:
    n, depth = 400, 20
    alpha = _domain(RNG.uint64(n), depth)
    beta = RNG.ring((len(lanes), n))
    keys = dcf.gen(alpha, beta, depth, RNG, None, lanes)
    keys = (keys[0], dcf.DCFKey.from_arrays(keys[1].to_arrays("k"), "k"))
    masks = np.array([(1 << b) - 1 for b in lanes], dtype=np.uint64)[:, None].view(np.int64)
    for x in [_domain(RNG.uint64(n), depth), *_edges(alpha, depth)]:
        want = np.where(x < alpha, beta, 0) & masks
        assert np.array_equal(_reconstruct(keys, x) & masks, want)
        # nothing above a lane's width is sent: every correction word fits in its lane
        assert np.all((keys[1].v_cw & ~masks[None]) == 0)


def test_rejects_bad_lanes() -> None:
    for lanes in [(64,), (0, 64), (65, 64)]:
        with pytest.raises(ValueError):
            dcf.gen(np.zeros(2, dtype=np.uint64), RNG.ring((2, 2)), 4, RNG, None, lanes)


def test_parties_share_correction_words_but_not_roots() -> None:
    n = 8
    k0, k1 = dcf.gen(np.arange(n, dtype=np.uint64), RNG.ring((2, n)), 8, RNG)
    assert np.array_equal(k0.seed_cw, k1.seed_cw) and np.array_equal(k0.v_cw, k1.v_cw)
    assert not np.array_equal(k0.seeds, k1.seeds)


def test_serialisation_round_trip() -> None:
    n, depth = 20, 12
    alpha = _domain(RNG.uint64(n), depth)
    beta = RNG.ring((3, n))
    k0, k1 = dcf.gen(alpha, beta, depth, RNG)
    k1 = dcf.DCFKey.from_arrays(k1.to_arrays("k"), "k")
    x = _domain(RNG.uint64(n), depth)
    assert np.array_equal(_reconstruct((k0, k1), x), np.where(x < alpha, beta, 0))


def test_rejects_inputs_outside_domain_and_bad_shapes() -> None:
    k0, _ = dcf.gen(np.zeros(3, dtype=np.uint64), RNG.ring((1, 3)), 4, RNG)
    with pytest.raises(ValueError):
        dcf.evaluate(k0, np.array([16, 0, 0], dtype=np.uint64))
    with pytest.raises(ValueError):
        dcf.evaluate(k0, np.zeros(4, dtype=np.uint64))
    with pytest.raises(ValueError):
        dcf.gen(np.array([16], dtype=np.uint64), RNG.ring((1, 1)), 4, RNG)
    bad = k0.to_arrays("k")
    bad["k.v_cw0.0"] = bad["k.v_cw0.0"][:2]
    with pytest.raises(ValueError):
        dcf.DCFKey.from_arrays(bad, "k")
    bad = k0.to_arrays("k")
    bad["k.final_cw0.0"] = bad["k.final_cw0.0"].astype(np.uint32)
    with pytest.raises(ValueError):
        dcf.DCFKey.from_arrays(bad, "k")


def test_every_tree_level_expands_under_its_own_tweak() -> None:
    state = KeyedPRG().seeds(4)
    state[:, 0] |= np.uint64(1)  # control bits set: the tweak must leave them alone
    tweaks = {(dcf._at_level(state, level) ^ state).tobytes() for level in range(64)}
    assert len(tweaks) == 64
    for level in range(64):
        tweaked = dcf._at_level(state, level)
        assert np.array_equal(tweaked[:, 0] & np.uint64(1), state[:, 0] & np.uint64(1))
        assert np.array_equal(tweaked[:, 1], state[:, 1])


class _Recording(FixedKeyPRG):
    """The fixed-key PRG, keeping a copy of every MMO (or bare AES) call's input blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[np.ndarray] = []

    def aes_into(self, blocks: np.ndarray, buf: np.ndarray) -> np.ndarray:  # mmo calls it too
        self.inputs.append(np.array(blocks, copy=True))
        return super().aes_into(blocks, buf)


def test_every_mmo_input_is_tweaked_per_instance_and_key_set() -> None:
    """With one root seed copied to every element, level 0's MMO inputs still all differ
    (each element has its own instance id), and another key set's nonce changes every
    MMO input at every level; both parties' keys carry the same nonce."""
    n, depth = 6, 5
    alpha, beta = np.arange(n, dtype=np.uint64), RNG.ring((3, n))
    k0, k1 = dcf.gen(alpha, beta, depth, RNG)
    assert np.array_equal(k0.nonces, k1.nonces) and k0.nonces.shape == (1, 2)
    same_seed = replace(k0, seeds=np.repeat(k0.seeds[:1], n, axis=0))
    x = np.zeros(n, dtype=np.uint64)
    first = _Recording()
    dcf.evaluate(same_seed, x, first)
    assert len(first.inputs) == depth + 1
    level0 = first.inputs[0].reshape(-1, 2)  # (blocks * n, 2)
    assert len({row.tobytes() for row in level0}) == level0.shape[0]
    other, _ = dcf.gen(alpha, beta, depth, RNG)  # same alpha and beta, a new key set
    assert not np.array_equal(other.nonces, k0.nonces)
    second = _Recording()
    dcf.evaluate(replace(same_seed, nonces=other.nonces), x, second)
    for a, b in zip(first.inputs, second.inputs, strict=True):
        assert np.all(np.any(a != b, axis=-1))
    # the nonce is part of the key: evaluated under another nonce, the shares are wrong
    moved = replace(k1, nonces=other.nonces)
    assert not np.array_equal(_reconstruct((k0, moved), x), np.where(x < alpha, beta, 0))


def test_nonces_survive_concat_head_and_serialisation() -> None:
    """Joined and cut keys keep every element's instance id, and still evaluate right."""
    depth, sizes = 9, (3, 4, 5)
    alpha = _domain(RNG.uint64(sum(sizes)), depth)
    beta = RNG.ring((2, sum(sizes)))
    bounds = np.cumsum((0, *sizes))
    parts = [
        dcf.gen(alpha[lo:hi], beta[:, lo:hi], depth, RNG) for lo, hi in itertools.pairwise(bounds)
    ]
    joined = [dcf.DCFKey.concat([p[b] for p in parts]) for b in (0, 1)]
    ids = np.concatenate([p[0].instance_tweaks for p in parts])
    assert np.array_equal(joined[0].instance_tweaks, ids)
    assert len({row.tobytes() for row in ids}) == sum(sizes)  # unique inside and across sets
    per = dcf.key_bytes_per_element(depth, (64, 64))
    x = _domain(RNG.uint64(sum(sizes)), depth)
    for cut in range(sum(sizes) + 1):
        heads = [k.head(cut) for k in joined]
        sets = int(np.sum(bounds[:-1] < cut))
        assert heads[0].runs.shape == (sets,) and heads[0].nbytes == cut * per + 24 * sets
        back = dcf.DCFKey.from_arrays(heads[1].to_arrays("k"), "k")
        assert np.array_equal(back.nonces, heads[0].nonces)
        assert np.array_equal(back.runs, heads[0].runs)
        assert np.array_equal(back.instance_tweaks, ids[:cut])
        got = _reconstruct((heads[0], back), x[:cut])
        assert np.array_equal(got, np.where(x[:cut] < alpha[:cut], beta[:, :cut], 0))


def test_rejects_runs_that_do_not_cover_the_key() -> None:
    k0, _ = dcf.gen(np.zeros(3, dtype=np.uint64), RNG.ring((1, 3)), 4, RNG)
    for runs in ([2], [4], [3, 0], [1, 1, 1]):
        bad = k0.to_arrays("k")
        bad["k.runs"] = np.array(runs, dtype=np.uint64)
        with pytest.raises(ValueError):
            dcf.DCFKey.from_arrays(bad, "k")
    bad = k0.to_arrays("k")
    bad["k.nonces"] = bad["k.nonces"] | np.array([0, 1 << 16], dtype=np.uint64)
    with pytest.raises(ValueError):
        dcf.DCFKey.from_arrays(bad, "k")


def test_a_one_bit_payload_expands_one_block_per_level() -> None:
    """Lanes (1,): the level's value bit comes from the state block (one AES block per element
    and level, not two), and is cleared from the state, so it never feeds the next level."""
    n, depth = 64, 12
    alpha = _domain(RNG.uint64(n), depth)
    keys = dcf.gen(alpha, np.ones((1, n), dtype=np.int64), depth, RNG, None, (1,))
    x = _domain(RNG.uint64(n), depth)
    rec = _Recording()
    dcf.evaluate(keys[0], x, rec)
    levels = depth - dcf.LEAF_LEVELS  # early termination: the leaf is one more block
    assert keys[0].levels == levels and len(rec.inputs) == levels + 1
    assert [a.shape[:-1] for a in rec.inputs] == [(1, n)] * (levels + 1)
    for level in range(1, levels):  # bit 1 of the input is the level tweak's alone (prg doc)
        bit1 = (rec.inputs[level][..., 0] >> np.uint64(1)) & np.uint64(1)
        assert np.all(bit1 == (level + 1) & 1)
    assert np.array_equal(_reconstruct(keys, x) & 1, (x < alpha).astype(np.int64)[None])


def test_a_one_bit_key_packs_its_level_values_into_the_control_byte() -> None:
    n, depth = 9, 10
    k0, _ = dcf.gen(_domain(RNG.uint64(n), depth), np.ones((1, n), dtype=np.int64), depth, RNG,
                    None, (1,))  # fmt: skip
    arrays = k0.to_arrays("k")
    assert not any(".v_cw" in name for name in arrays) and arrays["k.t_cw"].dtype == np.uint8
    back = dcf.DCFKey.from_arrays(arrays, "k")
    assert np.array_equal(back.v_cw, k0.v_cw) and np.array_equal(back.t_cw, k0.t_cw)
    bad = dict(arrays, **{"k.t_cw": arrays["k.t_cw"] | np.uint8(8)})
    with pytest.raises(ValueError, match="above the value bit"):
        dcf.DCFKey.from_arrays(bad, "k")


def test_any_slice_keeps_every_elements_id_and_evaluates() -> None:
    """take(start, stop) of a joined key: the ids are the whole key's, through the wire too,
    and the slice evaluates to the same comparisons."""
    depth, sizes = 8, (5, 7)
    alpha = _domain(RNG.uint64(sum(sizes)), depth)
    beta = RNG.ring((2, sum(sizes)))
    parts = [
        dcf.gen(alpha[a:b], beta[:, a:b], depth, RNG, None, (64, 64))
        for a, b in ((0, sizes[0]), (sizes[0], sum(sizes)))
    ]
    joined = [dcf.DCFKey.concat([p[b] for p in parts]) for b in (0, 1)]
    ids = joined[0].instance_tweaks
    x = _domain(RNG.uint64(sum(sizes)), depth)
    want = np.where(x < alpha, beta, 0)
    for start, stop in ((0, 12), (2, 4), (3, 9), (5, 12), (7, 8)):
        cut = [k.take(start, stop) for k in joined]
        back = dcf.DCFKey.from_arrays(cut[1].to_arrays("k"), "k")
        assert np.array_equal(back.instance_tweaks, ids[start:stop])
        assert int(back.runs.sum()) == stop - start
        assert np.array_equal(_reconstruct((cut[0], back), x[start:stop]), want[:, start:stop])
    assert joined[0].take(4, 4).size == 0


def test_a_slice_carries_the_nonce_into_its_top_bits() -> None:
    """A key set whose 80-bit start is 2^64 - 3 below a carry: cut after 5 elements, the
    slice's ids are still start + 5 .. (the low word wrapped, the top word went up)."""
    k0, _ = dcf.gen(np.zeros(8, dtype=np.uint64), RNG.ring((1, 8)), 4, RNG)
    edge = replace(k0, nonces=np.array([[2**64 - 3, 7]], dtype=np.uint64))
    ids = edge.instance_tweaks
    cut = edge.take(5, 8)
    assert np.array_equal(cut.nonces, np.array([[2, 8]], dtype=np.uint64))
    assert np.array_equal(cut.instance_tweaks, ids[5:])


@pytest.mark.parametrize("lanes", [(1,), (16, 16), (64, 64, 16)])
def test_the_compiled_walk_queries_the_blocks_of_the_numpy_walks_and_gives_their_shares(
    lanes: tuple[int, ...],
) -> None:
    """The compiled walk feeds the PRG the very same tweaked inputs, level by level, as both
    numpy walks it replaced (tests/unit/dcf_reference.py: tabled and level by level), and
    ends with the same shares, for both parties."""
    n, depth = 300, 20
    alpha = _domain(RNG.uint64(n), depth)
    keys = dcf.gen(alpha, RNG.ring((len(lanes), n)), depth, RNG, None, lanes)
    x = np.concatenate([_domain(RNG.uint64(n - 2), depth), alpha[:2]])
    for key in keys:
        compiled, tabled, walked = _Recording(), _Recording(), _Recording()
        a = dcf.evaluate(key, x, compiled)
        assert np.array_equal(a, dcf_reference.evaluate(key, x, tabled, tabled=True))
        assert np.array_equal(a, dcf_reference.evaluate(key, x, walked, tabled=False))
        calls = key.levels + 1  # the walked levels and the final conversion (or the leaf)
        assert len(compiled.inputs) == len(tabled.inputs) == len(walked.inputs) == calls
        for u, v, w in zip(compiled.inputs, tabled.inputs, walked.inputs, strict=True):
            assert np.array_equal(u, v) and np.array_equal(u, w)


@pytest.mark.parametrize("depth", [8, 9])
def test_early_termination_is_exact_for_every_threshold_and_input(depth: int) -> None:
    """A one-bit key deeper than LEAF_LEVELS stops 7 levels early and packs its leaves:
    every threshold against every input of the domain, both parties' XOR shares."""
    size = 1 << depth
    alpha = np.repeat(np.arange(size, dtype=np.uint64), size)
    x = np.tile(np.arange(size, dtype=np.uint64), size)
    keys = dcf.gen(alpha, np.ones((1, alpha.size), dtype=np.int64), depth, RNG, None, (1,))
    assert [k.leaf for k in keys] == [dcf.LEAF_LEVELS] * 2
    assert keys[0].levels == depth - dcf.LEAF_LEVELS and keys[0].final_cw.shape == (2, alpha.size)
    assert np.array_equal(_reconstruct(keys, x)[0] & 1, (x < alpha).astype(np.int64))


def test_only_deep_one_bit_keys_terminate_early() -> None:
    assert dcf.leaf_levels(47, (1,)) == dcf.leaf_levels(8, (1,)) == dcf.LEAF_LEVELS
    assert dcf.leaf_levels(7, (1,)) == 0  # a leaf would cover the whole domain
    assert dcf.leaf_levels(47, (2,)) == dcf.leaf_levels(47, (64, 64)) == 0


def test_a_leaf_key_round_trips_and_a_missing_or_stray_leaf_is_refused() -> None:
    n, depth = 20, 47
    alpha = _domain(RNG.uint64(n), depth)
    k0, k1 = dcf.gen(alpha, np.ones((1, n), dtype=np.int64), depth, RNG, None, (1,))
    arrays = k0.to_arrays("k")
    assert arrays["k.leaf"].shape == (2, n) and not any(".final_cw" in a for a in arrays)
    back = dcf.DCFKey.from_arrays(arrays, "k")
    assert back.leaf == dcf.LEAF_LEVELS and back.depth == depth
    x = _domain(RNG.uint64(n), depth)
    assert np.array_equal(_reconstruct((back, k1), x)[0] & 1, (x < alpha).astype(np.int64))
    with pytest.raises(ValueError, match="needs its leaf"):
        dcf.DCFKey.from_arrays({k: v for k, v in arrays.items() if k != "k.leaf"}, "k")
    wide = dcf.gen(alpha, RNG.ring((1, n)), depth, RNG, None, (64,))[0].to_arrays("k")
    with pytest.raises(ValueError, match="not a one-bit key"):
        dcf.DCFKey.from_arrays(dict(wide, **{"k.leaf": arrays["k.leaf"]}), "k")
