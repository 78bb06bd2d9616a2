"""Labelled tabular data sets for secret-shared training, as plain arrays.

Everything here runs on a data owner's own machine, before sharing: loaders
for built-in and user files, one-hot labels, and a partition helper that
splits one data set across simulated owners. Malformed input raises
:class:`DatasetError` naming the file and line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int64]

BUILTINS = ("iris", "digits", "breast_cancer", "wine")


class DatasetError(ValueError):
    """A data file or array is malformed; the message says where."""


@dataclass(frozen=True)
class Dataset:
    features: Floats  # (rows, features)
    labels: Labels  # (rows,), integers in 0..num_classes-1
    num_classes: int
    name: str = ""

    def __post_init__(self) -> None:
        check_arrays(self.features, self.labels, self.num_classes, self.name or "dataset")

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


def check_arrays(features: Floats, labels: Labels, num_classes: int, what: str) -> None:
    """Shape, finiteness and label-range checks shared by every loader."""
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise DatasetError(f"{what}: features must be a non-empty 2-D array, got {features.shape}")
    if labels.shape != (features.shape[0],):
        raise DatasetError(
            f"{what}: {features.shape[0]} feature rows but labels of shape {labels.shape}"
        )
    bad = np.argwhere(~np.isfinite(features))
    if bad.size:
        row, col = (int(v) for v in bad[0])
        raise DatasetError(f"{what}: non-finite value (NaN/inf) at row {row}, column {col}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{what}: labels must lie in 0..{num_classes - 1}, "
            f"found {int(labels.min())}..{int(labels.max())}"
        )


def load_builtin(name: str) -> Dataset:
    """A data set shipped with scikit-learn (no download): iris, digits, breast_cancer, wine."""
    from sklearn import datasets

    if name not in BUILTINS:
        raise DatasetError(f"unknown built-in data set {name!r}; choose one of {BUILTINS}")
    bunch = getattr(datasets, f"load_{name}")()
    labels = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(np.asarray(bunch.data, np.float64), labels, int(labels.max()) + 1, name)


def load_csv(path: str | Path, label_column: int | str = -1) -> Dataset:
    """A CSV file of numeric features and one integer label column (header optional)."""
    path = Path(path)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DatasetError(f"{path}: empty file")
    header: list[str] | None = None
    try:
        float(rows[0][0])
    except (ValueError, IndexError):
        header, rows = rows[0], rows[1:]
    first_line = 2 if header else 1
    if isinstance(label_column, str):
        if header is None or label_column not in header:
            raise DatasetError(f"{path}: no column named {label_column!r} in the header")
        label_column = header.index(label_column)
    width = len(header) if header else len(rows[0]) if rows else 0
    features, labels = [], []
    for offset, row in enumerate(rows):
        line = first_line + offset
        if len(row) != width:
            raise DatasetError(f"{path}, line {line}: {len(row)} fields, expected {width}")
        try:
            values = [float(v) for v in row]
        except ValueError as exc:
            raise DatasetError(f"{path}, line {line}: {exc}") from None
        label = values.pop(label_column)
        if label != int(label):
            raise DatasetError(f"{path}, line {line}: label {label} is not an integer")
        features.append(values)
        labels.append(int(label))
    if not features:
        raise DatasetError(f"{path}: no data rows")
    y = np.asarray(labels, dtype=np.int64)
    return Dataset(np.asarray(features, np.float64), y, int(y.max()) + 1, path.stem)


def one_hot(labels: Labels, num_classes: int) -> Floats:
    """``(rows,)`` integer labels -> ``(rows, num_classes)`` one-hot floats."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"labels must lie in 0..{num_classes - 1}")
    out = np.zeros((labels.shape[0], num_classes), dtype=np.float64)
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def partition(
    data: Dataset,
    owners: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[Dataset]:
    """Split ``data`` across ``owners`` for simulations; every owner gets >= 1 row.

    * ``iid``: a random, even split;
    * ``label_skew``: per class, owner proportions drawn from Dirichlet(alpha)
      (small alpha = each owner sees mostly a few classes);
    * ``quantity_skew``: random rows, owner sizes drawn from Dirichlet(alpha).
    """
    if owners < 1 or owners > data.rows:
        raise DatasetError(f"cannot split {data.rows} rows across {owners} owners")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(data.rows), owners)
    elif scheme == "quantity_skew":
        order = rng.permutation(data.rows)
        sizes = 1 + rng.multinomial(data.rows - owners, rng.dirichlet([alpha] * owners))
        parts = np.split(order, np.cumsum(sizes)[:-1])
    elif scheme == "label_skew":
        buckets: list[list[int]] = [[] for _ in range(owners)]
        for label in range(data.num_classes):
            rows = rng.permutation(np.flatnonzero(data.labels == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * owners)) * len(rows)).astype(int)[:-1]
            for owner, chunk in enumerate(np.split(rows, cuts)):
                buckets[owner].extend(int(i) for i in chunk)
        for owner in range(owners):  # no owner left empty
            if not buckets[owner]:
                donor = max(range(owners), key=lambda o: len(buckets[o]))
                buckets[owner].append(buckets[donor].pop())
        parts = [np.asarray(sorted(b), dtype=np.int64) for b in buckets]
    else:
        raise DatasetError(f"unknown scheme {scheme!r}: use iid, label_skew or quantity_skew")
    return [
        Dataset(data.features[p], data.labels[p], data.num_classes, f"{data.name}-{i}")
        for i, p in enumerate(parts)
    ]
