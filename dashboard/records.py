"""Data sets, training jobs and federations as plain records: one per server and item.

A snapshot keeps what each server said about each data set, job and
federation (the ``server`` key names it), so the page can show which servers
hold a data set and whether they agree on a job's state. Records are
JSON-ready dicts (lists, not tuples, so they compare equal after a round trip
through JSON) of public metadata only: a job's metric shares and a round's
loss shares are never copied, even when a server sends them.
"""

from __future__ import annotations

from typing import Any

from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.domain.federations import FederationInfo, RoundResult
from ppml.proto.domain.jobs import JobInfo
from ppml.proto.errors import PpmlError
from ppml.proto.wire import federations as fed_wire
from ppml.proto.wire import serde
from ppml.v1 import datasets_pb2, federation_pb2, training_pb2

Record = dict[str, Any]


def dataset_record(server: str, meta: DatasetMeta) -> Record:
    return {
        "server": server,
        "dataset_id": meta.dataset_id,
        "name": meta.name,
        "owner": meta.owner,
        "rows": meta.rows,
        "feature_shape": list(meta.feature_shape),
        "num_classes": meta.num_classes,
        "allowed": list(meta.allowed),
        "scaling": meta.scaling,
        "created_unix_ms": meta.created_unix_ms,
    }


def job_record(server: str, info: JobInfo) -> Record:
    spec = info.spec
    return {
        "server": server,
        "job_id": info.job_id,
        "model_id": info.model_id,
        "name": info.name,
        "owner": info.owner,
        "architecture": info.architecture.describe(),
        "state": info.state.value,  # queued | running | succeeded | failed | cancelled
        "reason": info.reason,
        "created_unix_ms": info.created_unix_ms,
        "started_unix_ms": info.started_unix_ms,
        "finished_unix_ms": info.finished_unix_ms,
        "rows": info.rows,
        "batches_per_epoch": info.batches_per_epoch,
        "steps_total": info.steps_total,
        "steps_done": info.steps_done,
        "samples_per_s": info.samples_per_s,
        "dataset_ids": list(spec.dataset_ids),
        "validation_id": spec.validation_id,
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "lr": spec.lr,
        "loss": spec.loss,
        "optimizer": spec.optimizer,
        "reveal_metrics": spec.reveal_metrics,
        "standardize": spec.standardize,
    }


def datasets_from_reply(server: str, reply: datasets_pb2.ListDatasetsResponse) -> list[Record]:
    records = []
    for info in reply.datasets:
        try:
            records.append(dataset_record(server, serde.dataset_meta_from_proto(info)))
        except (PpmlError, ValueError):  # a malformed entry must not hide the others
            continue
    return records


def jobs_from_reply(server: str, reply: training_pb2.ListJobsResponse) -> list[Record]:
    records = []
    for info in reply.jobs:
        info.ClearField("metrics")  # never decoded, never kept: only the owner may read them
        try:
            records.append(job_record(server, serde.job_info_from_proto(info)))
        except (PpmlError, ValueError):
            continue
    return records


def _round_record(r: RoundResult) -> Record:
    return {
        "round": r.round,
        "participants": list(r.participants),
        "dropped": list(r.dropped),
        "applied": r.applied,
        "epsilon": r.epsilon,
        "closed_unix_ms": r.closed_unix_ms,
        "reason": r.reason,
    }


def federation_record(server: str, info: FederationInfo) -> Record:
    """Settings, state, privacy spending and per-round participation: no loss shares."""
    spec, dp = info.spec, info.spec.dp
    return {
        "server": server,
        "federation_id": info.federation_id,
        "model_id": info.model_id,
        "name": info.name,
        "owner": info.owner,
        "architecture": info.architecture.describe(),
        "state": info.state.value,  # running | succeeded | failed | cancelled | budget_exhausted
        "reason": info.reason,
        "round": info.round,
        "rounds": spec.rounds,
        "backend": spec.backend,
        "strategy": spec.strategy,
        "participants": list(spec.participants),
        "min_participants": spec.min_participants,
        "local_epochs": spec.local_epochs,
        "batch_size": spec.batch_size,
        "lr": spec.lr,
        "round_deadline_s": spec.round_deadline_s,
        "round_deadline_unix_s": info.round_deadline_unix_s,
        "submitted": list(info.submitted),
        "dp_clip_norm": dp.clip_norm,
        "dp_target_epsilon": dp.target_epsilon,
        "dp_delta": dp.delta,
        "dp_epsilon_budget": dp.epsilon_budget,
        "noise_multiplier": info.noise_multiplier,
        "epsilon_spent": info.epsilon_spent,
        "created_unix_ms": info.created_unix_ms,
        "finished_unix_ms": info.finished_unix_ms,
        "results": [_round_record(r) for r in info.results],
    }


def federations_from_reply(
    server: str, reply: federation_pb2.ListFederationsResponse
) -> list[Record]:
    records = []
    for info in reply.federations:
        try:
            records.append(federation_record(server, fed_wire.info_from_proto(info).public()))
        except (PpmlError, ValueError):
            continue
    return records
