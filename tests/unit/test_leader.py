"""The leader's sequencing, alone: fake links (outboxes), a fake worker, an explicit clock.

Drives :meth:`Leader._step` by hand instead of its thread, so every decision
is observed in order: epochs, jobs to every party, drops, heartbeats.
"""

from __future__ import annotations

import queue
from typing import Any, cast

import pytest
from fakes import cluster_config, make_env

from ppml.proto.deploy.topology import ServingConfig
from ppml.proto.domain import commands as cmd
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.wire import serde
from ppml.servers import kinds
from ppml.servers.api.servicers import CoordinatorServicer
from ppml.servers.control.holds import Hold
from ppml.servers.control.leader import Leader
from ppml.v1 import coordinator_pb2

WORLD = 3
DEALER = WORLD


class Harness:
    def __init__(self, heartbeat_s: float = 20.0) -> None:
        self.now = 100.0
        config = cluster_config(
            WORLD, ServingConfig(heartbeat_s=heartbeat_s, max_wait_ms=5.0, max_delay_ms=50.0)
        )
        self.env = make_env(world_size=WORLD, config=config)
        self.here: list[cmd.JoinEpoch | cmd.RunJob] = []  # what rank 0's worker was given
        self.leader = Leader(
            config,
            self.here.append,
            self.env.holds,
            kinds.planners(kinds.build(self.env), WORLD),
            clock=lambda: self.now,
        )
        self.outboxes: dict[int, queue.Queue[cmd.LeaderCommand | None]] = {}

    def connect(self, rank: int) -> None:
        role = "dealer" if rank == DEALER else "party"
        self.outboxes[rank] = self.leader.attach(cmd.Hello(rank, role, "x"))

    def connect_all(self) -> None:
        for rank in range(1, WORLD + 1):
            self.connect(rank)

    def step(self, advance: float = 0.0) -> None:
        self.now += advance
        with self.leader._cond:
            self.leader._step(self.now)

    def sent(self, rank: int) -> list[cmd.LeaderCommand | None]:
        out = []
        while not self.outboxes[rank].empty():
            out.append(self.outboxes[rank].get_nowait())
        return out

    def up(self) -> int:
        """Start and join an epoch on every party; returns it."""
        self.connect_all()
        self.step()
        join = self.here[-1]
        assert isinstance(join, cmd.JoinEpoch)
        self.leader.on_joined(join.epoch, True, "")
        for rank in self.outboxes:
            self.sent(rank)
        self.here.clear()
        return join.epoch

    def announce_everywhere(self, announce: cmd.Announce) -> None:
        for rank in range(WORLD):
            assert self.leader.submit(rank, announce)


def _predict(request_id: str, rows: int = 1) -> cmd.Announce:
    return cmd.Announce("predict", request_id, "model-1", rows, 30.0)


def test_no_session_until_every_party_and_the_dealer_are_linked() -> None:
    h = Harness()
    h.connect(1)
    h.connect(2)
    h.step()
    assert h.here == [] and h.leader.state == "down"
    h.connect(DEALER)
    h.step()
    (join,) = h.here
    assert isinstance(join, cmd.JoinEpoch) and join.epoch == 1
    for rank in (1, 2, DEALER):  # the dealer joins epochs too
        assert h.sent(rank) == [join]
    assert h.leader.state == "joining"
    h.leader.on_joined(1, True, "")
    assert h.leader.state == "up"


def test_every_party_gets_the_same_jobs_in_the_same_order() -> None:
    h = Harness()
    epoch = h.up()
    h.announce_everywhere(_predict("r1"))
    h.announce_everywhere(_predict("r2"))
    h.step(advance=1.0)  # quiet gap passed: one batch of both
    (run,) = h.here
    assert isinstance(run, cmd.RunJob) and run.kind == "predict" and run.epoch == epoch
    assert run.job.request_ids == ("r1", "r2")
    assert h.sent(1) == [run] and h.sent(2) == [run]
    assert h.sent(DEALER) == []  # the dealer never runs jobs
    h.announce_everywhere(cmd.Announce("evaluate", "e1", "", 1, 30.0))
    h.step(advance=1.0)
    assert len(h.here) == 1  # one job in flight at a time
    h.leader.on_job_done(run, True)
    h.step()
    second = h.here[-1]
    assert isinstance(second, cmd.RunJob) and second.kind == "evaluate"
    assert second.seq == run.seq + 1
    assert h.sent(1) == [second] and h.sent(2) == [second]


def test_predictions_go_before_training_steps() -> None:
    h = Harness()
    h.up()
    h.announce_everywhere(cmd.Announce("train", "job-1", "", 5, 30.0))
    h.announce_everywhere(_predict("r1"))
    h.step(advance=1.0)
    assert [r.kind for r in h.here if isinstance(r, cmd.RunJob)] == ["predict"]


def test_heartbeat_only_when_idle_for_heartbeat_s() -> None:
    h = Harness(heartbeat_s=20.0)
    h.up()
    h.step(advance=19.0)
    assert h.here == []
    h.step(advance=1.5)
    (run,) = h.here
    assert isinstance(run, cmd.RunJob) and run.kind == "heartbeat"


