"""Unit tests for ppml.servers.mpc.core.ttp_plan with a fake communicator (one layer, no MPC).

Between real processes the plan is checked against plaintext in
``tests/integration/test_mpc_engine.py``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ppml.servers.mpc.core import ttp_plan
from ppml.servers.mpc.core.crypten_compat import crypten

DEALER = 2


class FakeComm:
    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        self.sent: list[Any] = []
        self.answers = 0
        self.broken: list[str] = []

    def break_session(self, reason: str) -> None:
        self.broken.append(reason)

    def get_rank(self) -> int:
        return self.rank

    def get_ttp_rank(self) -> int:
        return DEALER

    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        assert dst == DEALER
        self.sent.append(obj)

    def recv_obj(self, src: int, group: Any = None) -> Any:
        return torch.Size([2])

    def broadcast(self, tensor: torch.Tensor, src: int, group: Any = None) -> None:
        self.answers += 1
        tensor.fill_(self.answers)


@pytest.fixture
def comm(monkeypatch: pytest.MonkeyPatch) -> FakeComm:
    fake = FakeComm()
    monkeypatch.setattr(crypten.communicator, "get", lambda: fake)
    monkeypatch.setattr(crypten.communicator, "is_initialized", lambda: True)
    monkeypatch.setattr(ttp_plan, "_provider", lambda: "TTP")
    return fake


CLIENT = SimpleNamespace(ttp_group=None, comm_group=None)
SIZE = torch.Size([2])


def _ask(op: str = "mul") -> torch.Tensor:
    result: torch.Tensor = ttp_plan.request(CLIENT, "additive", None, SIZE, SIZE, op)
    return result


def test_first_run_records_later_runs_send_one_plan_and_read_the_answers(comm: FakeComm) -> None:
    plans = ttp_plan.Plans()
    with plans.section("step"):
        first = [_ask(), _ask("matmul")]
    assert [m["function"] for m in comm.sent] == ["additive", "additive"]
    comm.sent.clear()
    with plans.section("step"):
        again = [_ask(), _ask("matmul")]
    assert len(comm.sent) == 1 and comm.sent[0]["function"] == ttp_plan.BATCH
    (plan,) = comm.sent[0]["args"]
    assert [m["args"] for m in plan] == [(SIZE, SIZE, "mul"), (SIZE, SIZE, "matmul")]
    assert [t.tolist() for t in first + again] == [[1, 1], [2, 2], [3, 3], [4, 4]]
    comm.sent.clear()
    with plans.section("other"):  # another key records afresh
        _ask()
    assert [m["function"] for m in comm.sent] == ["additive"]


def test_a_request_off_the_plan_or_a_short_run_fails_loudly(comm: FakeComm) -> None:
    plans = ttp_plan.Plans()
    with plans.section("step"):
        _ask()
        _ask()
    with pytest.raises(ttp_plan.PlanMismatch, match="not the planned one"), plans.section("step"):
        _ask("conv2d")
    with pytest.raises(ttp_plan.PlanMismatch, match="made 1 of its 2"), plans.section("step"):
        _ask()
    with pytest.raises(ttp_plan.PlanMismatch), plans.section("step"):
        _ask()
        _ask()
        _ask()  # one more than planned
    assert len(comm.broken) == 3  # each failed planned section ended the session
    with pytest.raises(KeyError), plans.section("other"):
        raise KeyError("a failure while recording")  # every request was answered: no harm
    assert len(comm.broken) == 3
    with pytest.raises(KeyError), plans.section("step"):
        _ask()
        raise KeyError("a failure in a planned section")
    assert len(comm.broken) == 4


def test_outside_rank_0_or_the_ttp_a_section_changes_nothing(
    comm: FakeComm, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans = ttp_plan.Plans()
    comm.rank = 1
    with plans.section("step"):
        pass
    comm.rank = 0
    monkeypatch.setattr(ttp_plan, "_provider", lambda: "TFP")  # test-only provider: no dealer
    with plans.section("step"):
        _ask()
    assert [m["function"] for m in comm.sent] == ["additive"]  # live, nothing recorded
    monkeypatch.setattr(ttp_plan, "_provider", lambda: "TTP")
    with plans.section("step"):
        _ask()
    with plans.section("step"):
        _ask()
    assert [m["function"] for m in comm.sent] == ["additive", "additive", ttp_plan.BATCH]
    off = ttp_plan.Plans(enabled=False)  # [serving] plan_dealer_requests = false
    for _ in range(2):
        with off.section("step"):
            _ask()
    assert [m["function"] for m in comm.sent][-2:] == ["additive", "additive"]
