"""DP-SGD job requests (ppml.training.privacy.dpsgd): checks, calibration, epsilon spent."""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import pytest
from dp_accounting import rdp

from ppml.proto.domain import architecture as arch
from ppml.proto.domain.jobs import TrainingSpec
from ppml.training.privacy import RDP_ORDERS, FixedSizeSampling, dpsgd

BASE = TrainingSpec(("d",), epochs=2, batch_size=50, lr=0.1)


def _dp(**changes: object) -> TrainingSpec:
    values: dict[str, object] = {"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.1}
    values.update(changes)
    return dataclasses.replace(BASE, **values)  # type: ignore[arg-type]


def test_dp_is_off_by_default_and_the_default_spec_passes() -> None:
    assert not BASE.dp
    dpsgd.check_spec(BASE)
    dpsgd.check_spec(_dp())
    dpsgd.check_spec(_dp(dp_noise_multiplier=None, dp_target_epsilon=1.0, dp_delta=1e-6))
    dpsgd.check_spec(_dp(dp_noise_multiplier=0.0))  # clipping only: allowed, epsilon inf


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dp_clip_norm": math.nan}, "dp_clip_norm must be"),
        ({"dp_clip_norm": -0.1}, "dp_clip_norm must be"),
        ({"dp_clip_norm": math.inf}, "dp_clip_norm must be"),
        ({"dp_clip_norm": 0.0}, "need dp_clip_norm > 0"),
        ({"dp_noise_multiplier": None}, "needs dp_noise_multiplier"),
        ({"dp_noise_multiplier": math.nan}, "dp_noise_multiplier must lie"),
        ({"dp_noise_multiplier": 1e5}, "dp_noise_multiplier must lie"),
        ({"dp_target_epsilon": 1.0}, "not both"),
        ({"dp_noise_multiplier": None, "dp_target_epsilon": -1.0}, "dp_target_epsilon must"),
        ({"dp_delta": 1.0}, "dp_delta must lie"),
        ({"dp_delta": -1e-5}, "dp_delta must lie"),
        ({"reveal_metrics": True}, "reveal_metrics"),
        ({"standardize": True}, "standardize"),
        ({"seed": 7}, "leave seed at 0"),  # DP batches come from the servers' secret key
    ],
)
def test_bad_requests_say_what_is_wrong(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dpsgd.check_spec(_dp(**changes))


def test_only_mlp_layers_are_supported() -> None:
    mlp = arch.Architecture((arch.Linear(4, 8), arch.ReLU(), arch.Linear(8, 3)), (4,), (3,))
    dpsgd.check_architecture(mlp)
    cnn = arch.Architecture(
        (arch.Conv2d(1, 2, (3, 3), (1, 1), (0, 0)), arch.MaxPool2d((2, 2), (2, 2)),
         arch.Flatten(), arch.Linear(2, 3)),
        (1, 6, 6), (3,),
    )  # fmt: skip
    with pytest.raises(ValueError, match="conv2d, max_pool2d"):
        dpsgd.check_architecture(cnn)
    with pytest.raises(ValueError, match="at least one linear layer"):
        dpsgd.check_architecture(arch.Architecture((arch.ReLU(),), (4,), (4,)))


def test_delta_must_be_below_one_over_rows() -> None:
    assert dpsgd.plan(_dp(), rows=1000).delta == dpsgd.DEFAULT_DELTA
    with pytest.raises(ValueError, match="not below 1/rows"):
        dpsgd.plan(_dp(dp_delta=0.01), rows=100)


def test_epsilon_is_dp_accountings_for_fixed_size_batches_without_replacement() -> None:
    plan = dpsgd.plan(_dp(), rows=1000)
    assert plan.sampling == FixedSizeSampling(1000, 50) and plan.sigma == pytest.approx(1.1)
    accountant = rdp.RdpAccountant(
        orders=list(RDP_ORDERS), neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    # replacing one row moves the clipped sum by 2C: the Gaussian's multiplier is z / 2
    step = dp_accounting.SampledWithoutReplacementDpEvent(
        1000, 50, dp_accounting.GaussianDpEvent(1.1 / 2)
    )
    accountant.compose(step, 30)
    assert plan.epsilon(30) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    assert plan.epsilon(0) == 0.0
    assert math.isinf(dpsgd.plan(_dp(dp_noise_multiplier=0.0), rows=1000).epsilon(1))


def test_target_epsilon_calibrates_the_multiplier_over_the_jobs_steps() -> None:
    spec = _dp(dp_noise_multiplier=None, dp_target_epsilon=2.0)
    plan = dpsgd.plan(spec, rows=1000)
    steps = spec.steps_total(1000)
    assert plan.noise_multiplier > 0
    assert 1.99 <= plan.epsilon(steps) <= 2.0
    # a multiplier resolved earlier (the job's record) is used as is
    assert dpsgd.plan(spec, rows=1000, noise_multiplier=0.5).noise_multiplier == 0.5
