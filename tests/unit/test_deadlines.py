"""How long a prediction or evaluation may wait: the caller's deadline, a default, a cap.

A call without a gRPC deadline used to reach the hold table with ~2^63 s to
wait: the server answered INTERNAL (``OverflowError: timestamp out of
range``) and the leader kept the request queued for ever (found by fuzzing).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import cluster_config, make_env

from ppml.client.deploy.local import write_local_topology
from ppml.proto.deploy.topology import ServingConfig, load_config
from ppml.proto.domain import commands as cmd
from ppml.proto.domain.architecture import Architecture, Linear
from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.shares import random_ring
from ppml.servers.kinds.base import KindEnv
from ppml.servers.kinds.evaluate import EvaluationService
from ppml.servers.kinds.predict import InferenceService, drop_margin

NO_DEADLINE = 9.223372035058736e18  # gRPC's time_remaining() for a call without a deadline


@pytest.mark.parametrize(
    ("remaining", "wait"),
    [
        (None, 30.0),
        (NO_DEADLINE, 30.0),
        (float("inf"), 30.0),
        (float("nan"), 30.0),
        (5.0, 5.0),
        (300.0, 300.0),
        (3600.0, 300.0),
        (9.7e7, 300.0),  # what gRPC reports for a deadline 1e9 s away
        (0.0, 0.0),
        (-1.0, 0.0),
    ],
)
def test_wait_s(remaining: float | None, wait: float) -> None:
    assert ServingConfig().wait_s(remaining) == wait


def test_the_default_is_capped_too() -> None:
    assert ServingConfig(default_timeout_s=60.0, max_timeout_s=10.0).wait_s(None) == 10.0


def test_max_timeout_comes_from_the_topology_file(tmp_path: Path) -> None:
    path = write_local_topology(tmp_path, 2, {"max_timeout_s": 12.5})
    assert load_config(path).serving.max_timeout_s == 12.5


def _env(serving: ServingConfig, announced: list[cmd.Announce], drop: bool) -> KindEnv:
    """A server with model ``m`` and dataset ``d``; ``drop``: the leader drops every announce."""

    def submit(message: cmd.PartyMessage) -> bool:
        assert isinstance(message, cmd.Announce)
        announced.append(message)
        if drop:
            env.holds.fail([message.id], "dropped by the test's leader")
        return True

    env = make_env(submit=submit, config=cluster_config(serving=serving))
    architecture = Architecture((Linear(4, 2),), (4,), (2,))
    shares = {"0.weight": random_ring((2, 4)), "0.bias": random_ring((2,))}
    env.models.upload("m", "", "owner", architecture, shares)
    meta = DatasetMeta("d", "", "owner", 3, (4,), 2)
    env.datasets.upload(meta, [(random_ring((3, 4)), random_ring((3, 2)))])
    return env


SERVING = ServingConfig(default_timeout_s=7.0, max_timeout_s=20.0)
CASES = [(NO_DEADLINE, 7.0), (3600.0, 20.0), (2.0, 2.0)]


@pytest.mark.parametrize(("remaining", "wait"), CASES)
def test_prediction_announces_a_bounded_deadline(remaining: float, wait: float) -> None:
    announced: list[cmd.Announce] = []
    env = _env(SERVING, announced, drop=True)
    with pytest.raises(PpmlError) as excinfo:
        InferenceService(env).predict("r1", "m", random_ring((1, 4)), remaining, "owner")
    assert excinfo.value.code == ErrorCode.PREDICTION_ABORTED
    (announce,) = announced
    assert announce.timeout_s == pytest.approx(wait - drop_margin(wait))
    assert len(env.holds) == 0


@pytest.mark.parametrize(("remaining", "wait"), CASES)
def test_evaluation_announces_a_bounded_deadline(remaining: float, wait: float) -> None:
    announced: list[cmd.Announce] = []
    env = _env(SERVING, announced, drop=True)
    with pytest.raises(PpmlError) as excinfo:
        EvaluationService(env).evaluate("e1", "m", "d", "owner", remaining)
    assert excinfo.value.code == ErrorCode.EVALUATION_ABORTED
    (announce,) = announced
    assert announce.timeout_s == pytest.approx(max(0.5, wait - 1.0))


def test_prediction_without_deadline_times_out_after_the_default() -> None:
    env = _env(ServingConfig(default_timeout_s=0.1), [], drop=False)
    with pytest.raises(PpmlError) as excinfo:
        InferenceService(env).predict("r1", "m", random_ring((1, 4)), NO_DEADLINE, "owner")
    assert excinfo.value.code == ErrorCode.DEADLINE_EXCEEDED


def test_evaluation_without_deadline_times_out_after_the_default() -> None:
    env = _env(ServingConfig(default_timeout_s=0.1), [], drop=False)
    with pytest.raises(PpmlError) as excinfo:
        EvaluationService(env).evaluate("e1", "m", "d", "owner", NO_DEADLINE)
    assert excinfo.value.code == ErrorCode.DEADLINE_EXCEEDED
    assert len(env.holds) == 0
