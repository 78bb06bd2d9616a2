"""DP-SGD's MPC pieces between real processes (2 parties + the dealer) against plaintext torch.

* the secret sum of per-example clipped gradients (no noise) of an MLP
  equals torch's per-example autograd gradients, each clipped, summed;
* the secret clip factors ``min(1, C' / norm)`` (``C'`` = ``C`` less the
  margin) are right from norms just above ``C`` to ~30,000 times it, and
  no clipped norm exceeds ``C``;
* each party's own noise lands on the shared value: the opened noise has
  the standard deviation of all parties' draws together.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mpc_cluster import MpcCluster

from ppml.servers.mpc.core.clipping import CLIP_MARGIN

FIXED_POINT = 2e-2  # 16 fractional bits, softmax and inverse square root approximations


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    cluster = MpcCluster(tmp_path_factory.mktemp("dpsgd"), 2)
    try:
        cluster.start("dpsgd")
        yield cluster.results()[0]
    finally:
        cluster.stop()


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_clipped_gradient_sums_match_plaintext_per_example_clipping(
    result: dict, loss: str
) -> None:
    errors = result["errors"]
    # the data exercise both branches of min(1, C / norm)
    assert errors[f"{loss}_clipped_examples"] >= 2
    assert errors[f"{loss}_unclipped_examples"] >= 1
    for layer in (0, 1, 2, 3):
        name = "weight" if layer % 2 == 0 else "bias"
        assert errors[f"{loss}_param{layer}_{name}"] < FIXED_POINT, errors


def test_clip_factors_keep_every_clipped_norm_under_the_bound(result: dict) -> None:
    found = result["factors"]
    clip = found["clip"]
    for factor, norm in zip(found["factor"], found["norm"], strict=True):
        target = min(1.0, clip * (1 - CLIP_MARGIN) / norm) if norm else 1.0
        # fixed point: 2^-16 absolute; the inverse square root: 0.5 % relative
        assert factor == pytest.approx(target, rel=5e-3, abs=2e-5), (factor, target, norm)
        assert factor * norm <= clip * (1 + 1e-4) + 2e-5 * norm, (factor, norm)


def test_every_party_adds_its_own_noise_to_its_share(result: dict) -> None:
    noise = result["noise"]
    # 4000 draws: the sample std is within 5% of sqrt(2) * 0.5 with overwhelming probability
    assert noise["noise_std"] == pytest.approx(noise["noise_expected_std"], rel=0.05)
    assert abs(noise["noise_mean"]) < 0.05
