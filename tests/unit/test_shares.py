"""Tests for ppml.proto.shares: fixed-point encoding and additive sharing over Z_2^64."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
import torch

from ppml.proto import shares
from ppml.proto.shares import (
    FRACTIONAL_BITS,
    MAX_ABS_VALUE,
    decode,
    encode,
    random_ring,
    reconstruct,
    share,
)

INT64_MIN = np.iinfo(np.int64).min
INT64_MAX = np.iinfo(np.int64).max

VALUES = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    2.0**-16,
    -(2.0**-16),
    2.0**-17,
    3.0 * 2.0**-18,
    1 / 3,
    -1 / 3,
    np.pi,
    -np.e,
    123456.789,
    -98765.4321,
    MAX_ABS_VALUE - 1.0,
    -(MAX_ABS_VALUE - 1.0),
    np.nextafter(MAX_ABS_VALUE, 0.0),
    -np.nextafter(MAX_ABS_VALUE, 0.0),
]


# ---------------------------------------------------------------- encode / decode


def test_fractional_bits_is_the_wire_contract() -> None:
    assert FRACTIONAL_BITS == 16
    assert encode(1.0) == 1 << 16
    assert encode(-1.5) == -(3 << 15)


@pytest.mark.parametrize("value", VALUES)
def test_encode_decode_round_trip_within_half_an_ulp(value: float) -> None:
    encoded = encode(value)
    assert encoded.dtype == np.int64
    assert abs(float(decode(encoded)) - value) <= 2.0**-17


def test_encode_decode_round_trip_over_a_dense_grid() -> None:
    rng = np.random.default_rng(1)
    grid = np.concatenate(
        [
            np.linspace(-1000.0, 1000.0, 10_000),
            rng.uniform(-MAX_ABS_VALUE, MAX_ABS_VALUE, 10_000) * 0.999,
            rng.normal(0.0, 1e-3, 10_000),
        ]
    ).reshape(3, 10, -1)
    encoded = encode(grid)
    assert encoded.shape == grid.shape
    assert encoded.dtype == np.int64
    assert np.max(np.abs(decode(encoded) - grid)) <= 2.0**-17


def test_encode_rounds_to_nearest_not_truncates() -> None:
    assert encode(0.75 * 2.0**-16) == 1
    assert encode(-0.75 * 2.0**-16) == -1
    assert encode(0.25 * 2.0**-16) == 0


def test_encode_does_not_modify_its_input() -> None:
    values = np.array([1.25, -2.5, 3.0])
    before = values.copy()
    encode(values)
    np.testing.assert_array_equal(values, before)


def test_decode_is_exact_inverse_on_ring_values() -> None:
    ring = np.array([0, 1, -1, 1 << 16, -(1 << 40), (1 << 46) - 1], dtype=np.int64)
    np.testing.assert_array_equal(encode(decode(ring)), ring)


@pytest.mark.parametrize(
    "bad",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        [1.0, float("nan")],
        MAX_ABS_VALUE,
        -MAX_ABS_VALUE,
        2.0**40,
        [0.0, -1e300],
    ],
)
def test_encode_rejects_nan_inf_and_too_large(bad: object) -> None:
    with pytest.raises(ValueError):
        encode(bad)


def test_encode_accepts_empty() -> None:
    assert encode(np.zeros((0, 3))).shape == (0, 3)


# ---------------------------------------------------------------- share / reconstruct

SHAPES = [(), (1,), (7,), (3, 4), (2, 3, 5), (1, 1, 1, 1), (0,), (4, 0, 2)]
PARTIES = [2, 3, 4, 5]


def _ring_values(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random int64 values that also hit both extremes and the wrap-around edges."""
    rng = np.random.default_rng(seed)
    values = rng.integers(INT64_MIN, INT64_MAX, size=shape, dtype=np.int64, endpoint=True)
    flat = values.reshape(-1)
    specials = np.array([INT64_MIN, INT64_MAX, -1, 0, 1, INT64_MIN + 1], dtype=np.int64)
    flat[: min(flat.size, specials.size)] = specials[: flat.size]
    return values


