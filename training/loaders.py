"""Loaders for data sets users bring in their published layouts.

* UCI "Human Activity Recognition Using Smartphones": a folder with
  ``train/X_train.txt``, ``train/y_train.txt``, ``train/subject_train.txt``
  and the same for ``test/``; whitespace-separated floats, labels 1..6.
* MNIST IDX files (``*-images-idx3-ubyte`` / ``*-labels-idx1-ubyte``, optionally
  gzipped): big-endian header, then unsigned bytes.

Every error names the file and the line (text) or byte offset (IDX).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ppml.training.datasets import Dataset, DatasetError

HAR_CLASSES = 6
_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801


def _read_table(path: Path, width: int | None = None) -> list[list[float]]:
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    rows = []
    with open(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                values = [float(v) for v in fields]
            except ValueError as exc:
                raise DatasetError(f"{path}, line {line_no}: {exc}") from None
            if width is not None and len(values) != width:
                raise DatasetError(
                    f"{path}, line {line_no}: {len(values)} values, expected {width}"
                )
            width = len(values)
            rows.append(values)
    if not rows:
        raise DatasetError(f"{path}: no data")
    return rows


def load_har(folder: str | Path, split: str = "train") -> tuple[Dataset, np.ndarray]:
    """One split of the UCI HAR layout: (data set with labels 0..5, subject ids)."""
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    base = Path(folder) / split
    x_path, y_path, s_path = (base / f"{k}_{split}.txt" for k in ("X", "y", "subject"))
    features = np.asarray(_read_table(x_path), dtype=np.float64)
    labels_raw = _read_table(y_path, width=1)
    subjects = np.asarray(_read_table(s_path, width=1), dtype=np.int64)[:, 0]
    for path, count in ((y_path, len(labels_raw)), (s_path, len(subjects))):
        if count != len(features):
            raise DatasetError(
                f"{path}, line {min(count, len(features)) + 1}: "
                f"{count} rows but {x_path.name} has {len(features)}"
            )
    labels = np.empty(len(labels_raw), dtype=np.int64)
    for line_no, (value,) in enumerate(labels_raw, start=1):
        if value != int(value) or not 1 <= value <= HAR_CLASSES:
            raise DatasetError(f"{y_path}, line {line_no}: label {value} is not in 1..6")
        labels[line_no - 1] = int(value) - 1
    return Dataset(features, labels, HAR_CLASSES, f"har-{split}"), subjects


def _read_idx(path: Path, magic: int) -> np.ndarray:
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 8:
        raise DatasetError(f"{path}, byte 0: truncated IDX header")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise DatasetError(f"{path}, byte 0: magic number {found:#010x}, expected {magic:#010x}")
    ndim = found & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}, byte 4: truncated IDX dimensions")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}, byte {header}: {len(raw) - header} data bytes, dimensions {dims} "
            f"need {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist_idx(images: str | Path, labels: str | Path) -> Dataset:
    """MNIST-format IDX files -> features scaled to [0, 1] (flattened), labels 0..9."""
    pixels = _read_idx(Path(images), _IDX_IMAGES)
    digits = _read_idx(Path(labels), _IDX_LABELS).astype(np.int64)
    if len(pixels) != len(digits):
        raise DatasetError(f"{labels}: {len(digits)} labels for {len(pixels)} images in {images}")
    if digits.size and digits.max() > 9:
        index = int(np.argmax(digits > 9))
        raise DatasetError(f"{labels}, byte {8 + index}: label {digits[index]} is not 0..9")
    features = pixels.reshape(len(pixels), -1).astype(np.float64) / 255.0
    return Dataset(features, digits, 10, Path(images).name)
