"""What a cheating server does to the replicated engine today (semi-honest mode), documented.

Server 1 runs a test build (``cheating_server.py``, tests folder only; the
production entry point has no such switch) that flips one bit in one message
it sends: a multiplication's reshare, an AND of the sign circuit (a
comparison), or a truncation's opening. The replicated engine is
semi-honest: **none of these is detected**. The prediction comes back
without an error and is wrong; the next honest job is right again. A
``security = "malicious-abort"`` mode that aborts instead is issue 21's
open part (SECURITY.md, "Known limits").
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-3
# the cheating server's exchanges in one steady-state forward of an MLP (rank 1):
# 1 input reshare; 2 the first layer's product reshared; 3 the sign circuit's first AND
# (with the truncation's mask message arriving); 4 its second AND and the truncation's opening
CASES = {
    "multiplication": (2, 0, 0, 40),  # exchange, to peer, array, bit: 2^40 at scale 2^32
    "comparison": (3, 0, 0, 62),  # the carry's bit 62 flips the sign of element 0
    "opening": (4, 0, 1, 40),  # the opened masked value, 2^40 at scale 2^32
}


@pytest.fixture(scope="module")
def cheating(
    replicated: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalCluster, Path]]:
    """The session's replicated cluster with server 1 swapped for the test build, then back."""
    plan = tmp_path_factory.mktemp("cheating") / "cheat.txt"
    plan.write_text("")
    with pytest.MonkeyPatch.context() as patch:  # the environment the test build starts with
        patch.setenv("PPML_TEST_CHEAT_FILE", str(plan))
        patch.setenv("PYTHONPATH", f"{HERE}:{os.environ.get('PYTHONPATH', '')}")
        replicated.kill("server-1")
        replicated.start_server(1, entry="cheating_server")
    try:
        replicated.wait_serving(timeout=120)
        yield replicated, plan
    finally:
        replicated.kill("server-1")
        replicated.start_server(1)
        replicated.wait_serving(timeout=120)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(11)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        net[0].bias[0] = 5.0  # hidden unit 0 is well inside the ReLU's open side
        for p in net.parameters():
            p.copy_(torch.round(p * 2**16) / 2**16)
    return net.double().eval()


def _predict(local: LocalCluster, model_id: str, x: torch.Tensor) -> torch.Tensor:
    with Cluster.from_config(local.config_path) as sdk:
        return sdk.predict(model_id, x.float()).double()


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_flipped_bit_goes_undetected_in_semi_honest_mode(
    cheating: tuple[LocalCluster, Path], model: torch.nn.Module, case: str
) -> None:
    local, plan = cheating
    model_id = f"cheat-{case}"
    with Cluster.from_config(local.config_path) as sdk:
        sdk.share_model(copy.deepcopy(model).float(), torch.zeros(1, 6), model_id=model_id)
    x = torch.rand(1, 6).double()
    with torch.no_grad():
        plain = model(x)
    honest = _predict(local, model_id, x)  # also sets up keys and the model
    assert (honest - plain).abs().max() < TOLERANCE
    plan.write_text(" ".join(map(str, CASES[case])))
    try:
        cheated = _predict(local, model_id, x)  # no error: the engine cannot tell
    finally:
        plan.write_text("")
    assert (cheated - plain).abs().max() > 0.1, f"{case}: the flipped bit changed nothing"
    again = _predict(local, model_id, x)
    assert (again - plain).abs().max() < TOLERANCE
