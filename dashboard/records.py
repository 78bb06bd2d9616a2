"""Data sets and training jobs as plain records: one per server and item.

A snapshot keeps what each server said about each data set and job (the
``server`` key names it), so the page can show which servers hold a data set
and whether they agree on a job's state. Records are JSON-ready dicts (lists,
not tuples, so they compare equal after a round trip through JSON) of public
metadata only: a job's metric shares are never copied, even when a server
sends them.
"""

from __future__ import annotations

from typing import Any

from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.domain.jobs import JobInfo
from ppml.proto.errors import PpmlError
from ppml.proto.wire import serde
from ppml.v1 import datasets_pb2, training_pb2

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
