"""The data set registry of one server: validated uploads of shares, access rules.

A data owner streams its share of a data set in chunks of rows; nothing is
stored until every row announced in the header has arrived with the right
shapes. Only the owner may delete a data set or change its access; only the
owner and the identities it allowed may train on it or evaluate against it,
and only those it released to may export a model trained on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.ids import check_id
from ppml.proto.names import check_name
from ppml.proto.shares import Ring
from ppml.proto.wire import serde
from ppml.servers.store.crash_points import crash_point
from ppml.servers.store.limits import Limits, check_identities, require_owner
from ppml.servers.store.storage import RecordCodec, ShareStore
from ppml.servers.store.upload_gate import UploadGate

DATASET_CODEC = RecordCodec[DatasetMeta](
    kind="datasets",
    key=lambda meta: meta.dataset_id,
    created=lambda meta: meta.created_unix_ms,
    to_bytes=serde.dataset_meta_to_bytes,
    from_bytes=serde.dataset_meta_from_bytes,
    not_found=ErrorCode.DATASET_NOT_FOUND,
    exists=ErrorCode.DATASET_EXISTS,
    noun="dataset",
)

MAX_FEATURES = 1 << 20
MAX_CLASSES = 1 << 16


def _invalid(detail: str) -> PpmlError:
    return PpmlError(ErrorCode.INVALID_DATASET, detail)


def check_header(meta: DatasetMeta, max_rows: int) -> None:
    check_id(meta.dataset_id, "dataset_id")
    check_name(meta.name, "name", ErrorCode.INVALID_DATASET)
    if meta.rows <= 0:
        raise _invalid(f"dataset {meta.dataset_id!r} is empty: it has {meta.rows} rows")
    if meta.rows > max_rows:
        raise _invalid(f"{meta.rows} rows; a server accepts at most {max_rows} per dataset")
    if not meta.feature_shape or min(meta.feature_shape) <= 0 or meta.features > MAX_FEATURES:
        raise _invalid(
            f"feature_shape must be non-empty with positive dimensions and at most "
            f"{MAX_FEATURES} values per row, got {list(meta.feature_shape)}"
        )
    if not 2 <= meta.num_classes <= MAX_CLASSES:
        raise _invalid(f"num_classes must lie in 2..{MAX_CLASSES}, got {meta.num_classes}")
    check_identities(meta.allowed, "allowed", ErrorCode.INVALID_DATASET)
    check_identities(meta.release, "release", ErrorCode.INVALID_DATASET)


class DatasetRegistry:
    def __init__(
        self,
        store: ShareStore[DatasetMeta],
        limits: Limits | None = None,
        max_rows: int = 10_000_000,
        gate: UploadGate | None = None,
    ) -> None:
        self._store = store
        self._limits = limits or Limits()
        self._max_rows = max_rows
        self._gate = gate

    def upload(
        self,
        header: DatasetMeta,
        chunks: Iterable[tuple[Ring, Ring]],
        upload: str | None = None,
        wait_s: float | None = None,
    ) -> DatasetMeta:
        """Assemble the chunks, check every shape against the header, store.

        The header's size is checked against the upload budget and the owner's
        quotas before any row is read, and the stream must end within
        ``upload_max_s``. A client's upload (attempt ``upload``, None for a
        server's own records) is staged and kept only once every server holds
        it (``ppml.servers.control.uploads``), waiting at most ``wait_s``.
        """
        check_header(header, self._max_rows)
        if self._store.has(header.dataset_id):
            raise PpmlError(
                ErrorCode.DATASET_EXISTS, f"a dataset with id {header.dataset_id!r} already exists"
            )
        self._limits.check_dataset(header)
        deadline = time.monotonic() + self._limits.config.upload_max_s
        features, labels, rows = [], [], 0
        crash_point("dataset:early")
        for index, (x, y) in enumerate(chunks):
            if time.monotonic() > deadline:
                raise PpmlError(
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"the upload took longer than {self._limits.config.upload_max_s:.0f}s; "
                    "send larger chunks or a smaller data set",
                )
            if x.shape[1:] != header.feature_shape or y.shape != (x.shape[0], header.num_classes):
                raise PpmlError(
                    ErrorCode.INVALID_SHARE,
                    f"chunk {index}: features {list(x.shape)} and labels {list(y.shape)} do not "
                    f"match (rows, {', '.join(map(str, header.feature_shape))}) and "
                    f"(rows, {header.num_classes})",
                )
            if rows <= header.rows // 2 < rows + int(x.shape[0]):
                crash_point("dataset:middle")
            rows += int(x.shape[0])
            if rows > header.rows:
                raise _invalid(f"more rows arrived than the header's {header.rows}")
            features.append(x)
            labels.append(y)
        if rows != header.rows:
            raise _invalid(f"the header announced {header.rows} rows but {rows} arrived")
        meta = DatasetMeta(
            header.dataset_id,
            header.name or header.dataset_id,
            header.owner,
            header.rows,
            header.feature_shape,
            header.num_classes,
            header.allowed,
            header.scaling,
            int(time.time() * 1000),
            header.release,
        )
        arrays = {"features": np.concatenate(features), "labels": np.concatenate(labels)}
        if upload is not None and self._gate is not None:
            wait = min(self._limits.config.upload_max_s, wait_s or float("inf"))
            self._gate.stage("dataset", meta, arrays, upload, wait)
        else:
            self._store.put(meta, arrays)
        return meta

    def meta(self, dataset_id: str) -> DatasetMeta:
        return self._store.get_meta(check_id(dataset_id, "dataset_id"))

    def usable(self, dataset_id: str, caller: str) -> DatasetMeta:
        """The data set's metadata if ``caller`` may use it; PERMISSION_DENIED otherwise."""
        meta = self.meta(dataset_id)
        if not meta.may_use(caller):
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED,
                f"dataset {dataset_id!r} belongs to {meta.owner!r}, who has not allowed "
                f"{caller!r} to use it",
            )
        return meta

    def shares(self, dataset_id: str) -> tuple[Ring, Ring]:
        """This server's ``(features, labels)`` shares."""
        arrays = self._store.get_shares(check_id(dataset_id, "dataset_id"))
        return arrays["features"], arrays["labels"]

    def list(self) -> list[DatasetMeta]:
        return self._store.list()

    def delete(self, dataset_id: str, caller: str) -> None:
        self._owned(dataset_id, caller, "delete")
        self._store.delete(dataset_id)

    def set_access(
        self, dataset_id: str, caller: str, allowed: tuple[str, ...], release: tuple[str, ...]
    ) -> DatasetMeta:
        """The owner replaces who may use the data set and to whom models trained on it go."""
        check_identities(allowed, "allowed")
        check_identities(release, "release")
        owned = self._owned(dataset_id, caller, "change access to")
        meta = replace(owned, allowed=allowed, release=release)
        self._store.update_meta(meta)
        return meta

    def _owned(self, dataset_id: str, caller: str, action: str) -> DatasetMeta:
        meta = self.meta(dataset_id)
        require_owner(meta.owner, caller, f"{action} dataset {dataset_id!r}")
        return meta

    def __len__(self) -> int:
        return self._store.count()
