"""The federation layer alone: the manager's round state and the leader's planner.

No processes, no MPC: a :class:`FederationManager` over in-memory stores and
a :class:`FederationPlanner` with an explicit clock, fed announcements the way
the leader would.
"""

from __future__ import annotations

import dataclasses
import secrets

import grpc
import numpy as np
import pytest

from ppml.proto.domain import commands as cmd
from ppml.proto.domain import federations as fed
from ppml.proto.domain.architecture import Architecture, Linear
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.kinds import end
from ppml.servers.kinds.federate import MAX_ATTEMPTS, FederateRound, FederationPlanner
from ppml.servers.store.federations import FEDERATION_CODEC, FederationManager
from ppml.servers.store.models import ModelRegistry
from ppml.servers.store.storage import MemoryModelStore, MemoryShareStore
from ppml.training import ckks

ARCH = Architecture((Linear(3, 2, True),), (3,), (2,))
PEOPLE = ("a", "b", "c")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _zeros() -> dict[str, np.ndarray]:
    return {n: np.zeros(s, dtype=np.int64) for n, s in ARCH.parameter_shapes().items()}


@pytest.fixture
def announced() -> list[cmd.PartyMessage]:
    return []


@pytest.fixture
def manager(announced: list[cmd.PartyMessage]) -> FederationManager:
    models = ModelRegistry(MemoryModelStore())
    store = MemoryShareStore(FEDERATION_CODEC)
    return FederationManager("leader", 0, store, models, lambda m: announced.append(m) or True)


def _create(manager: FederationManager, fid: str = "f1", **spec: object) -> fed.FederationInfo:
    settings = {"participants": PEOPLE, "rounds": 2, "min_participants": 2, **spec}
    return manager.create(
        fid, f"{fid}-model", "", "owner", ARCH, fed.FederationSpec(**settings), _zeros()
    )


def _submit(manager: FederationManager, who: str, round_no: int = 1) -> int:
    one = np.ones(1, dtype=np.int64)
    return manager.submit("f1", who, round_no, _zeros(), one, None)


def test_submissions_are_announced_with_their_count(
    manager: FederationManager, announced: list[cmd.PartyMessage]
) -> None:
    _create(manager)
    created = announced[-1]
    assert isinstance(created, cmd.Announce) and created.group.startswith("created:")
    assert _submit(manager, "a") == 1
    assert _submit(manager, "b") == 2
    last = announced[-1]
    assert isinstance(last, cmd.Announce) and (last.group, last.size) == ("round:1", 2)
    assert manager.get("f1", "owner").submitted == ("a", "b")


@pytest.mark.parametrize(
    ("who", "round_no", "code"),
    [
        ("mallory", 1, ErrorCode.PERMISSION_DENIED),
        ("a", 2, ErrorCode.INVALID_FEDERATION),
    ],
)
def test_refused_submissions_change_nothing(
    manager: FederationManager, who: str, round_no: int, code: ErrorCode
) -> None:
    _create(manager)
    with pytest.raises(PpmlError) as caught:
        _submit(manager, who, round_no)
    assert caught.value.code is code
    assert manager.get("f1", "owner").submitted == ()


def test_a_ckks_update_is_parsed_at_submission_and_refused_before_it_is_kept(
    manager: FederationManager, announced: list[cmd.PartyMessage]
) -> None:
    keys = ckks.key_ceremony()
    ctx = ckks.load_context(keys.participant_context)
    count = fed.parameter_count(ARCH)
    initial = ckks.serialize(ckks.encrypt_update(ctx, np.zeros(count), 1))
    spec = fed.FederationSpec(
        participants=PEOPLE, rounds=1, backend="ckks", ckks_fingerprint=keys.fingerprint
    )
    manager.create("f1", "m1", "", "owner", ARCH, spec, {}, keys.public_context, initial)
    real = ckks.encrypt_update(ctx, np.full(count, 0.5), 10)
    random = tuple(secrets.token_bytes(len(c)) for c in real.chunks)  # same lengths
    garbage = {
        "chunk 0 is not a ciphertext": dataclasses.replace(real, chunks=random),
        "must lie in": dataclasses.replace(real, weight=float(fed.MAX_UPDATE_WEIGHT + 1)),
        "must lie in ": dataclasses.replace(real, weight=0.5),
    }
    before = len(announced)
    for match, bad in garbage.items():
        with pytest.raises(PpmlError, match=match) as caught:
            manager.submit_encrypted("f1", "a", 1, ckks.serialize(bad))
        assert caught.value.code is ErrorCode.INVALID_UPDATE
        assert caught.value.status is grpc.StatusCode.INVALID_ARGUMENT
    assert manager.get("f1", "owner").submitted == () and len(announced) == before
    assert manager.submit_encrypted("f1", "a", 1, ckks.serialize(real)) == 1  # still open


