"""Dataset loaders, one-hot labels and the owner partition helper."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from ppml.training.datasets import (
    BUILTINS,
    Dataset,
    DatasetError,
    load_builtin,
    load_csv,
    one_hot,
    partition,
)
from ppml.training.loaders import load_har, load_mnist_idx


@pytest.mark.parametrize("name", BUILTINS)
def test_builtins_load_offline(name: str) -> None:
    data = load_builtin(name)
    assert data.rows > 100 and data.features.shape[0] == data.labels.shape[0]
    assert set(np.unique(data.labels)) == set(range(data.num_classes))


def test_unknown_builtin() -> None:
    with pytest.raises(DatasetError, match="mnist"):
        load_builtin("mnist")


def test_csv_with_header_and_named_label(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,label,b\n1.5,0,2\n3,2,4\n")
    data = load_csv(path, label_column="label")
    assert data.features.tolist() == [[1.5, 2.0], [3.0, 4.0]]
    assert data.labels.tolist() == [0, 2] and data.num_classes == 3


def test_csv_without_header_last_column_is_label(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("1,2,1\n3,4,0\n")
    assert load_csv(path).labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a,b,y\n1,2,0\n1,x,1\n", "line 3"),
        ("a,b,y\n1,2,0\n1,2\n", "line 3: 2 fields"),
        ("1,2,0.5\n", "line 1: label 0.5"),
        ("1,nan,0\n", "NaN/inf"),
    ],
)
def test_csv_errors_name_the_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=where) as info:
        load_csv(path)
    assert "bad.csv" in str(info.value) or "NaN" in where


def test_dataset_rejects_out_of_range_labels_and_empty() -> None:
    with pytest.raises(DatasetError, match=r"0\.\.2"):
        Dataset(np.ones((2, 2)), np.array([0, 3]), 3)
    with pytest.raises(DatasetError, match="non-empty"):
        Dataset(np.ones((0, 2)), np.zeros(0, dtype=np.int64), 3)


def test_one_hot() -> None:
    assert one_hot(np.array([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(DatasetError):
        one_hot(np.array([3]), 3)


@pytest.mark.parametrize("scheme", ["iid", "label_skew", "quantity_skew"])
def test_partition_is_a_disjoint_cover(scheme: str) -> None:
    data = load_builtin("digits")
    parts = partition(data, 4, scheme=scheme, alpha=0.3, seed=1)
    assert len(parts) == 4 and all(p.rows >= 1 for p in parts)
    assert sum(p.rows for p in parts) == data.rows
    rows = np.concatenate([p.features for p in parts])
    assert np.array_equal(np.unique(rows, axis=0), np.unique(data.features, axis=0))


def test_label_skew_is_skewed_and_iid_is_not() -> None:
    data = load_builtin("digits")

    def worst_share(parts: list[Dataset]) -> float:  # largest single-class fraction
        return max(np.bincount(p.labels, minlength=10).max() / p.rows for p in parts)

    # iid: every owner's commonest class is ~10 % of its rows
    assert worst_share(partition(data, 4, "label_skew", alpha=0.1)) > 0.3
    assert worst_share(partition(data, 4, "iid")) < 0.15


def _write_har(root: Path, split: str, rows: int, features: int = 561) -> None:
    folder = root / split
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savetxt(folder / f"X_{split}.txt", rng.normal(size=(rows, features)), fmt="%.7e")
    (folder / f"y_{split}.txt").write_text("".join(f"{1 + i % 6}\n" for i in range(rows)))
    (folder / f"subject_{split}.txt").write_text("".join(f"{1 + i % 3}\n" for i in range(rows)))


def test_har_layout(tmp_path: Path) -> None:
    _write_har(tmp_path, "train", 12)
    _write_har(tmp_path, "test", 5)
    train, subjects = load_har(tmp_path, "train")
    assert train.features.shape == (12, 561) and train.num_classes == 6
    assert train.labels.tolist()[:7] == [0, 1, 2, 3, 4, 5, 0]
    assert subjects.tolist()[:4] == [1, 2, 3, 1]
    assert load_har(tmp_path, "test")[0].rows == 5


def test_har_malformed_files_name_file_and_line(tmp_path: Path) -> None:
    _write_har(tmp_path, "train", 6, features=4)
    x_path = tmp_path / "train" / "X_train.txt"
    lines = x_path.read_text().splitlines()
    lines[3] = lines[3] + " 1.0"
    x_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"X_train\.txt, line 4: 5 values, expected 4"):
        load_har(tmp_path)
    _write_har(tmp_path / "b", "train", 6, features=4)
    (tmp_path / "b" / "train" / "y_train.txt").write_text("1\n2\n7\n1\n1\n1\n")
    with pytest.raises(DatasetError, match=r"y_train\.txt, line 3: label 7"):
        load_har(tmp_path / "b")


def _idx(magic: int, dims: tuple[int, ...], data: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + data


def test_mnist_idx(tmp_path: Path) -> None:
    pixels = np.arange(3 * 28 * 28, dtype=np.uint64) % 256
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(_idx(0x803, (3, 28, 28), pixels.astype(np.uint8).tobytes())))
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(_idx(0x801, (3,), bytes([7, 2, 1])))
    data = load_mnist_idx(images, labels)
    assert data.features.shape == (3, 784) and data.labels.tolist() == [7, 2, 1]
    assert data.features.max() <= 1.0


def test_mnist_idx_malformed(tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.write_bytes(_idx(0x803, (2, 28, 28), bytes(100)))
    labels = tmp_path / "lab"
    labels.write_bytes(_idx(0x801, (2,), bytes([1, 2])))
    with pytest.raises(DatasetError, match=r"img, byte 16: 100 data bytes"):
        load_mnist_idx(images, labels)
    labels.write_bytes(_idx(0x999, (2,), bytes([1, 2])))
    images.write_bytes(_idx(0x803, (2, 28, 28), bytes(2 * 784)))
    with pytest.raises(DatasetError, match=r"lab, byte 0: magic number"):
        load_mnist_idx(images, labels)
