"""The ``federate`` kind: closing one round of a federation on every party.

The gRPC side is :class:`~ppml.servers.store.federations.FederationManager`
(settings, submissions, events). Every server announces a federation when it
is created (with a fingerprint of its public settings) and again whenever a
participant's update arrives (the count for the open round). The leader's
:class:`FederationPlanner` closes a round, as a ``FederateRound`` job on
every party, once every server holds every participant's update or when the
round's deadline passes. The job:

1. agrees, by a public all-reduce of flags, on the participants whose
   updates *every* server holds (an update that reached only some servers
   is left out), then, with the MPC back end, drops every update whose
   secret weight (sample count; 1 with DP) is out of range, comparing in
   MPC and opening one validity bit per participant
   (:mod:`ppml.servers.mpc.aggregation.update_checks`): a garbage weight share can no
   longer make the opened total absurd and fail the round;
2. fails the round cleanly (model unchanged, nothing released, no epsilon
   spent) if fewer than ``min_participants`` remain;
3. otherwise aggregates: in MPC (:mod:`ppml.servers.mpc.aggregation.aggregate`), adding
   this party's share of the average to its share of the global model, or,
   with CKKS, the leader sums the ciphertexts and keeps the encrypted sum;
   on a cluster with ``engine = "replicated"`` (three servers, no dealer) the
   range check and the average run on that engine
   (:mod:`ppml.servers.mpc.rep3.service.aggregate`, opening the same: the
   validity bits and the total weight), and DP federations are refused there
   when created;
4. spends the round's privacy cost (DP) and opens the next round, or
   registers the final model.

With DP the participants' local losses are neither added up nor returned
(:data:`LOSSES_WITHHELD`): the noise covers the updates only, and an
un-noised loss sum, opened to the owner who also chose the initial model,
would be a membership query outside the budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ppml.proto.domain import commands as cmd
from ppml.proto.domain import federations as fed
from ppml.proto.domain.federations import KIND, parameter_names
from ppml.servers.kinds import end
from ppml.servers.kinds.base import Drop, JobKind, JobStats, KindEnv, Planner
from ppml.servers.mpc.aggregation import aggregate as agg
from ppml.servers.mpc.aggregation import update_checks
from ppml.servers.mpc.rep3.service import aggregate as rep3_aggregate
from ppml.servers.store.federations import (
    ANNOUNCE_TIMEOUT_S,
    CREATED,
    ROUND,
    FederationManager,
    RoundInputs,
)
from ppml.training import ckks

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3  # a round whose job fails this often ends the federation
LOSSES_WITHHELD = "losses withheld: differential privacy covers the updates only"


@dataclass(frozen=True)
class FederateRound:
    federation_id: str
    round: int


class FederateKind(JobKind):
    name = KIND
    job_type = FederateRound

    def __init__(self, env: KindEnv) -> None:
        super().__init__(env)
        self._federations: FederationManager = env.federations

    def planner(self) -> Planner | None:
        if self.env.rank != 0:
            return None
        return FederationPlanner(self._federations, self.env.config.world_size)

    def run(self, seq: int, job: FederateRound, taken: None) -> JobStats:
        inputs = self._federations.round_inputs(job.federation_id, job.round)
        spec = inputs.info.spec
        invited = list(spec.participants)
        held = [p in inputs.submissions for p in invited]
        if spec.backend == "ckks" and self.env.rank != 0:
            held = [True] * len(invited)  # the leader alone holds CKKS updates
        agreed = agg.agreed_mask(held)
        included = tuple(p for p, ok in zip(invited, agreed, strict=True) if ok)
        dropped = tuple(p for p, ok in zip(invited, agreed, strict=True) if not ok)
        refused: tuple[str, ...] = ()
        if spec.backend == "mpc":  # before anything else is opened (see update_checks)
            included, refused = self._sane(inputs, included)
            dropped = (*dropped, *refused)
        now_ms = int(time.time() * 1000)
        if len(included) < spec.min_participants:
            result = fed.RoundResult(
                job.round,
                included,
                dropped,
                applied=False,
                epsilon=inputs.info.epsilon_spent,
                closed_unix_ms=now_ms,
                reason=(
                    f"{len(included)} of {len(invited)} participants submitted by the deadline"
                    + (f" ({len(refused)} more dropped: weight out of range)" if refused else "")
                    + f"; the round needs {spec.min_participants}: the model is unchanged"
                ),
            )
            self._federations.close_round(job.federation_id, result, None)
            return JobStats()
        if spec.backend == "ckks":
            self._close_ckks(job, inputs, included, dropped, now_ms)
        else:
            self._close_mpc(job, inputs, included, dropped, now_ms)
        return JobStats()

    def _sane(
        self, inputs: RoundInputs, included: Sequence[str]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(kept, refused): a weight out of range (a garbage share) drops its update.

        Decided in MPC; only one validity bit per participant is opened.
        """
        weights = [inputs.submissions[p].weight for p in included]
        if not weights:
            return tuple(included), ()
        low, high = fed.weight_bounds(inputs.info.spec.dp.enabled)
        present = [w for w in weights if w is not None]
        if self.env.replicated is not None:  # three servers, no dealer
            sane = rep3_aggregate.weights_in_range(self.env.replicated, present, low, high)
        else:
            sane = update_checks.weights_in_range(present, low, high)
        if len(sane) != len(included):  # MPC submissions always carry a weight
            raise RuntimeError("an MPC submission without a weight share")
        refused = tuple(p for p, ok in zip(included, sane, strict=True) if not ok)
        if refused:
            log.warning(
                "federation %s round %d: dropped the updates of %s (weight outside [%d, %d])",
                inputs.info.federation_id,
                inputs.info.round,
                ", ".join(refused),
                low,
                high,
            )
        return tuple(p for p, ok in zip(included, sane, strict=True) if ok), refused

    def _close_mpc(
        self,
        job: FederateRound,
        inputs: RoundInputs,
        included: Sequence[str],
        dropped: Sequence[str],
        now_ms: int,
    ) -> None:
        info = inputs.info
        subs = [inputs.submissions[p] for p in included]
        dp = None
        if info.spec.dp.enabled:
            dp = agg.DpNoise(info.spec.dp.clip_norm, info.noise_multiplier)
        updates = [s.update for s in subs if s.update is not None]
        weights = [s.weight for s in subs if s.weight is not None]
        if self.env.replicated is not None:  # DP federations are refused there at creation
            if dp is not None:
                raise RuntimeError("a DP federation on the replicated engine")
            result = rep3_aggregate.aggregate(
                self.env.replicated, info.architecture, updates, weights
            )
        else:
            result = agg.aggregate(info.architecture, updates, weights, dp)
        shapes = info.architecture.parameter_shapes()
        offset = 0
        new_global = {}
        for name in parameter_names(info.architecture):
            size = math.prod(shapes[name])
            piece = result.average[offset : offset + size].reshape(shapes[name])
            new_global[name] = inputs.global_shares[name] + piece  # int64: shares add mod 2^64
            offset += size
        epsilon = info.epsilon_spent
        budget = self._federations.budget(job.federation_id)
        if budget is not None:
            epsilon = budget.spend_round(info.noise_multiplier).epsilon_total
        closed = fed.RoundResult(
            job.round,
            tuple(included),
            tuple(dropped),
            applied=True,
            epsilon=epsilon,
            closed_unix_ms=now_ms,
            reason=LOSSES_WITHHELD if dp is not None else "",
        )
        if dp is None:
            reporting = [s for s in subs if s.loss is not None]
            closed = replace(
                closed,
                loss_sum=agg.sum_shares([s.loss for s in reporting]),
                weight_sum=agg.sum_shares([s.weight for s in reporting]),
            )
        self._federations.close_round(job.federation_id, closed, new_global)

    def _close_ckks(
        self,
        job: FederateRound,
        inputs: RoundInputs,
        included: Sequence[str],
        dropped: Sequence[str],
        now_ms: int,
    ) -> None:
        encrypted, problem = b"", ""
        if self.env.rank == 0:
            updates = [inputs.submissions[p].encrypted for p in included]
            try:  # cannot fail on updates checked at submission; if it does, all parties fail
                summed = ckks.aggregate(
                    ckks.load_context(inputs.public_context), [u for u in updates if u is not None]
                )
                encrypted = ckks.serialize(summed)
            except ckks.CkksError as exc:
                problem = str(exc)
        if not all(agg.agreed_mask([not problem])):  # every party learns the leader's outcome
            raise RuntimeError(f"the leader could not sum the CKKS updates: {problem or '?'}")
        result = fed.RoundResult(
            job.round, tuple(included), tuple(dropped), applied=True, closed_unix_ms=now_ms
        )
        self._federations.close_round(job.federation_id, result, None, encrypted)

    def abort(self, job: FederateRound, taken: None, reason: str) -> None:
        """Nothing to undo: a round closes only when its job completes."""

    def ended(self, job_id: str, state: str, reason: str) -> None:
        self._federations.end(job_id, state, reason)


