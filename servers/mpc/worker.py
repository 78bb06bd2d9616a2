"""The one MPC worker of a server: runs the leader's commands, in order.

CrypTen has one communicator per process and every party must run the same
collectives in the same order, so all MPC happens on this single thread. The
gRPC threads only validate and enqueue. A job that fails (a peer died, the
dealer went away) fails its requests, and the worker leaves the session at
once so that its peers' collectives fail fast too; the leader then starts a
new epoch and the worker joins it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppml.proto.domain import commands as cmd
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.control.holds import PendingRequest, PendingTable, PredictOutcome
from ppml.servers.mpc import model as mpc_model
from ppml.servers.mpc import session as mpc_session
from ppml.servers.mpc.crypten_compat import crypten
from ppml.servers.store.metrics import ServerMetrics

if TYPE_CHECKING:
    from ppml.servers.kinds.evaluate import EvaluationService
    from ppml.servers.mpc.trainer import TrainingRun
    from ppml.servers.store.jobs import JobManager

log = logging.getLogger(__name__)

_LEAVE = "leave"
_STOP = "stop"

JoinCallback = Callable[[int, bool, str], None]
JobCallback = Callable[[cmd.RunJob, bool], None]


class MpcWorker:
    def __init__(
        self,
        rank: int,
        world_size: int,
        store_address: tuple[str, int],
        pending: PendingTable,
        metrics: ServerMetrics,
        mpc_timeout_s: float = 300.0,
        on_joined: JoinCallback = lambda epoch, ok, error: None,
        on_job_done: JobCallback = lambda job, ok: None,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self._store_address = store_address
        self._pending = pending
        self._metrics = metrics
        self._mpc_timeout_s = mpc_timeout_s
        self._on_joined = on_joined
        self._on_job_done = on_job_done
        self._commands: queue.Queue[object] = queue.Queue()
        self._models: dict[int, tuple[Any, Any]] = {}  # id(handle) -> (handle, crypten model)
        self._jobs: JobManager | None = None
        self._evaluations: EvaluationService | None = None
        self._runs: dict[str, TrainingRun] = {}  # training jobs in progress on this party
        self.epoch: int | None = None  # joined epoch, None when not in a session
        self._thread = threading.Thread(target=self._run, name="mpc-worker", daemon=True)

    def set_listeners(self, on_joined: JoinCallback, on_job_done: JobCallback) -> None:
        """Who hears about joined epochs and finished jobs (the leader, on rank 0)."""
        self._on_joined = on_joined
        self._on_job_done = on_job_done

    def set_training(self, jobs: JobManager, evaluations: EvaluationService) -> None:
        """Where training steps and evaluations find their inputs and report."""
        self._jobs = jobs
        self._evaluations = evaluations

    @property
    def serving(self) -> bool:
        return self.epoch is not None

    def start(self) -> None:
        self._thread.start()

    def submit(self, command: cmd.JoinEpoch | cmd.RunJob) -> None:
        self._commands.put(command)

    def leave(self) -> None:
        self._commands.put(_LEAVE)

    def stop(self, timeout: float = 5.0) -> None:
        self._commands.put(_STOP)
        self._thread.join(timeout)

    @property
    def backlog(self) -> int:
        return self._commands.qsize()

    # ------------------------------------------------------------ thread

    def _run(self) -> None:
        while True:
            command = self._commands.get()
            if command == _STOP:
                self._leave()
                return
            if command == _LEAVE:
                self._leave()
            elif isinstance(command, cmd.JoinEpoch):
                self._join(command)
            elif isinstance(command, cmd.RunJob):
                self._execute(command)

    def _leave(self) -> None:
        if self.epoch is not None or mpc_session.is_joined():
            mpc_session.leave()
        self.epoch = None
        if self._runs and self._jobs is not None:
            for job_id in list(self._runs):
                self._jobs.end(job_id, "failed", "this server left the MPC session mid-job")
        self._runs.clear()

    def _join(self, command: cmd.JoinEpoch) -> None:
        self._leave()
        try:
            mpc_session.join(
                self.rank,
                self.world_size,
                self._store_address,
                command.store_prefix,
                self._mpc_timeout_s,
            )
        except Exception as exc:
            log.warning("could not join MPC epoch %d: %s", command.epoch, exc)
            self._metrics.record_error(f"join epoch {command.epoch} failed: {exc}")
            mpc_session.leave()
            self._on_joined(command.epoch, False, str(exc))
            return
        self.epoch = command.epoch
        log.info("joined MPC epoch %d as rank %d", command.epoch, self.rank)
        self._on_joined(command.epoch, True, "")

    def _execute(self, command: cmd.RunJob) -> None:
        job = command.job
        if isinstance(job, cmd.EndJob):  # no MPC: applies even while the session is down
            self._end_job(job)
            self._on_job_done(command, True)
            return
        requests = (
            self._pending.take(list(job.request_ids)) if isinstance(job, cmd.PredictJob) else []
        )
        evaluation = (
            self._evaluations.take(job.request_id)
            if isinstance(job, cmd.EvaluateJob) and self._evaluations is not None
            else None
        )
        if self.epoch != command.epoch:
            self._fail(requests, "the MPC session is not up on this server; retry shortly")
            self._abort(job, evaluation, "the MPC session is not up on this server")
            self._on_job_done(command, False)
            return
        before = mpc_session.comm_stats()
        started = time.perf_counter()
        try:
            if isinstance(job, cmd.PredictJob):
                self._predict(command.seq, job, requests)
            elif isinstance(job, cmd.TrainStep):
                self._train_step(job)
            elif isinstance(job, cmd.EvaluateJob):
                self._evaluate(command.seq, job, evaluation)
            else:
                self._heartbeat()
        except Exception as exc:
            log.warning("MPC job %d (%s) failed: %s", command.seq, command.kind, exc)
            self._metrics.record_error(f"job {command.seq} failed: {exc}")
            self._fail(
                requests, "a server or the dealer went away during the MPC evaluation; retry"
            )
            self._abort(job, evaluation, "a server or the dealer went away during the MPC job")
            self._leave()
            self._on_job_done(command, False)
            return
        after = mpc_session.comm_stats()
        model_id = job.model_id if isinstance(job, cmd.PredictJob) else ""
        self._metrics.record_job(
            command.kind,
            model_id,
            len(requests),
            after[0] - before[0],
            after[1] - before[1],
            time.perf_counter() - started,
        )
        self._on_job_done(command, True)

    def _abort(self, job: cmd.Job, evaluation: Any, reason: str) -> None:
        """A training step or evaluation failed here: end it on this party."""
        if isinstance(job, cmd.TrainStep) and self._jobs is not None:
            self._runs.pop(job.job_id, None)
            self._jobs.end(job.job_id, "failed", f"{reason} (at step {job.step + 1})")
        if evaluation is not None and not evaluation.future.done():
            evaluation.future.set_exception(PpmlError(ErrorCode.EVALUATION_ABORTED, reason))

    def _end_job(self, job: cmd.EndJob) -> None:
        self._runs.pop(job.job_id, None)
        if self._jobs is not None:
            self._jobs.end(job.job_id, job.state, job.reason)
        if self._evaluations is not None:
            self._evaluations.end(job.job_id, job.reason)

    def _train_step(self, job: cmd.TrainStep) -> None:
        from ppml.servers.mpc.trainer import TrainingRun

        assert self._jobs is not None
        run = self._runs.get(job.job_id)
        if job.step == 0:
            run = TrainingRun(self._jobs.inputs(job.job_id))
            self._runs[job.job_id] = run
            self._jobs.started(job.job_id)
        elif run is None:
            raise RuntimeError(f"job {job.job_id}: no training state here for step {job.step}")
        outcome = run.step(job.step)
        self._jobs.progress(job.job_id, outcome)
        if outcome.finished:
            del self._runs[job.job_id]
            architecture, shares = run.trained()
            self._jobs.succeeded(job.job_id, architecture, shares)

    def _evaluate(self, seq: int, job: cmd.EvaluateJob, evaluation: Any) -> None:
        from ppml.servers.kinds.evaluate import EvaluationOutcome
        from ppml.servers.mpc.trainer import evaluate

        if evaluation is None or self._evaluations is None:
            raise RuntimeError(f"evaluation {job.request_id} is not held here")
        features, labels = self._evaluations.shares(evaluation)
        architecture = evaluation.model.meta.architecture
        correct = evaluate(
            self._model(evaluation.model),
            features,
            labels,
            evaluation.kind,
            architecture.input_shape,
        )
        if not evaluation.future.done():
            evaluation.future.set_result(EvaluationOutcome(correct, evaluation.rows, seq))

    def _fail(self, requests: list[PendingRequest | None], reason: str) -> None:
        error = PpmlError(ErrorCode.PREDICTION_ABORTED, reason)
        for request in requests:
            if request is not None and not request.future.done():
                request.future.set_exception(error)

    def _model(self, handle: Any) -> Any:
        key = id(handle)
        cached = self._models.get(key)
        if cached is None or cached[0] is not handle:
            model = mpc_model.build_shared_model(handle.meta.architecture, handle.shares)
            if len(self._models) >= 16:
                self._models.pop(next(iter(self._models)))
            self._models[key] = (handle, model)
            return model
        return cached[1]

    def _predict(
        self, seq: int, job: cmd.PredictJob, requests: list[PendingRequest | None]
    ) -> None:
        from crypten.mpc import MPCTensor

        present = [r for r in requests if r is not None]
        if not present:
            raise RuntimeError(f"job {seq}: none of its requests is held here")
        handle = present[0].model
        input_shape = handle.meta.architecture.input_shape
        parts = []
        for request, rows in zip(requests, job.rows, strict=True):
            if request is None:  # cannot happen while the leader link is up
                log.error("job %d: a request is missing here; using a zero share", seq)
                parts.append(np.zeros((rows, *input_shape), dtype=np.int64))
            else:
                parts.append(request.share)
        batch = torch.from_numpy(np.concatenate(parts, axis=0))
        with crypten.no_grad():
            output = self._model(handle)(MPCTensor.from_shares(batch))
        out = output.share.numpy()
        offset = 0
        for request, rows in zip(requests, job.rows, strict=True):
            if request is not None and not request.future.done():
                outcome = PredictOutcome(out[offset : offset + rows].copy(), len(requests), seq)
                request.future.set_result(outcome)
            offset += rows

    def _heartbeat(self) -> None:
        """A tiny multiplication: touches every party link and the dealer."""
        from crypten.mpc import MPCTensor

        x = MPCTensor.from_shares(torch.zeros(1, dtype=torch.long))
        (x * x).share.sum().item()
