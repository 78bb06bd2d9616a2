"""DP aggregation in MPC between real processes: clipping, calibrated noise, its split.

Two and three parties (plus the dealer) run ``servers/mpc/aggregation/aggregate.py`` on
fixed updates (``mpc_programs.aggregation``): once with no noise, to check
clipping inside MPC against plaintext, then many times with noise. Each party
reports its share of every released average and, for this test only, the
noise it drew itself, so the test can check what a single curious server
faces: the released noise minus that server's own draws must still have the
calibrated standard deviation ``z * C`` (divided by the public count).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ppml.proto import shares
from ppml.proto.domain.architecture import Architecture, Linear
from ppml.proto.domain.federations import flatten
from ppml.servers.mpc.core.clipping import CLIP_MARGIN
from ppml.training.privacy import clip_update, gaussian_sigma
from tests.integration.mpc_cluster import MpcCluster
from tests.integration.mpc_programs import aggregation_updates

UPDATES = 4
REPEATS = 25  # 1 without noise, then 24 noisy rounds: 24 * 36 = 864 noise samples
CLIP = 1.5
Z = 0.8
ARCH = Architecture((Linear(5, 6, True),), (5,), (6,))


def _run(directory: Path, parties: int) -> dict[int, dict]:
    cluster = MpcCluster(
        directory,
        parties,
        agg_updates=UPDATES,
        agg_repeats=REPEATS,
        agg_clip=CLIP,
        agg_noise_multiplier=Z,
    )
    try:
        cluster.start("aggregate")
        return cluster.results()
    finally:
        cluster.stop()


@pytest.fixture(scope="module", params=[2, 3])
def parties(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, list[dict]]]:
    n = int(request.param)
    results = _run(tmp_path_factory.mktemp(f"agg{n}"), n)
    yield n, [results[rank] for rank in range(n)]


def _opened(parts: list[dict], key: str, index: int | None = None) -> np.ndarray:
    rings = [
        np.asarray(p[key] if index is None else p["runs"][index]["share"], dtype=np.int64)
        for p in parts
    ]
    return shares.decode(shares.reconstruct(rings))


def _updates() -> list[np.ndarray]:
    return [flatten(ARCH, u) for u in aggregation_updates(7, UPDATES)]


def test_plain_average_matches_numpy(parties: tuple[int, list[dict]]) -> None:
    _, parts = parties
    expected = np.mean(_updates(), axis=0)
    assert parts[0]["weight"] == pytest.approx(UPDATES, abs=1e-3)  # sum of weights 1 each
    assert np.max(np.abs(_opened(parts, "plain") - expected)) < 1e-3


def test_clipping_in_mpc_matches_plaintext(parties: tuple[int, list[dict]]) -> None:
    _, parts = parties
    updates = _updates()
    norms = [float(np.linalg.norm(u)) for u in updates]
    assert min(norms) < CLIP < max(norms)  # some are clipped, some are not
    bound = CLIP * (1 - CLIP_MARGIN)  # the margin keeps clipped norms below C
    expected = np.mean([clip_update(u, bound) for u in updates], axis=0)
    assert np.max(np.abs(_opened(parts, "", 0) - expected)) < 2e-3
    assert all(not any(p["runs"][0]["noise"]) for p in parts)  # z = 0: nobody drew noise


def test_released_noise_has_the_calibrated_variance_and_no_server_knows_it(
    parties: tuple[int, list[dict]],
) -> None:
    n, parts = parties
    clean = np.mean([clip_update(u, CLIP * (1 - CLIP_MARGIN)) for u in _updates()], axis=0)
    sigma = gaussian_sigma(CLIP, Z)
    noise = np.stack([_opened(parts, "", i) - clean for i in range(1, REPEATS)])  # (runs, d)
    samples = noise.size
    tolerance = 4 * np.sqrt(2 / samples)  # 4 standard errors of a sample variance, relative
    total_expected = n / (n - 1) * sigma**2 / UPDATES**2
    assert abs(noise.var() / total_expected - 1) < tolerance
    assert abs(noise.mean()) < 4 * np.sqrt(total_expected / samples)
    for rank in range(n):  # what server `rank` cannot subtract: everyone else's draws
        own = np.stack([np.asarray(parts[rank]["runs"][i]["noise"]) for i in range(1, REPEATS)])
        assert own.std() > 0  # it did add noise of its own
        hidden = noise - own / UPDATES
        assert abs(hidden.var() / (sigma**2 / UPDATES**2) - 1) < tolerance
        # and its own draws explain only their share of the released noise
        corr = np.corrcoef(own.reshape(-1), noise.reshape(-1))[0, 1]
        assert abs(corr - np.sqrt(1 / n)) < 0.1
