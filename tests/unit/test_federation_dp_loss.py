"""A participant sends its local loss only to federations without DP.

The noise of DP-FedAvg covers the updates, not the losses: with DP the SDK
sends no loss share at all (and the servers would not add one up, see
``servers/kinds/federate.py`` and tests/integration/test_federation.py).
The cluster here is a fake that records each server's request.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest

from ppml.client.federation import Participant
from ppml.proto import shares
from ppml.proto.domain import federations as fed
from ppml.proto.domain.architecture import Architecture, Linear
from ppml.proto.wire import serde
from ppml.v1 import federation_pb2


class _Recorder:
    def __init__(self, sent: list[federation_pb2.SubmitUpdateRequest]) -> None:
        self.sent = sent

    def future(self, request: Any, timeout: float, metadata: Any) -> None:
        self.sent.append(request)


class _Server:
    def __init__(self, sent: list[federation_pb2.SubmitUpdateRequest]) -> None:
        self.federation = type("Stub", (), {"SubmitUpdate": _Recorder(sent)})()


class _Cluster:
    """The parts of ClusterBase that a participant's MPC submission uses."""

    parties, timeout, _metadata = 2, 1.0, ()

    def __init__(self) -> None:
        self.sent: list[federation_pb2.SubmitUpdateRequest] = []
        self._servers = [_Server(self.sent) for _ in range(self.parties)]

    def _call_all(self, call: Any, fail_fast: bool = True) -> list[Any]:
        return [call(server, rank) for rank, server in enumerate(self._servers)]


def _info(dp: fed.DpSettings) -> fed.FederationInfo:
    architecture = Architecture((Linear(2, 1, True),), (2,), (1,))
    spec = fed.FederationSpec(participants=("a", "b"), rounds=1, dp=dp)
    return fed.FederationInfo("f1", "m1", "f1", "owner", architecture, spec, round=1)


@pytest.mark.parametrize(
    ("dp", "sends_loss"),
    [(fed.DpSettings(), True), (fed.DpSettings(clip_norm=1.0, noise_multiplier=2.0), False)],
)
def test_the_loss_leaves_only_without_dp(dp: fed.DpSettings, sends_loss: bool) -> None:
    cluster = _Cluster()
    participant = Participant(cast(Any, cluster), "f1", lambda model, r: (model, 4, 0.75))
    delta = {"0.weight": np.full((1, 2), 0.1), "0.bias": np.zeros(1)}
    participant._submit_mpc(_info(dp), delta, 4, 0.75)
    assert len(cluster.sent) == 2  # one request per server
    assert all(r.HasField("loss") is sends_loss for r in cluster.sent)
    if sends_loss:  # weighted by the rows, like the update
        parts = [serde.share_from_proto(r.loss, what="loss") for r in cluster.sent]
        assert shares.decode(shares.reconstruct(parts))[0] == pytest.approx(3.0, abs=1e-4)
