"""Training, evaluation and jobs from the SDK.

The initial weights are secret-shared here; the architecture and
hyper-parameters travel in the clear. Evaluation results come back as shares
and are added up here.
"""

from __future__ import annotations

import math
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import torch

from ppml.client.errors import InputShapeMismatch, InvalidTrainingJob, from_rpc_error
from ppml.client.model_export import ModelSource, export_model
from ppml.client.training_job import TrainingJob
from ppml.client.transport import ClusterBase, ServerStubs
from ppml.proto import shares
from ppml.proto.domain import jobs
from ppml.proto.wire import serde
from ppml.v1 import datasets_pb2, registry_pb2, training_pb2


@dataclass(frozen=True)
class Evaluation:
    """An accuracy reconstructed on the caller's side from every server's share."""

    correct: int
    rows: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.rows


def _seed(seed: int | None, dp: bool) -> int:
    """The public batch-order seed: random unless given; 0 for DP-SGD (secret batches)."""
    if seed is not None:
        return seed  # a DP job refuses one other than 0, with the reason
    return 0 if dp else secrets.randbits(63)


class TrainingMixin(ClusterBase):
    """:class:`ppml.client.Cluster`'s training and evaluation methods."""

    def train(
        self,
        model: ModelSource,
        datasets: Sequence[str],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        loss: str = "cross_entropy",
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        validation: str | None = None,
        reveal_metrics: bool = False,
        standardize: bool = False,
        seed: int | None = None,
        name: str = "",
        model_id: str | None = None,
        job_id: str | None = None,
        sample_input: torch.Tensor | None = None,
        dp_clip_norm: float = 0.0,
        dp_noise_multiplier: float | None = None,
        dp_target_epsilon: float = 0.0,
        dp_delta: float = 0.0,
    ) -> TrainingJob:
        """Train ``model``'s architecture in MPC on shared data sets, from its current weights.

        The architecture and hyper-parameters are public; the initial weights
        are secret-shared here. Returns at once with a :class:`TrainingJob`;
        the servers validate everything before any MPC work starts.

        DP-SGD: ``dp_clip_norm > 0`` clips each example's gradient to that L2
        norm and adds Gaussian noise of ``dp_noise_multiplier`` times it to
        each batch's sum; give ``dp_target_epsilon`` instead of the
        multiplier to have the servers calibrate it over the job's steps.
        ``dp_delta`` (default 1e-5) must be below ``1 / rows``. The job then
        reports the epsilon spent (:meth:`TrainingJob.epsilon`). A DP-SGD job
        takes no ``seed``: the servers draw its batches from a secret key.
        """
        if isinstance(datasets, str):
            raise InvalidTrainingJob("datasets must be a list of dataset ids")
        if sample_input is None and isinstance(model, torch.nn.Module) and datasets:
            first = self._servers[0]
            try:
                info = first.datasets.GetDataset(
                    datasets_pb2.GetDatasetRequest(dataset_id=datasets[0]),
                    timeout=self.timeout,
                    metadata=self._metadata,
                )
            except grpc.RpcError as err:
                raise from_rpc_error(err, first.name) from None
            sample_input = torch.zeros(1, *info.feature_shape)
            try:
                with torch.no_grad():
                    model(sample_input)
            except RuntimeError as exc:
                raise InvalidTrainingJob(
                    f"the model does not accept rows of dataset {datasets[0]!r} "
                    f"(shape {list(info.feature_shape)}): {exc}"
                ) from None
        architecture, weights = export_model(model, sample_input)
        spec = jobs.TrainingSpec(
            dataset_ids=tuple(datasets),
            validation_id=validation or "",
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            loss=loss,
            optimizer=optimizer,
            reveal_metrics=reveal_metrics,
            seed=_seed(seed, dp_clip_norm > 0),
            standardize=standardize,
            dp_clip_norm=dp_clip_norm,
            dp_noise_multiplier=dp_noise_multiplier,
            dp_target_epsilon=dp_target_epsilon,
            dp_delta=dp_delta,
        )
        job_id = job_id or uuid.uuid4().hex[:16]
        model_id = model_id or f"{job_id}-model"
        per_server = shares.share_named(weights, self.parties)
        arch_msg = serde.architecture_to_proto(architecture)
        spec_msg = serde.training_spec_to_proto(spec)

        def start(server: ServerStubs, rank: int) -> grpc.Future:
            request = training_pb2.StartTrainingRequest(
                job_id=job_id,
                model_id=model_id,
                name=name,
                architecture=arch_msg,
                initial_parameters=serde.named_shares_to_proto(per_server[rank]),
                spec=spec_msg,
            )
            return server.training.StartTraining.future(
                request, timeout=self.timeout, metadata=self._metadata
            )

        self._call_all_or_undo(
            start,
            lambda s: s.training.CancelJob(
                training_pb2.CancelJobRequest(job_id=job_id), timeout=30, metadata=self._metadata
            ),
        )
        return self.job(job_id, model_id)

    def job(self, job_id: str, model_id: str = "") -> TrainingJob:
        """A handle on an existing job (e.g. one started from another process)."""
        if not model_id:
            first = self._servers[0]
            try:
                reply = first.training.GetJob(
                    training_pb2.GetJobRequest(job_id=job_id), timeout=30, metadata=self._metadata
                )
            except grpc.RpcError as err:
                raise from_rpc_error(err, first.name) from None
            model_id = reply.model_id
        return TrainingJob(
            job_id,
            model_id,
            self._servers,
            self._metadata,
            lambda call, fail_fast: self._call_all(call, fail_fast),
        )

    def list_jobs(self) -> list[jobs.JobInfo]:
        """Every job the first server knows (state as it sees it), oldest first."""
        reply = self._retry(
            lambda: self._call_all(
                lambda s, _: s.training.ListJobs.future(
                    training_pb2.ListJobsRequest(), timeout=self.timeout, metadata=self._metadata
                )
            )
        )
        return [serde.job_info_from_proto(info) for info in reply[0].jobs]

    def evaluate(
        self,
        model_id: str,
        dataset_id: str,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Evaluation:
        """Accuracy of a model on a shared data set: only the correct count is revealed, here.

        Raises :class:`InputShapeMismatch` before asking for any MPC work when the data
        set's rows do not hold as many values as the model's input (public metadata).
        """
        self._check_evaluation(model_id, dataset_id)
        request_id = request_id or uuid.uuid4().hex
        request = training_pb2.EvaluateRequest(
            request_id=request_id, model_id=model_id, dataset_id=dataset_id
        )
        replies = self._call_all(
            lambda s, _: s.training.Evaluate.future(
                request, timeout=timeout or max(self.timeout, 300), metadata=self._metadata
            )
        )
        parts = [serde.share_from_proto(r.correct, what="correct") for r in replies]
        correct = round(float(shares.decode(shares.reconstruct(parts)).reshape(-1)[0]))
        return Evaluation(correct, int(replies[0].rows))

    def _check_evaluation(self, model_id: str, dataset_id: str) -> None:
        model_request = registry_pb2.GetModelRequest(model_id=model_id)
        data_request = datasets_pb2.GetDatasetRequest(dataset_id=dataset_id)
        model = serde.model_meta_from_proto(
            self._retry(
                lambda: self._call_all(
                    lambda s, _: s.registry.GetModel.future(
                        model_request, timeout=self.timeout, metadata=self._metadata
                    )
                )
            )[0]
        )
        data = serde.dataset_meta_from_proto(
            self._retry(
                lambda: self._call_all(
                    lambda s, _: s.datasets.GetDataset.future(
                        data_request, timeout=self.timeout, metadata=self._metadata
                    )
                )
            )[0]
        )
        expected = model.architecture.input_shape
        if math.prod(expected) != data.features:
            raise InputShapeMismatch(
                f"data set {dataset_id} has rows of shape {data.feature_shape}, but model "
                f"{model_id} expects rows of shape {tuple(expected)}; nothing was evaluated"
            )
