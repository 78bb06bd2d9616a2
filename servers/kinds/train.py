"""The ``train`` kind: one MPC step (one mini-batch) of a training job at a time.

The gRPC side is :class:`~ppml.servers.store.jobs.JobManager` (validation,
persisted state, progress); its jobs run through the leader's long-work
queue step by step, one job at a time, after evaluations. Each party keeps
the job's secret state (:class:`~ppml.servers.mpc.training.trainer.TrainingRun`, or
on a replicated cluster :class:`~ppml.servers.mpc.rep3.service.training.ReplicatedTrainingRun`)
in memory between steps; it is lost when the party leaves the MPC session.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppml.servers.control.job_queue import Policy, Step
from ppml.servers.kinds.base import JobKind, JobStats, KindEnv
from ppml.servers.mpc.rep3.service.training import ReplicatedTrainingRun
from ppml.servers.mpc.training.trainer import TrainingRun
from ppml.servers.store.jobs import TRAIN_KIND


@dataclass(frozen=True)
class TrainStep:
    """Step ``step`` (0-based): step 0 also loads the job, the last stores the model."""

    job_id: str
    step: int


class TrainKind(JobKind):
    name = TRAIN_KIND
    job_type = TrainStep
    long_work = Policy(priority=1, serial=True, stateful=True)

    def __init__(self, env: KindEnv) -> None:
        super().__init__(env)
        self._runs: dict[str, TrainingRun | ReplicatedTrainingRun] = {}  # in progress here

    def step_job(self, step: Step) -> TrainStep:
        return TrainStep(step.job_id, step.step)

    def run(self, seq: int, job: TrainStep, taken: None) -> JobStats:
        jobs = self.env.jobs
        run = self._runs.get(job.job_id)
        if job.step == 0:
            replicated = self.env.replicated
            if replicated is not None:  # three servers, no dealer
                run = ReplicatedTrainingRun(jobs.inputs(job.job_id), replicated)
            else:
                run = TrainingRun(
                    jobs.inputs(job.job_id), self.env.config.serving.plan_dealer_requests
                )
            self._runs[job.job_id] = run
            jobs.started(job.job_id)
        elif run is None:
            raise RuntimeError(f"job {job.job_id}: no training state here for step {job.step}")
        outcome = run.step(job.step)
        jobs.progress(job.job_id, outcome)
        if outcome.finished:
            del self._runs[job.job_id]
            architecture, shares = run.trained()
            jobs.succeeded(job.job_id, architecture, shares)
        return JobStats()

    def abort(self, job: TrainStep, taken: None, reason: str) -> None:
        self._runs.pop(job.job_id, None)
        self.env.jobs.end(job.job_id, "failed", f"{reason} (at step {job.step + 1})")

    def session_lost(self, reason: str) -> None:
        for job_id in list(self._runs):
            self.env.jobs.end(job_id, "failed", reason)
        self._runs.clear()

    def ended(self, job_id: str, state: str, reason: str) -> None:
        self._runs.pop(job_id, None)
        self.env.jobs.end(job_id, state, reason)
