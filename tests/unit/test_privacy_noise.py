"""Noise scale, its split across servers, clipping, capped weights and the CSPRNG draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppml.training.privacy import (
    SecureRandom,
    capped_weights,
    clip_update,
    dp_weighted_average,
    gaussian_sigma,
    per_server_noise_std,
    total_noise_std,
)

GRID = [(s, n) for s in (0.1, 1.0, 3.7) for n in (2, 3, 5, 10)]


def test_sigma_is_noise_multiplier_times_clip_norm() -> None:
    assert gaussian_sigma(2.0, 1.1) == pytest.approx(2.2)
    with pytest.raises(ValueError):
        gaussian_sigma(0.0, 1.0)


@pytest.mark.parametrize(("sigma", "n"), GRID)
def test_any_single_server_still_faces_sigma(sigma: float, n: int) -> None:
    s = per_server_noise_std(sigma, n)
    # a curious server subtracts its own draw: n - 1 independent draws remain
    assert (n - 1) * s**2 == pytest.approx(sigma**2)
    assert n * s**2 == pytest.approx(total_noise_std(sigma, n) ** 2)
    assert total_noise_std(sigma, n) == pytest.approx(sigma * math.sqrt(n / (n - 1)))
    # the naive split sigma / sqrt(n) would leave too little against one server
    assert (n - 1) * (sigma / math.sqrt(n)) ** 2 < sigma**2


@pytest.mark.parametrize(("n", "t"), [(3, 2), (5, 2), (10, 4)])
def test_pooling_servers_still_face_sigma(n: int, t: int) -> None:
    s = per_server_noise_std(1.5, n, curious_servers=t)
    assert (n - t) * s**2 == pytest.approx(1.5**2)


@pytest.mark.parametrize(("n", "t"), [(1, 1), (2, 2), (3, 0)])
def test_split_needs_someone_left_to_hide_the_noise(n: int, t: int) -> None:
    with pytest.raises(ValueError):
        per_server_noise_std(1.0, n, curious_servers=t)


def test_empirically_one_servers_residual_noise_has_variance_sigma_squared() -> None:
    sigma, n, draws = 2.0, 3, 200_000
    rng = SecureRandom()
    noise = [rng.normal(draws, per_server_noise_std(sigma, n)) for _ in range(n)]
    residual = sum(noise) - noise[0]  # what server 0 cannot remove
    assert residual.var() == pytest.approx(sigma**2, rel=0.02)


@pytest.mark.parametrize("clip", [0.01, 1.0, 50.0])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_clip_update_bounds_the_norm_and_keeps_direction(clip: float, scale: float) -> None:
    update = np.random.default_rng(0).normal(size=257) * scale
    original = update.copy()
    clipped = clip_update(update, clip)
    norm = np.linalg.norm(update)
    assert np.linalg.norm(clipped) <= clip * (1 + 1e-12)
    assert np.allclose(clipped, update * min(1.0, clip / norm))
    assert np.array_equal(update, original)  # input untouched


def test_clip_zero_vector() -> None:
    assert np.array_equal(clip_update(np.zeros(4), 1.0), np.zeros(4))


def test_capped_weights_stay_in_unit_interval() -> None:
    weights = capped_weights([10, 500, 2000, 7], cap=1000)
    assert weights.tolist() == [0.01, 0.5, 1.0, 0.007]
    with pytest.raises(ValueError):
        capped_weights([0, 3], cap=10)


def test_dp_average_without_noise_is_the_clipped_weighted_average() -> None:
    rng = np.random.default_rng(1)
    updates = [rng.normal(size=20) * k for k in (0.1, 1.0, 10.0)]
    weights = [1.0, 0.5, 0.25]
    expected = sum(w * clip_update(u, 2.0) for w, u in zip(weights, updates, strict=True)) / 1.75
    got = dp_weighted_average(updates, weights, 2.0, 0.0, n_servers=2)
    assert np.allclose(got, expected)


def test_dp_average_noise_has_the_split_total_scale() -> None:
    updates, weights, clip, z, n = [np.zeros(50_000)], [1.0], 1.0, 1.3, 3
    got = dp_weighted_average(updates, weights, clip, z, n_servers=n, denominator=4.0)
    assert got.std() == pytest.approx(total_noise_std(z * clip, n) / 4.0, rel=0.02)


def test_dp_average_refuses_uncapped_weights() -> None:
    with pytest.raises(ValueError, match="capped_weights"):
        dp_weighted_average([np.ones(3)], [300.0], 1.0, 1.0, n_servers=2)


def test_secure_random_uniform_and_integers() -> None:
    rng = SecureRandom()
    u = rng.random(100_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert u.mean() == pytest.approx(0.5, abs=0.005)
    for high in (2, 6, 2**40 + 3):
        values = rng.integers(high, 60_000)
        assert values.min() >= 0 and values.max() < high
        if high < 10:
            counts = np.bincount(values, minlength=high)
            expected = 60_000 / high
            assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))
    assert rng.integers(1, 5).tolist() == [0] * 5


def test_secure_random_normal_and_no_repeats() -> None:
    rng = SecureRandom()
    z = rng.normal(100_001, std=2.5)
    assert z.size == 100_001
    assert z.mean() == pytest.approx(0.0, abs=0.05)
    assert z.std() == pytest.approx(2.5, rel=0.02)
    assert not np.array_equal(rng.random(8), rng.random(8))