@pytest.mark.parametrize("parties", PARTIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_share_reconstruct_round_trip(shape: tuple[int, ...], parties: int) -> None:
    secret = _ring_values(shape, seed=parties * 100 + len(shape))
    before = secret.copy()
    parts = share(secret, parties)
    assert len(parts) == parties
    for part in parts:
        assert part.shape == secret.shape
        assert part.dtype == np.int64
    np.testing.assert_array_equal(reconstruct(parts), secret)
    np.testing.assert_array_equal(secret, before)  # input untouched


@pytest.mark.parametrize("parties", PARTIES)
@pytest.mark.parametrize("extreme", [INT64_MIN, INT64_MAX, -1, 0])
def test_share_wraps_around_at_int64_extremes(parties: int, extreme: int) -> None:
    secret = np.full((64,), extreme, dtype=np.int64)
    for _ in range(5):
        np.testing.assert_array_equal(reconstruct(share(secret, parties)), secret)


def test_share_of_encoded_floats_decodes_back() -> None:
    values = np.linspace(-50.0, 50.0, 101).reshape(1, -1)
    for parties in PARTIES:
        out = decode(reconstruct(share(encode(values), parties)))
        assert np.max(np.abs(out - values)) <= 2.0**-17


def test_reconstruct_sums_modulo_2_64() -> None:
    parts = [
        np.array([INT64_MAX, INT64_MIN], dtype=np.int64),
        np.array([1, -1], dtype=np.int64),
    ]
    np.testing.assert_array_equal(reconstruct(parts), np.array([INT64_MIN, INT64_MAX]))


def test_reconstruct_rejects_no_shares() -> None:
    with pytest.raises(ValueError):
        reconstruct([])


@pytest.mark.parametrize("parties", PARTIES)
def test_random_shares_differ_between_calls(parties: int) -> None:
    secret = np.zeros((4, 8), dtype=np.int64)
    first = share(secret, parties)
    second = share(secret, parties)
    for i in range(1, parties):
        assert not np.array_equal(first[i], second[i])
        # full-range randomness: 32 draws all in a narrow band would be astronomically unlikely
        assert np.any(first[i] < -(1 << 62)) or np.any(first[i] > (1 << 62))
    # share 0 is the secret minus the masks, so it differs too
    assert not np.array_equal(first[0], second[0])


@pytest.mark.parametrize("parties", [-1, 0, 1])
def test_share_rejects_fewer_than_two_parties(parties: int) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        share(np.zeros(3, dtype=np.int64), parties)


# ---------------------------------------------------------------- CSPRNG


def test_random_ring_shape_and_dtype() -> None:
    for shape in [(), (5,), (2, 3), (0, 4)]:
        ring = random_ring(shape)
        assert ring.shape == shape
        assert ring.dtype == np.int64


def test_random_ring_draws_from_secrets_token_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = secrets.token_bytes

    def spy(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(shares.secrets, "token_bytes", spy)
    random_ring((3, 4))
    assert calls == [8 * 12]
    calls.clear()
    share(np.zeros((2, 5), dtype=np.int64), 4)
    assert calls == [3 * 80]  # every mask from one draw


def test_random_ring_is_little_endian_bytes_of_the_csprng(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = bytes(range(16))
    monkeypatch.setattr(shares.secrets, "token_bytes", lambda n: raw[:n])
    ring = random_ring((2,))
    expected = [
        int.from_bytes(raw[:8], "little", signed=True),
        int.from_bytes(raw[8:], "little", signed=True),
    ]
    assert ring.tolist() == expected


def test_share_masks_come_from_the_csprng_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the CSPRNG replaced by a constant, the masks are exactly that constant."""
    monkeypatch.setattr(shares.secrets, "token_bytes", lambda n: b"\x01" * n)
    secret = np.arange(6, dtype=np.int64)
    parts = share(secret, 3)
    constant = int.from_bytes(b"\x01" * 8, "little", signed=True)
    assert (parts[1] == constant).all()
    assert (parts[2] == constant).all()
    np.testing.assert_array_equal(reconstruct(parts), secret)


def test_seeding_numpy_and_torch_does_not_repeat_shares() -> None:
    secret = np.zeros((16,), dtype=np.int64)
    np.random.seed(1234)
    torch.manual_seed(1234)
    first = share(secret, 2)
    np.random.seed(1234)
    torch.manual_seed(1234)
    second = share(secret, 2)
    assert not np.array_equal(first[1], second[1])


def test_share_named_splits_every_tensor_per_party() -> None:
    import numpy as np

    from ppml.proto.shares import decode, reconstruct, share_named

    values = {"0.weight": np.arange(6.0).reshape(2, 3) / 7, "0.bias": np.array([-1.5, 2.25])}
    per_party = share_named(values, 3)
    assert len(per_party) == 3 and all(set(p) == set(values) for p in per_party)
    for name, value in values.items():
        parts = [p[name] for p in per_party]
        assert not np.array_equal(parts[1], parts[2])
        np.testing.assert_allclose(decode(reconstruct(parts)), value, atol=2**-16)