def test_second_submission_and_closed_round(manager: FederationManager) -> None:
    _create(manager)
    _submit(manager, "a")
    with pytest.raises(PpmlError) as twice:
        _submit(manager, "a")
    assert twice.value.code is ErrorCode.ALREADY_SUBMITTED
    result = fed.RoundResult(1, ("a",), ("b", "c"), applied=False, reason="too few")
    manager.close_round("f1", result, None)
    info = manager.get("f1", "owner")
    assert (info.round, info.submitted, info.results) == (2, (), (result,))
    with pytest.raises(PpmlError) as late:
        _submit(manager, "b", 1)
    assert late.value.code is ErrorCode.ROUND_CLOSED
    assert "round 2 is open" in late.value.detail


def test_last_round_without_any_applied_fails(manager: FederationManager) -> None:
    _create(manager, rounds=1)
    manager.close_round("f1", fed.RoundResult(1, (), PEOPLE, applied=False), None)
    info = manager.get("f1", "owner")
    assert info.state is fed.FederationState.FAILED
    assert "no round" in info.reason


def test_last_applied_round_registers_the_model(manager: FederationManager) -> None:
    _create(manager, rounds=1)
    manager.close_round("f1", fed.RoundResult(1, PEOPLE, (), applied=True), _zeros())
    info = manager.get("f1", "owner")
    assert info.state is fed.FederationState.SUCCEEDED
    with pytest.raises(PpmlError) as finished:
        _submit(manager, "a", 2)
    assert finished.value.code is ErrorCode.FEDERATION_FINISHED


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"participants": ()}, "at least one participant"),
        ({"participants": ("a", "a")}, "twice"),
        ({"rounds": 0}, "rounds"),
        ({"min_participants": 4}, "min_participants"),
        ({"strategy": "fedprox"}, "mu > 0"),
        ({"mu": 0.1}, "fedprox"),
        ({"round_deadline_s": 0.1}, "round_deadline_s"),
        ({"backend": "ckks", "dp": fed.DpSettings(1.0, 1.0)}, "DP noise is added inside MPC"),
        ({"dp": fed.DpSettings(1.0)}, "noise_multiplier or target_epsilon"),
        ({"dp": fed.DpSettings(1.0, 1.0, 2.0)}, "not both"),
        ({"dp": fed.DpSettings(0.0, 1.0)}, "clip_norm > 0"),
        ({"dp": fed.DpSettings(1.0, 1.0, delta=0.0)}, "delta"),
        ({"dp": fed.DpSettings(1.0, float("nan"))}, "finite"),
        ({"dp": fed.DpSettings(1.0, 0.2, epsilon_budget=1.0)}, "over the budget"),
        ({"loss": "hinge"}, "hinge"),
    ],
)
def test_invalid_settings_are_refused_before_anything_is_kept(
    manager: FederationManager, spec: dict[str, object], words: str
) -> None:
    with pytest.raises(PpmlError) as caught:
        _create(manager, **spec)
    assert caught.value.code is ErrorCode.INVALID_FEDERATION
    assert words in caught.value.detail
    assert manager.list("owner") == []


def test_calibrated_noise_fits_the_target_over_every_round(manager: FederationManager) -> None:
    from ppml.training.privacy import fedavg_epsilon

    info = _create(manager, rounds=4, dp=fed.DpSettings(1.0, target_epsilon=3.0))
    assert info.noise_multiplier > 0
    assert fedavg_epsilon(info.noise_multiplier, 4, 1e-5) <= 3.0 + 1e-9
    assert fedavg_epsilon(info.noise_multiplier * 0.97, 4, 1e-5) > 3.0  # not much more noise


# ---------------------------------------------------------------- the planner


def _announce(planner: FederationPlanner, rank: int, group: str, size: int = 0) -> None:
    planner.announce(rank, cmd.Announce(fed.KIND, "f1", group, size, 60.0), 0.0)