def test_a_peer_dying_drops_its_requests_and_restarts_the_session() -> None:
    h = Harness()
    epoch = h.up()
    hold = Hold("r1", "predict", None, ErrorCode.PREDICTION_ABORTED)
    h.env.holds.add(hold)
    h.leader.submit(0, _predict("r1"))
    h.leader.submit(2, _predict("r1"))  # rank 1 never got its share
    h.leader.detach(2, h.outboxes[2])
    assert h.leader.state == "down"
    with pytest.raises(PpmlError) as excinfo:
        hold.future.result(timeout=0)
    assert excinfo.value.code == ErrorCode.PREDICTION_ABORTED
    drops = [c for c in h.sent(1) if isinstance(c, cmd.DropRequests)]
    assert drops and drops[0].request_ids == ("r1",)
    h.step()
    assert h.here == []  # rank 2 is gone: no new epoch yet
    h.connect(2)
    h.step()
    join = h.here[-1]
    assert isinstance(join, cmd.JoinEpoch) and join.epoch == epoch + 1
    assert len(bytes.fromhex(join.tag)) == 16  # a fresh 128-bit tag per epoch


def test_a_started_training_job_fails_everywhere_when_the_session_restarts() -> None:
    h = Harness()
    h.up()
    h.announce_everywhere(cmd.Announce("train", "job-1", "", 5, 30.0))
    h.step()
    step = h.here[-1]
    assert isinstance(step, cmd.RunJob) and step.kind == "train" and step.job.step == 0
    h.leader.on_job_done(step, True)
    h.leader.detach(DEALER, h.outboxes[DEALER])  # the dealer died between steps
    h.connect(DEALER)
    h.step()
    join = h.here[-1]
    assert isinstance(join, cmd.JoinEpoch)
    h.leader.on_joined(join.epoch, True, "")
    h.step()
    end = h.here[-1]
    assert isinstance(end, cmd.RunJob) and end.kind == "end_job"
    assert end.job.job_id == "job-1" and end.job.state == "failed"
    assert "dealer" in end.job.reason


def test_a_failed_job_restarts_the_session_shortly() -> None:
    h = Harness()
    epoch = h.up()
    h.announce_everywhere(_predict("r1"))
    h.step(advance=1.0)
    run = h.here[-1]
    assert isinstance(run, cmd.RunJob)
    h.leader.on_job_done(run, False)
    assert h.leader.state == "down"
    h.step(advance=0.1)
    assert not any(isinstance(c, cmd.JoinEpoch) for c in h.here)
    h.step(advance=0.2)
    join = h.here[-1]
    assert isinstance(join, cmd.JoinEpoch) and join.epoch == epoch + 1


def test_predictions_are_refused_while_the_session_is_down() -> None:
    h = Harness()
    h.connect_all()
    assert not h.leader.submit(0, _predict("r1"))
    assert not h.leader.submit(1, _predict("r2"))
    drops = [c for c in h.sent(1) if isinstance(c, cmd.DropRequests)]
    assert drops[-1].request_ids == ("r2",)  # the follower's caller hears at once
    assert h.leader.submit(1, cmd.Announce("train", "job-1", "", 3, 30.0))  # long work waits


def test_a_cancel_ends_the_job_on_every_party_in_sequence() -> None:
    h = Harness()
    h.up()
    h.announce_everywhere(cmd.Announce("train", "job-1", "", 5, 30.0))
    assert h.leader.submit(1, cmd.CancelJob("job-1", "cancelled by owner"))
    h.step()
    end = h.here[-1]
    assert isinstance(end, cmd.RunJob) and end.kind == "end_job"
    assert (end.job.state, end.job.reason) == ("cancelled", "cancelled by owner")
    assert h.sent(1) == [end] and h.sent(2) == [end]


def test_a_job_that_failed_alike_everywhere_ends_without_restarting_the_session() -> None:
    h = Harness()
    epoch = h.up()
    h.announce_everywhere(cmd.Announce("train", "job-1", "", 5, 30.0))
    h.step()
    step = h.here[-1]
    assert isinstance(step, cmd.RunJob) and step.kind == "train"
    h.leader.on_job_done(step, False, session_sound=True)
    assert h.leader.state == "up"
    h.step()
    end = h.here[-1]
    assert isinstance(end, cmd.RunJob) and end.kind == "end_job" and end.epoch == epoch
    assert end.job.state == "failed" and "alike" in end.job.reason
    assert not any(isinstance(c, cmd.JoinEpoch) for c in h.here)


@pytest.mark.parametrize(
    "messages",
    [
        [],  # the stream ended at once: was INTERNAL (StopIteration in the handler), by fuzzing
        [coordinator_pb2.PartyMessage()],
        [serde.party_message_to_proto(_predict("r1"))],
        [serde.party_message_to_proto(cmd.Hello(0, "party", "x"))],  # rank 0 is the leader
        [serde.party_message_to_proto(cmd.Hello(1, "dealer", "x"))],
    ],
    ids=["empty", "no-kind", "announce-first", "hello-rank-0", "hello-wrong-role"],
)
def test_a_link_must_start_with_a_valid_hello(messages: list[coordinator_pb2.PartyMessage]) -> None:
    h = Harness()
    link = CoordinatorServicer(h.leader).Link(iter(messages), cast(Any, None))
    with pytest.raises(PpmlError) as excinfo:
        next(link)
    assert excinfo.value.code == ErrorCode.INVALID_ARGUMENT
    assert h.leader.links_up == []
