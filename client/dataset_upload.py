"""Turn a data owner's rows into per-server upload streams of shares.

Runs on the owner's machine. Inputs are checked here (shape, NaN/inf, label
range, emptiness) so that a bad data set never reaches a server; labels are
one-hot encoded; then every chunk of rows is fixed-point encoded and split
with the OS CSPRNG, and server i's stream carries share i only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ppml.proto import shares
from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.wire import serde
from ppml.training.datasets import (
    BUILTINS,
    Dataset,
    DatasetError,
    load_builtin,
    load_csv,
    one_hot,
)
from ppml.v1 import datasets_pb2

Array = np.ndarray | torch.Tensor
DataSource = Dataset | Array | str | os.PathLike[str]
CHUNK_BYTES = 4 << 20  # per share tensor pair in one message


def _numpy(value: Array) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def as_dataset(
    source: DataSource,
    labels: Array | None = None,
    num_classes: int | None = None,
    label_column: int | str = -1,
) -> tuple[Dataset, tuple[int, ...]]:
    """A checked :class:`Dataset` (features flattened to 2-D) and the per-row feature shape.

    Accepts arrays (features of any per-row shape, e.g. ``(rows, 64)`` or
    ``(rows, 1, 28, 28)``, plus 1-D integer labels), a :class:`Dataset`, a
    CSV path, or a built-in name.
    """
    if isinstance(source, Dataset):
        return source, (int(source.features.shape[1]),)
    if isinstance(source, str | os.PathLike) and labels is None:
        text = os.fspath(source)
        if text in BUILTINS:
            return as_dataset(load_builtin(text))
        if Path(text).suffix.lower() == ".csv" or Path(text).exists():
            return as_dataset(load_csv(text, label_column))
        raise DatasetError(f"{text!r} is neither a built-in data set {BUILTINS} nor a CSV file")
    if labels is None or isinstance(source, str | os.PathLike):
        raise DatasetError("pass labels with a feature array")
    x = _numpy(source).astype(np.float64)
    y = _numpy(labels)
    if x.ndim < 2:
        raise DatasetError(f"features must have a row dimension, got shape {x.shape}")
    if len(x) == 0 or x.size == 0:
        raise DatasetError(f"the data set is empty: features of shape {x.shape}")
    if y.ndim != 1:
        raise DatasetError(f"labels must be a 1-D array of class indices, got shape {y.shape}")
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise DatasetError("labels must be integer class indices")
    y = y.astype(np.int64)
    classes = num_classes if num_classes is not None else int(y.max()) + 1 if y.size else 0
    if classes < 2:
        raise DatasetError(f"need at least 2 classes, got {classes} (pass num_classes=)")
    flat = Dataset(x.reshape(len(x), -1), y, classes)  # checks emptiness, NaN/inf, labels
    return flat, tuple(int(d) for d in x.shape[1:])


class ChunkSharer:
    """Shares each chunk of rows once and hands server i its share, in order.

    Per-server generators pull chunks at their own pace; a chunk's shares are
    dropped once every server has taken its own.
    """

    def __init__(self, data: Dataset, meta: DatasetMeta, parties: int, upload_id: str = "") -> None:
        """``upload_id``: random per upload attempt, the same in every server's header."""
        self._data = data
        self._upload_id = upload_id
        self._meta = meta
        self._parties = parties
        row_bytes = 8 * (meta.features + meta.num_classes)
        self.chunk_rows = max(1, CHUNK_BYTES // row_bytes)
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[list[shares.Ring], list[shares.Ring], set[int]]] = {}

    @property
    def chunks(self) -> int:
        return -(-self._meta.rows // self.chunk_rows)

    def _shares(self, index: int, rank: int) -> tuple[shares.Ring, shares.Ring]:
        with self._lock:
            if index not in self._cache:
                rows = slice(index * self.chunk_rows, (index + 1) * self.chunk_rows)
                x = self._data.features[rows].reshape(-1, *self._meta.feature_shape)
                y = one_hot(self._data.labels[rows], self._meta.num_classes)
                self._cache[index] = (
                    shares.share(shares.encode(x), self._parties),
                    shares.share(shares.encode(y), self._parties),
                    set(),
                )
            xs, ys, taken = self._cache[index]
            taken.add(rank)
            if len(taken) == self._parties:
                del self._cache[index]
            return xs[rank], ys[rank]

    def stream(self, rank: int) -> Iterator[datasets_pb2.UploadDatasetChunk]:
        """Server ``rank``'s upload: the header, then its share of every chunk."""
        header = serde.dataset_header_to_proto(self._meta)
        header.upload_id = self._upload_id
        yield datasets_pb2.UploadDatasetChunk(header=header)
        for index in range(self.chunks):
            x, y = self._shares(index, rank)
            yield datasets_pb2.UploadDatasetChunk(
                features=serde.share_to_proto(x), labels=serde.share_to_proto(y)
            )


def header(
    data: Dataset,
    feature_shape: tuple[int, ...],
    dataset_id: str,
    name: str,
    allowed: tuple[str, ...],
    scaling: str,
    release: tuple[str, ...] = (),
) -> DatasetMeta:
    """The public metadata every server receives (owner is set by the server)."""
    return DatasetMeta(
        dataset_id=dataset_id,
        name=name or data.name or dataset_id,
        owner="",
        rows=data.rows,
        feature_shape=feature_shape,
        num_classes=data.num_classes,
        allowed=allowed,
        scaling=scaling,
        release=release,
    )