def _created_everywhere(planner: FederationPlanner, world: int = 2) -> None:
    for rank in range(world):
        _announce(planner, rank, "created:abc")


def test_a_round_closes_once_every_server_holds_every_update(manager: FederationManager) -> None:
    clock = Clock()
    info = _create(manager)
    clock.now = info.round_deadline_unix_s - 100
    planner = FederationPlanner(manager, 2, clock)
    _created_everywhere(planner)
    _announce(planner, 0, "round:1", 3)
    _announce(planner, 1, "round:1", 2)
    assert planner.next_job(0.0, 0.0) is None
    _announce(planner, 1, "round:1", 3)
    assert planner.next_job(0.0, 0.0) == (fed.KIND, FederateRound("f1", 1))


def test_a_round_closes_at_its_deadline_with_whoever_submitted(
    manager: FederationManager,
) -> None:
    clock = Clock()
    info = _create(manager)
    planner = FederationPlanner(manager, 2, clock)
    _created_everywhere(planner)
    _announce(planner, 0, "round:1", 1)
    clock.now = info.round_deadline_unix_s - 0.5
    assert planner.next_job(0.0, 0.0) is None
    clock.now = info.round_deadline_unix_s
    assert planner.next_job(0.0, 0.0) == (fed.KIND, FederateRound("f1", 1))


def test_mismatched_or_missing_servers_end_it(manager: FederationManager) -> None:
    clock = Clock()
    _create(manager)
    planner = FederationPlanner(manager, 2, clock)
    _announce(planner, 0, "created:abc")
    assert planner.next_job(0.0, 0.0) is None
    _announce(planner, 1, "created:xyz")
    kind, job = planner.next_job(0.0, 0.0) or ("", None)
    assert kind == end.KIND and job.state == "failed" and "different" in job.reason

    clock2 = Clock()
    other = FederationPlanner(manager, 2, clock2)
    _announce(other, 0, "created:abc")
    clock2.now += 61
    kind, job = other.next_job(0.0, 0.0) or ("", None)
    assert kind == end.KIND and "not created on server ranks [1]" in job.reason


def test_cancel_ends_it_and_repeated_failures_end_it(manager: FederationManager) -> None:
    clock = Clock()
    info = _create(manager)
    planner = FederationPlanner(manager, 2, clock)
    _created_everywhere(planner)
    planner.cancel("unknown", "x")  # ignored
    clock.now = info.round_deadline_unix_s
    for attempt in range(MAX_ATTEMPTS):
        chosen = planner.next_job(0.0, 0.0)
        assert chosen == (fed.KIND, FederateRound("f1", 1)), attempt
        planner.done(fed.KIND, chosen[1], False, "a server went away", 0.0)
    kind, job = planner.next_job(0.0, 0.0) or ("", None)
    assert kind == end.KIND and f"failed {MAX_ATTEMPTS} times" in job.reason
    planner.cancel("f1", "cancelled by owner")  # already ending: nothing more
    assert planner.next_job(0.0, 0.0) is None


def test_cancel_becomes_an_end_job_on_every_party(manager: FederationManager) -> None:
    _create(manager)
    planner = FederationPlanner(manager, 2, Clock())
    _created_everywhere(planner)
    planner.cancel("f1", "cancelled by owner")
    assert planner.next_job(0.0, 0.0) == (
        end.KIND,
        end.EndJob("f1", "cancelled", "cancelled by owner"),
    )
    manager.end("f1", "cancelled", "cancelled by owner")  # what the end job does
    assert manager.get("f1", "owner").state is fed.FederationState.CANCELLED
    assert manager.open_rounds() == []


def test_a_federation_that_ended_here_is_forgotten(manager: FederationManager) -> None:
    clock = Clock()
    _create(manager, rounds=1)
    planner = FederationPlanner(manager, 2, clock)
    _created_everywhere(planner)
    _announce(planner, 0, "round:1", 3)
    assert planner.next_job(0.0, 0.0) is None  # rank 1 has not got every update yet
    manager.close_round("f1", fed.RoundResult(1, PEOPLE, (), applied=True), _zeros())
    assert planner.next_job(0.0, 0.0) is None
    assert (planner._created, planner._counts, planner._first_seen) == ({}, {}, {})
