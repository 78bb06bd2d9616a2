"""All-or-nothing uploads: staged records in the stores, the leader's decisions, the gate."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ppml.proto.domain import commands as cmd
from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.control.uploads import UploadCoordinator, UploadGate, upload_key
from ppml.servers.store.datasets import DATASET_CODEC
from ppml.servers.store.storage import FileShareStore, MemoryShareStore, ShareStore

Store = ShareStore
STORES: dict[str, Callable[[Path], Store]] = {
    "memory": lambda _: MemoryShareStore(DATASET_CODEC),
    "file": lambda root: FileShareStore(root, DATASET_CODEC),
}


def _header(dataset_id: str) -> DatasetMeta:
    return DatasetMeta(dataset_id, "", "alice", 3, (4,), 2, ())


def _arrays() -> dict[str, np.ndarray]:
    return {"features": np.arange(12, dtype=np.int64).reshape(3, 4), "labels": np.ones((3, 2))}


@pytest.mark.parametrize("backend", STORES)
def test_a_staged_record_is_invisible_until_committed(tmp_path: Path, backend: str) -> None:
    store = STORES[backend](tmp_path)
    store.stage(_header("d1"), _arrays(), "u1")
    assert not store.has("d1") and store.list() == [] and store.count() == 0
    with pytest.raises(PpmlError):
        store.get_shares("d1")
    assert store.staged() == [("d1", "u1")]
    assert store.committed_upload("d1") is None
    assert store.commit("d1", "u1")
    assert store.has("d1") and store.staged() == []
    assert store.committed_upload("d1") == "u1"
    np.testing.assert_array_equal(store.get_shares("d1")["features"], _arrays()["features"])
    assert store.commit("d1", "u1")  # again: already this upload's


@pytest.mark.parametrize("backend", STORES)
def test_commit_never_overwrites_unless_told_and_discard_never_drops_a_record(
    tmp_path: Path, backend: str
) -> None:
    store = STORES[backend](tmp_path)
    store.stage(_header("d1"), _arrays(), "u1")
    store.commit("d1", "u1")
    store.stage(_header("d1"), _arrays(), "u2")
    assert not store.commit("d1", "u2")  # the leader's own commit: the id is taken
    assert store.committed_upload("d1") == "u1" and store.staged() == [("d1", "u2")]
    store.discard("d1", "u1")  # u1 is committed, not staged: nothing happens
    assert store.has("d1")
    assert store.commit("d1", "u2", replace=True)  # a follower follows the leader
    assert store.committed_upload("d1") == "u2"
    store.stage(_header("d2"), _arrays(), "u3")
    store.discard("d2", "u3")
    assert store.staged() == [] and not store.has("d2")
    assert not store.commit("d2", "u3")  # discarded: nothing to commit


def test_a_staged_record_survives_a_restart_and_a_half_written_one_does_not(
    tmp_path: Path,
) -> None:
    store = FileShareStore(tmp_path, DATASET_CODEC)
    store.stage(_header("d1"), _arrays(), "u1")
    (tmp_path / "datasets" / ".tmp-crashed").mkdir()  # a crash while staging
    reopened = FileShareStore(tmp_path, DATASET_CODEC)
    assert reopened.staged() == [("d1", "u1")]
    assert not (tmp_path / "datasets" / ".tmp-crashed").exists()
    with pytest.raises(PpmlError):
        reopened.has(".staged-x")  # no id reaches a staged folder


def test_upload_ids_are_required_and_scoped_to_the_caller() -> None:
    with pytest.raises(PpmlError) as err:
        upload_key("dataset", "alice", "")
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    assert upload_key("dataset", "alice", "u") != upload_key("dataset", "bob", "u")
    assert upload_key("dataset", "alice", "u") != upload_key("model", "alice", "u")


class World:
    """A leader's coordinator and every rank's gate, wired by hand (no network)."""

    def __init__(self, ranks: int = 3, clock: Callable[[], float] | None = None) -> None:
        self.stores = [MemoryShareStore(DATASET_CODEC) for _ in range(ranks)]
        self.gates = [
            UploadGate({"dataset": s}, lambda m, r=rank: self._submit(r, m))  # type: ignore[misc]
            for rank, s in enumerate(self.stores)
        ]
        self.sent: list[tuple[int | None, cmd.UploadDecision]] = []
        self.coordinator = UploadCoordinator(
            ranks, self.gates[0], self._send, pending_s=60.0, clock=clock or (lambda: 0.0)
        )

    def _submit(self, rank: int, message: cmd.PartyMessage) -> bool:
        assert isinstance(message, cmd.Staged)
        self.coordinator.staged(rank, message)
        return True

    def _send(self, rank: int | None, decision: cmd.UploadDecision) -> None:
        self.sent.append((rank, decision))
        for to, gate in enumerate(self.gates):
            if to > 0 and rank in (None, to):
                gate.apply(decision)

    def stage(self, rank: int, record_id: str = "d1", upload: str = "u1") -> None:
        self.stores[rank].stage(_header(record_id), _arrays(), upload)
        self._submit(rank, cmd.Staged("dataset", record_id, upload))

    def holders(self, record_id: str = "d1") -> list[bool]:
        return [s.has(record_id) for s in self.stores]


def test_the_leader_commits_once_every_rank_has_staged() -> None:
    world = World()
    world.stage(1)
    world.stage(0)
    assert world.holders() == [False, False, False]  # rank 2 has not staged yet
    world.stage(2)
    assert world.holders() == [True, True, True]
    assert [d.commit for _, d in world.sent] == [True]


def test_a_resolve_before_every_rank_staged_aborts_everywhere_also_late_stagers() -> None:
    world = World()
    world.stage(0)
    world.stage(1)
    assert not world.coordinator.resolve("dataset", "d1", "u1").commit
    assert [s.staged() for s in world.stores] == [[], [], []]
    world.stage(2)  # its stream was slow: it is told the abort at once
    assert world.holders() == [False, False, False]
    assert world.stores[2].staged() == []


def test_a_resolve_after_the_commit_reports_it() -> None:
    world = World(ranks=2)
    world.stage(0)
    world.stage(1)
    assert world.coordinator.resolve("dataset", "d1", "u1").commit
    assert world.holders() == [True, True]


def test_a_follower_that_missed_the_commit_gets_it_when_it_announces_again() -> None:
    world = World(ranks=2)
    world.stores[1].stage(_header("d1"), _arrays(), "u1")
    world.gates[1].apply = lambda decision, replace=True: False  # type: ignore[method-assign]
    world._submit(1, cmd.Staged("dataset", "d1", "u1"))
    world.stage(0)  # the leader commits; the follower "crashes" before applying it
    assert world.holders() == [True, False]
    restarted = UploadGate({"dataset": world.stores[1]}, lambda m: world._submit(1, m))
    world.gates[1] = restarted
    for record_id, upload in world.stores[1].staged():  # what its announce loop sends
        world._submit(1, cmd.Staged("dataset", record_id, upload))
    assert world.holders() == [True, True]


def test_a_restarted_leader_commits_what_it_had_committed_and_what_all_hold() -> None:
    world = World(ranks=2)
    world.gates[1].apply = lambda decision, replace=True: False  # type: ignore[method-assign]
    world.stage(1, "kept", "u1")
    world.stage(0, "kept", "u1")  # the leader commits; the follower misses it
    del world.gates[1].apply
    world.stores[0].stage(_header("both"), _arrays(), "u2")
    world.stores[1].stage(_header("both"), _arrays(), "u2")
    assert world.holders("kept") == [True, False]
    # the leader restarts: a fresh coordinator over the same store, no memory
    world.coordinator = UploadCoordinator(2, world.gates[0], world._send, pending_s=60.0)
    world._submit(1, cmd.Staged("dataset", "kept", "u1"))
    assert world.holders("kept") == [True, True]
    world._submit(1, cmd.Staged("dataset", "both", "u2"))  # staged on both but never
    world._submit(0, cmd.Staged("dataset", "both", "u2"))  # decided: every rank holds it
    assert world.holders("both") == [True, True]


def test_an_attempt_not_staged_everywhere_in_time_is_aborted() -> None:
    now = [0.0]
    world = World(ranks=2, clock=lambda: now[0])
    world.stage(0)
    now[0] = 61.0
    world.stage(1, "d2", "u2")  # any message lets the leader expire old attempts
    assert world.stores[0].staged() == []
    world.stage(1)
    assert world.holders() == [False, False] and world.stores[1].staged() == [("d2", "u2")]


def test_stage_waits_for_the_decision_and_says_an_abort_is_safe_to_retry() -> None:
    store = MemoryShareStore(DATASET_CODEC)
    announced = threading.Event()
    gate = UploadGate({"dataset": store}, lambda m: announced.set() or True)

    def decide() -> None:
        announced.wait(5)
        gate.apply(cmd.UploadDecision("dataset", "d1", "u1", False, "server-1 went away"))

    threading.Thread(target=decide).start()
    with pytest.raises(PpmlError) as err:
        gate.stage("dataset", _header("d1"), _arrays(), "u1", timeout_s=5)
    assert err.value.code == ErrorCode.UPLOAD_ABORTED
    assert (
        "server-1 went away" in err.value.detail and "safe to upload it again" in err.value.detail
    )
    assert store.staged() == []
    with pytest.raises(PpmlError) as late:
        gate.stage("dataset", _header("d2"), _arrays(), "u9", timeout_s=0.05)
    assert late.value.code == ErrorCode.DEADLINE_EXCEEDED


def test_the_upload_messages_round_trip_through_the_control_link() -> None:
    from ppml.proto.wire import serde

    staged = cmd.Staged("model", "m1", "model-upload:abc:u1")
    assert serde.party_message_from_proto(serde.party_message_to_proto(staged)) == staged
    decision = cmd.UploadDecision("dataset", "d1", "u1", False, "server-1 went away")
    wire = serde.leader_command_to_proto(decision)
    assert serde.leader_command_from_proto(wire, {}) == decision
