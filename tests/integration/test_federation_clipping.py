"""DP-FedAvg clipping through the stock SDK, against real servers (TLS, 2 servers + dealer).

SECURITY.md issue 18, finding 2, end to end: a participant whose local
training returns absurd weights (the SDK only refuses NaN and infinities)
sends them through ``join_federation`` like any other update. Before the
fix, an update of 65536 per parameter squared to 0 mod 2^64, went through
unclipped and opened as 32768 per coordinate of the average. Now every
coordinate is range-checked in MPC and the update counts as zero: the
released average is the other (zero) update plus the calibrated noise.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from ppml.client import Cluster
from ppml.proto.domain import federations as fed

OFFICES = ("office-1", "office-2")
CLIP, Z = 1.0, 0.05
SAMPLE = torch.zeros(1, 5)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # public: initial weights of a test model
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


def _all_65536(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.add_(65536.0)


def _weights_10_one_bias_large(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            p.add_(10.0)
    model[2].bias[0] += 65535.875


CRAFTED: dict[str, Callable[[torch.nn.Module], None]] = {
    "all 65536": _all_65536,
    "10.0 per weight, one bias of 65535.875": _weights_10_one_bias_large,
}


def _params(model: torch.nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().double().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name", CRAFTED)
def test_a_crafted_update_from_the_stock_sdk_adds_nothing_to_the_release(
    owner: Cluster, offices: dict[str, Cluster], name: str
) -> None:
    dp = fed.DpSettings(clip_norm=CLIP, noise_multiplier=Z)
    initial = _model()
    handle = owner.create_federation(initial, list(OFFICES), rounds=1, dp=dp, sample_input=SAMPLE)

    def crafted(model: torch.nn.Module, round_no: int) -> tuple[torch.nn.Module, int, None]:
        with torch.no_grad():
            CRAFTED[name](model)
        return model, 10, None

    trains: dict[str, Any] = {OFFICES[0]: lambda m, r: (m, 10, None), OFFICES[1]: crafted}
    reports: dict[str, Any] = {}

    def run(office: str) -> None:
        try:
            reports[office] = offices[office].join_federation(
                handle.federation_id, trains[office], timeout=120
            )
        except Exception as exc:  # reported to the test
            reports[office] = exc

    threads = [threading.Thread(target=run, args=(office,)) for office in OFFICES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert all(not isinstance(r, Exception) for r in reports.values()), reports
    info = handle.wait(timeout=60)
    assert info.state is fed.FederationState.SUCCEEDED
    assert all(r.applied for r in info.results)  # the stock SDK sent it; the servers took it
    release = _params(owner.export_model(info.model_id).to_torch()) - _params(initial)
    # both servers' noise on the sum: std sqrt(n / (n - 1)) z C per coordinate, n = 2 servers
    noise_on_sum = math.sqrt(2) * Z * CLIP
    moved = np.linalg.norm(release * len(OFFICES))  # the sum of the clipped updates, plus noise
    assert moved <= CLIP + 6 * noise_on_sum * math.sqrt(release.size)  # before: 32768 each
    assert np.max(np.abs(release * len(OFFICES))) < 6 * noise_on_sum  # in fact only noise
