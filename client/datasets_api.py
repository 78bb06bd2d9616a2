"""Secret-shared data sets from the SDK: share, list, delete.

Rows are checked and one-hot encoded on the owner's machine, then split with
the OS CSPRNG (:mod:`ppml.client.dataset_upload`); server i receives share i.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ppml.client import dataset_upload
from ppml.client.errors import InvalidDataset
from ppml.client.request_check import check_request
from ppml.client.transport import ClusterBase
from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.wire import serde
from ppml.training.datasets import DatasetError
from ppml.v1 import datasets_pb2


@dataclass(frozen=True)
class DatasetListing:
    meta: DatasetMeta
    servers: tuple[str, ...]  # servers that hold a share of it
    complete: bool


class DatasetsMixin(ClusterBase):
    """:class:`ppml.client.Cluster`'s data set methods."""

    def share_dataset(
        self,
        features: dataset_upload.DataSource,
        labels: np.ndarray | torch.Tensor | None = None,
        *,
        name: str = "",
        num_classes: int | None = None,
        dataset_id: str | None = None,
        allow: Sequence[str] = (),
        release: Sequence[str] = (),
        scaling: str = "",
        label_column: int | str = -1,
    ) -> str:
        """Secret-share a labelled data set; returns its id.

        ``features`` is an array (with integer ``labels``), a
        :class:`~ppml.training.datasets.Dataset`, a CSV path, or a built-in
        name (iris, digits, breast_cancer, wine). Rows are checked here
        (empty, NaN/inf, label range) and labels one-hot encoded before
        sharing. ``allow`` lists the identities (besides you) that may train
        on it or evaluate against it; ``"*"`` is any client of the cluster; by
        default nobody but you. ``release`` lists those (besides you) who may
        export a model trained on it, or evaluate such a model on other data:
        every owner whose data a model was trained on must release it. Change
        both later with :meth:`set_dataset_access`. ``scaling`` documents any
        public scaling you applied.
        """
        try:
            data, feature_shape = dataset_upload.as_dataset(
                features, labels, num_classes, label_column
            )
        except DatasetError as exc:
            raise InvalidDataset(str(exc)) from None
        dataset_id = dataset_id or uuid.uuid4().hex[:16]
        meta = dataset_upload.header(
            data, feature_shape, dataset_id, name, tuple(allow), scaling, tuple(release)
        )
        check_request(serde.dataset_header_to_proto(meta))  # names, before any row is shared
        upload_id = secrets.token_hex(16)
        sharer = dataset_upload.ChunkSharer(data, meta, self.parties, upload_id)
        self._upload_all(
            lambda s, rank: s.datasets.UploadDataset.future(
                sharer.stream(rank), timeout=max(self.timeout, 600), metadata=self._metadata
            ),
            "dataset",
            dataset_id,
            upload_id,
        )
        return dataset_id

    def set_dataset_access(
        self, dataset_id: str, allow: Sequence[str] = (), release: Sequence[str] = ()
    ) -> DatasetMeta:
        """Owner only: replace who may use the data set and who may export models trained on it.

        Models already trained keep the release they were trained under.
        """
        request = datasets_pb2.SetDatasetAccessRequest(
            dataset_id=dataset_id, allowed=list(allow), release=list(release)
        )
        replies = self._call_all(
            lambda s, _: s.datasets.SetDatasetAccess.future(
                request, timeout=self.timeout, metadata=self._metadata
            ),
            fail_fast=False,
        )
        return serde.dataset_meta_from_proto(replies[0])

    def list_datasets(self) -> list[DatasetListing]:
        replies = self._retry(
            lambda: self._call_all(
                lambda s, _: s.datasets.ListDatasets.future(
                    datasets_pb2.ListDatasetsRequest(),
                    timeout=self.timeout,
                    metadata=self._metadata,
                )
            )
        )
        holders: dict[str, list[str]] = {}
        metas: dict[str, DatasetMeta] = {}
        for server, reply in zip(self._servers, replies, strict=True):
            for info in reply.datasets:
                metas.setdefault(info.dataset_id, serde.dataset_meta_from_proto(info))
                holders.setdefault(info.dataset_id, []).append(server.name)
        return [
            DatasetListing(metas[k], tuple(v), len(v) == self.parties) for k, v in holders.items()
        ]

    def delete_dataset(self, dataset_id: str) -> None:
        """Owner only."""
        request = datasets_pb2.DeleteDatasetRequest(dataset_id=dataset_id)
        self._call_all(
            lambda s, _: s.datasets.DeleteDataset.future(
                request, timeout=self.timeout, metadata=self._metadata
            ),
            fail_fast=False,
        )