class FederationPlanner(Planner):
    """The leader's side: when each open round closes (pure, over announcements)."""

    priority = 1  # with long work; asked before it (rounds are short and rare)
    kinds = (KIND,)

    def __init__(
        self, federations: FederationManager, world_size: int, clock: Any = time.time
    ) -> None:
        self._federations = federations
        self._world = world_size
        self._clock = clock
        self._created: dict[str, dict[int, str]] = {}  # id -> rank -> settings fingerprint
        self._first_seen: dict[str, float] = {}
        self._counts: dict[str, dict[int, tuple[int, int]]] = {}  # id -> rank -> (round, count)
        self._attempts: dict[tuple[str, int], int] = {}
        self._running: tuple[str, int] | None = None
        self._ends: list[end.EndJob] = []
        self._ended: set[str] = set()
        self._open: set[str] = set()  # ids open on this (rank 0) server at the last look

    def announce(self, rank: int, announce: cmd.Announce, now: float) -> list[Drop]:
        fid, group = announce.id, announce.group
        if group.startswith(CREATED):
            self._created.setdefault(fid, {})[rank] = group
            self._first_seen.setdefault(fid, self._clock())
        elif group.startswith(ROUND) and group[len(ROUND) :].isdigit():
            round_no = int(group[len(ROUND) :])
            self._counts.setdefault(fid, {})[rank] = (round_no, announce.size)
        return []

    def cancel(self, job_id: str, reason: str) -> None:
        if job_id in self._created:
            self._end(job_id, "cancelled", reason)

    def _end(self, fid: str, state: str, reason: str) -> None:
        if fid not in self._ended:
            self._ended.add(fid)
            self._ends.append(end.EndJob(fid, state, reason))

    def next_job(self, now: float, idle_since: float) -> tuple[str, Any] | None:
        if self._ends:
            return end.KIND, self._ends.pop(0)
        wall = self._clock()
        rounds = self._federations.open_rounds()
        still_open = {r.federation_id for r in rounds}
        for fid in self._open - still_open:  # ended here (succeeded, out of budget, ...)
            self._forget(fid)
        self._open = still_open
        for open_round in rounds:
            fid = open_round.federation_id
            if fid in self._ended:
                continue
            created = self._created.get(fid, {})
            if len(created) < self._world:
                if wall - self._first_seen.get(fid, wall) > ANNOUNCE_TIMEOUT_S:
                    missing = sorted(set(range(self._world)) - set(created))
                    self._end(fid, "failed", f"not created on server ranks {missing} in time")
                    return end.KIND, self._ends.pop(0)
                continue
            if len(set(created.values())) > 1:
                self._end(fid, "failed", "servers hold different federations under this id")
                return end.KIND, self._ends.pop(0)
            ranks = range(self._world) if open_round.backend == "mpc" else range(1)
            counts = self._counts.get(fid, {})
            everyone = all(
                counts.get(rank) == (open_round.round, open_round.participants) for rank in ranks
            )
            if everyone or wall >= open_round.deadline_unix_s:
                self._running = (fid, open_round.round)
                return KIND, FederateRound(fid, open_round.round)
        return None

    def done(self, kind: str, job: Any, ok: bool, reason: str, now: float) -> None:
        if kind == end.KIND and isinstance(job, end.EndJob):
            self._forget(job.job_id)
            return
        if kind != KIND or self._running is None:
            return
        key, self._running = self._running, None
        if ok:
            self._attempts.pop(key, None)
            return
        tries = self._attempts.get(key, 0) + 1
        self._attempts[key] = tries
        if tries >= MAX_ATTEMPTS:
            self._end(key[0], "failed", f"round {key[1]} failed {tries} times: {reason}")

    def _forget(self, fid: str) -> None:
        for table in (self._created, self._first_seen, self._counts):
            table.pop(fid, None)
        self._ended.discard(fid)
        for key in [k for k in self._attempts if k[0] == fid]:
            del self._attempts[key]

    @property
    def backlog(self) -> int:
        return len(self._ends)
