"""The ``predict`` kind: encrypted prediction, batched across requests.

* Front (:class:`InferenceService`, gRPC threads): validate a request, hold
  its input share, announce it to the leader, wait for the MPC job.
* Leader (:class:`PredictPlanner`): dynamic batching by
  :class:`~ppml.servers.control.scheduler.Scheduler`; prediction batches go
  before every other kind of work.
* Worker (:class:`PredictKind`): one MPC forward over the batch's shares;
  each request gets its rows of this server's output share. With two
  compute parties and a model of layers the fast engine runs, the forward is
  the fast engine's (``servers/mpc/fast/service/party.py``: weights masked once per
  session, dealer bundles pooled ahead by the ``refill`` kind, 8 exchanges
  over the party link); on a cluster of three servers with no dealer
  (``engine = "replicated"``) it is the replicated engine's
  (``servers/mpc/rep3/service/party.py``); otherwise CrypTen's. Same output
  shares either way.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ppml.proto.domain import commands as cmd
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.ids import check_id, fingerprint
from ppml.proto.shares import Ring
from ppml.servers.control.holds import Hold, scoped_id
from ppml.servers.control.scheduler import Scheduler
from ppml.servers.kinds.base import Drop, JobKind, JobStats, KindEnv, Planner
from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.servers.mpc.fast.service.party import CommChannel
from ppml.servers.mpc.rep3.service.party import CommNet
from ppml.servers.store.metrics import UNKNOWN_MODEL
from ppml.servers.store.models import LoadedModel

log = logging.getLogger(__name__)
KIND = "predict"


@dataclass(frozen=True)
class PredictJob:
    model_id: str
    request_ids: tuple[str, ...]
    rows: tuple[int, ...]


@dataclass(frozen=True)
class PredictOutcome:
    share: Ring
    batch_requests: int
    job_seq: int


@dataclass(frozen=True)
class PredictInput:
    model_id: str
    share: Ring
    model: LoadedModel  # held so a concurrent delete cannot break the job


def drop_margin(remaining_s: float) -> float:
    """How long before the caller's deadline the leader must decide to drop.

    Leaves the client time to receive a clear ABORTED instead of its own
    DEADLINE_EXCEEDED.
    """
    return min(1.0, max(0.2, 0.15 * remaining_s))


class InferenceService:
    """The gRPC side of a prediction on this server."""

    def __init__(self, env: KindEnv) -> None:
        self._env = env
        self._serving = env.config.serving

    def predict(
        self,
        request_id: str,
        model_id: str,
        share: Ring,
        time_remaining: float | None,
        caller: str,
    ) -> PredictOutcome:
        started = time.monotonic()
        label, status = UNKNOWN_MODEL, "OK"  # metrics never keep ids a caller made up
        try:
            model = self._env.models.usable(model_id, caller)
            label = model_id
            return self._predict(request_id, model_id, model, share, time_remaining, caller)
        except PpmlError as err:
            status = err.status.name
            raise
        finally:
            self._env.metrics.record_request(label, time.monotonic() - started, status)

    def _predict(
        self,
        request_id: str,
        model_id: str,
        model: LoadedModel,
        share: Ring,
        time_remaining: float | None,
        caller: str,
    ) -> PredictOutcome:
        check_id(request_id, "request_id")
        held_as = scoped_id(KIND, caller, request_id)
        expected = model.meta.architecture.input_shape
        rows = int(share.shape[0])
        if tuple(share.shape[1:]) != expected or not rows >= 1:
            raise PpmlError(
                ErrorCode.INVALID_SHARE,
                f"input share has shape {list(share.shape)}; model {model_id!r} expects "
                f"(rows, {', '.join(map(str, expected))}) with rows >= 1",
            )
        if rows > self._serving.max_rows_per_request:
            raise PpmlError(
                ErrorCode.INVALID_ARGUMENT,
                f"{rows} rows in one request; the limit is {self._serving.max_rows_per_request}",
            )
        if not self._env.is_serving():
            raise PpmlError(
                ErrorCode.NOT_READY,
                "this server's MPC session is not up (waiting for its peers and the dealer); retry",
            )
        remaining = self._serving.wait_s(time_remaining)
        hold = Hold(
            held_as, KIND, PredictInput(model_id, share, model), ErrorCode.PREDICTION_ABORTED
        )
        self._env.holds.add(hold)
        timeout_s = remaining - drop_margin(remaining)
        # servers holding different models under one id must not run them together
        group = f"{model_id}#{fingerprint(model.meta.owner, model.meta.architecture)}"
        announce = cmd.Announce(KIND, held_as, group, rows, timeout_s)
        if not self._env.submit(announce):
            self._env.holds.fail([held_as], "not ready")
            raise PpmlError(
                ErrorCode.NOT_READY, "the cluster's MPC session is restarting; retry shortly"
            )
        try:
            outcome: PredictOutcome = hold.future.result(timeout=remaining + 0.5)
            return outcome
        except FutureTimeout:
            raise PpmlError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"request {request_id!r} got no result within {remaining:.1f}s",
            ) from None


class PredictPlanner(Planner):
    """Dynamic batching of announced prediction requests (leader side)."""

    priority = 0  # prediction batches go first: they are waited for by clients
    kinds = (KIND,)
    accepts_while_down = False  # a client is waiting: fail fast, it retries

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def announce(self, rank: int, announce: cmd.Announce, now: float) -> list[Drop]:
        drop = self._scheduler.announce(
            rank, announce.id, announce.group, announce.size, announce.timeout_s, now
        )
        return [Drop(drop.request_ids, drop.reason)] if drop else []

    def expire(self, now: float, names: list[str]) -> list[Drop]:
        return [Drop(d.request_ids, d.reason) for d in self._scheduler.expire(now, names)]

    def next_job(self, now: float, idle_since: float) -> tuple[str, Any] | None:
        job = self._scheduler.next_job(now)
        if job is None:
            return None
        return KIND, PredictJob(job.model_id, job.request_ids, job.rows)

    def next_wakeup(self, idle_since: float) -> float | None:
        return self._scheduler.next_wakeup()

    def done(self, kind: str, job: Any, ok: bool, reason: str, now: float) -> None:
        if kind == KIND:
            self._scheduler.job_done(job.model_id, len(job.request_ids), now)
        else:  # the worker is free again
            self._scheduler.job_done(None, 0, now)

    def rank_lost(self, rank: int, name: str, reason: str, now: float) -> list[Drop]:
        drop = self._scheduler.drop_rank(rank, now, name)
        return [Drop(drop.request_ids, drop.reason)] if drop else []

    @property
    def backlog(self) -> int:
        return self._scheduler.backlog


class PredictKind(JobKind):
    name = KIND
    job_type = PredictJob

    def __init__(self, env: KindEnv) -> None:
        super().__init__(env)
        serving = env.config.serving
        self._planner = PredictPlanner(
            Scheduler(
                env.config.world_size,
                serving.max_batch_rows,
                serving.max_wait_ms / 1000.0,
                serving.max_delay_ms / 1000.0,
                serving.request_id_window_s,
            )
        )

    def planner(self) -> Planner:
        return self._planner

    def take(self, job: PredictJob) -> list[Hold | None]:
        return self.env.holds.take(job.request_ids)

    def run(self, seq: int, job: PredictJob, taken: list[Hold | None]) -> JobStats:
        from crypten.mpc import MPCTensor

        present = [h for h in taken if h is not None]
        if not present:
            raise RuntimeError(f"job {seq}: none of its requests is held here")
        handle = present[0].value.model
        input_shape = handle.meta.architecture.input_shape
        parts = []
        for hold, rows in zip(taken, job.rows, strict=True):
            if hold is None:  # cannot happen while the leader link is up
                log.error("job %d: a request is missing here; using a zero share", seq)
                parts.append(np.zeros((rows, *input_shape), dtype=np.int64))
            else:
                parts.append(hold.value.share)
        stacked = np.concatenate(parts, axis=0)
        replicated = self.env.replicated
        if replicated is not None:  # three servers, no dealer: the only engine there is
            spec = replicated.model_for(handle.meta.architecture)
            if spec is None:  # refused at upload; a model stored before cannot run here
                raise RuntimeError(f"model {job.model_id!r} does not run on the replicated engine")
            out = replicated.predict(CommNet(), job.model_id, handle, spec, stacked)
            self._answer(seq, job, taken, out)
            return JobStats(present[0].value.model_id, len(taken))
        fast = self.env.fast
        model = fast.model_for(handle.meta.architecture) if fast is not None else None
        if fast is not None and model is not None:
            out = fast.predict(CommChannel(), job.model_id, handle, model, stacked)
        else:
            with crypten.no_grad():
                output = self.env.model_cache.get(handle)(
                    MPCTensor.from_shares(torch.from_numpy(stacked))
                )
            out = output.share.numpy()
        self._answer(seq, job, taken, out)
        if fast is not None and model is not None:  # after the answers: a refill that rode along
            fast.finish(CommChannel())
        return JobStats(present[0].value.model_id, len(taken))

    @staticmethod
    def _answer(seq: int, job: PredictJob, taken: list[Hold | None], out: np.ndarray) -> None:
        """Each caller gets its rows of this server's output share."""
        offset = 0
        for hold, rows in zip(taken, job.rows, strict=True):
            if hold is not None and not hold.future.done():
                outcome = PredictOutcome(out[offset : offset + rows].copy(), len(taken), seq)
                hold.future.set_result(outcome)
            offset += rows

    def abort(self, job: PredictJob, taken: list[Hold | None], reason: str) -> None:
        for hold in taken:
            if hold is not None:
                hold.fail(reason)
        self.session_lost(reason)  # a failed job may have popped bundles on one side only

    def session_lost(self, reason: str) -> None:
        if self.env.fast is not None:
            self.env.fast.session_lost()
        if self.env.replicated is not None:
            self.env.replicated.session_lost()
