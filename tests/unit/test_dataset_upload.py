"""Client side of secret-shared training: checking and sharing data sets, reading metrics."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ppml.client import dataset_upload
from ppml.client.dataset_upload import ChunkSharer, as_dataset, header
from ppml.client.training_job import JobStatus, reconstruct_metrics
from ppml.proto import shares
from ppml.proto.domain import architecture as arch
from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.domain.jobs import EpochMetrics, JobInfo, TrainingSpec
from ppml.proto.wire import serde
from ppml.training.datasets import Dataset, DatasetError, one_hot
from ppml.v1 import datasets_pb2

RESOLUTION = 2.0**-16

# ---------------------------------------------------------------- as_dataset


def test_as_dataset_from_arrays() -> None:
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 1, 2, 0, 1, 2])
    data, feature_shape = as_dataset(x, y)
    assert feature_shape == (2,)
    assert data.features.dtype == np.float64
    np.testing.assert_array_equal(data.features, x)
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == y.tolist()
    assert data.num_classes == 3
    assert data.rows == 6


def test_as_dataset_num_classes_may_exceed_the_labels_seen() -> None:
    data, _ = as_dataset(np.zeros((3, 2)), np.array([0, 1, 1]), num_classes=5)
    assert data.num_classes == 5


def test_as_dataset_from_torch_tensors() -> None:
    x = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    y = torch.tensor([1, 0, 1, 0])
    data, feature_shape = as_dataset(x, y)
    assert feature_shape == (2,)
    np.testing.assert_array_equal(data.features, x.numpy())
    assert data.labels.tolist() == [1, 0, 1, 0]
    assert data.num_classes == 2


def test_as_dataset_accepts_float_labels_that_are_integers() -> None:
    data, _ = as_dataset(np.zeros((3, 2)), np.array([0.0, 1.0, 2.0]))
    assert data.labels.tolist() == [0, 1, 2] and data.labels.dtype == np.int64


def test_image_shaped_features_keep_their_shape() -> None:
    x = np.random.default_rng(0).random((5, 1, 4, 3))
    data, feature_shape = as_dataset(x, np.array([0, 1, 0, 1, 1]))
    assert feature_shape == (1, 4, 3)
    assert data.features.shape == (5, 12)
    np.testing.assert_array_equal(data.features.reshape(5, 1, 4, 3), x)


def test_as_dataset_passes_a_dataset_through() -> None:
    original = Dataset(np.ones((3, 4)), np.array([0, 1, 0]), 2, "mine")
    data, feature_shape = as_dataset(original)
    assert data is original
    assert feature_shape == (4,)


def test_as_dataset_builtin_iris() -> None:
    data, feature_shape = as_dataset("iris")
    assert feature_shape == (4,)
    assert data.rows == 150
    assert data.num_classes == 3
    assert data.name == "iris"


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "path"])
def test_as_dataset_csv_path(tmp_path: Path, as_path: bool) -> None:
    path = tmp_path / "small.csv"
    path.write_text("a,b,label\n1.5,2,0\n3,4,1\n5,6.25,1\n")
    data, feature_shape = as_dataset(path if as_path else str(path))
    assert feature_shape == (2,)
    assert data.features.tolist() == [[1.5, 2.0], [3.0, 4.0], [5.0, 6.25]]
    assert data.labels.tolist() == [0, 1, 1]
    assert data.num_classes == 2


def test_as_dataset_csv_label_column(tmp_path: Path) -> None:
    path = tmp_path / "first.csv"
    path.write_text("label,a,b\n1,2,3\n0,4,5\n")
    data, _ = as_dataset(path, label_column="label")
    assert data.features.tolist() == [[2.0, 3.0], [4.0, 5.0]]
    assert data.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("features", "labels", "num_classes", "match"),
    [
        (np.array([[1.0, np.nan], [2.0, 3.0]]), np.array([0, 1]), None, "NaN"),
        (np.array([[1.0, 2.0], [np.inf, 3.0]]), np.array([0, 1]), None, "non-finite"),
        (np.zeros((3, 2)), np.array([0, 1, 2]), 2, r"0\.\.1"),
        (np.zeros((3, 2)), np.array([0, -1, 1]), None, "labels must lie"),
        (np.zeros((3, 2)), np.array([0, 1.5, 1]), None, "integer"),
        (np.zeros((3, 2)), np.array([0, np.nan, 1]), None, "integer"),
        (np.zeros((0, 2)), np.zeros(0, dtype=np.int64), 2, "empty"),
        (np.zeros((3, 0)), np.array([0, 1, 1]), None, "empty"),
        (np.zeros(3), np.array([0, 1, 1]), None, "row dimension"),
        (np.zeros((3, 2)), np.array([[0], [1], [1]]), None, "1-D"),
        (np.zeros((3, 2)), np.array([0, 1]), None, "labels of shape"),
        (np.zeros((3, 2)), np.array([0, 0, 0]), None, "at least 2 classes"),
    ],
    ids=[
        "nan",
        "inf",
        "label-out-of-range",
        "negative-label",
        "fractional-label",
        "nan-label",
        "no-rows",
        "no-features",
        "1-d-features",
        "2-d-labels",
        "label-count",
        "one-class",
    ],
)
def test_as_dataset_rejects(
    features: np.ndarray, labels: np.ndarray, num_classes: int | None, match: str
) -> None:
    with pytest.raises(DatasetError, match=match):
        as_dataset(features, labels, num_classes=num_classes)


def test_as_dataset_rejects_features_without_labels() -> None:
    with pytest.raises(DatasetError, match="labels"):
        as_dataset(np.zeros((3, 2)))


def test_as_dataset_rejects_an_unknown_name() -> None:
    with pytest.raises(DatasetError, match="neither"):
        as_dataset("not-a-dataset")


def test_as_dataset_rejects_a_path_with_labels(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="labels"):
        as_dataset(str(tmp_path / "x.csv"), np.array([0, 1]))


# ---------------------------------------------------------------- chunk sharer


def _data(
    rows: int = 10, feature_shape: tuple[int, ...] = (4,), classes: int = 3
) -> tuple[Dataset, DatasetMeta, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 3.0, (rows, *feature_shape))
    y = np.arange(rows) % classes
    data, shape = as_dataset(x, y, num_classes=classes)
    return data, header(data, shape, "d-1", "", ("hospital-b",), "z-scored"), x, y


def _decoded(sharer: ChunkSharer, parties: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    streams = [list(sharer.stream(rank)) for rank in range(parties)]
    xs, ys = [], []
    for index in range(1, len(streams[0])):
        parts = [s[index] for s in streams]
        x = shares.reconstruct([serde.share_from_proto(p.features) for p in parts])
        y = shares.reconstruct([serde.share_from_proto(p.labels) for p in parts])
        xs.append(shares.decode(x))
        ys.append(shares.decode(y))
    return xs, ys


def test_header_describes_the_data_set() -> None:
    _, meta, _, _ = _data(rows=10)
    assert meta.dataset_id == "d-1"
    assert meta.owner == ""  # set by each server from the caller's identity
    assert meta.rows == 10 and meta.feature_shape == (4,) and meta.num_classes == 3
    assert meta.allowed == ("hospital-b",) and meta.scaling == "z-scored"
    assert meta.name == "d-1"  # no name given, none in the data


@pytest.mark.parametrize("parties", [2, 3])
def test_shares_of_every_rank_reconstruct_the_data(parties: int) -> None:
    data, meta, x, y = _data(rows=10)
    sharer = ChunkSharer(data, meta, parties)
    messages = list(sharer.stream(0))
    assert messages[0].HasField("header") and not messages[0].HasField("features")
    assert serde.dataset_header_from_proto(messages[0].header, "o") == replace(meta, owner="o")
    assert all(not m.HasField("header") for m in messages[1:])
    xs, ys = _decoded(ChunkSharer(data, meta, parties), parties)
    np.testing.assert_allclose(np.concatenate(xs), x, atol=RESOLUTION)
    np.testing.assert_array_equal(np.concatenate(ys), one_hot(y, 3))


def test_each_rank_gets_a_different_random_looking_share() -> None:
    data, meta, _, _ = _data(rows=6)
    sharer = ChunkSharer(data, meta, 2)
    a, b = (list(sharer.stream(rank))[1] for rank in range(2))
    share_a = serde.share_from_proto(a.features)
    share_b = serde.share_from_proto(b.features)
    assert not np.array_equal(share_a, share_b)
    assert not np.allclose(shares.decode(share_a), data.features, atol=1.0)


def test_image_rows_are_shared_in_their_shape() -> None:
    data, meta, x, _ = _data(rows=5, feature_shape=(1, 3, 2), classes=2)
    assert meta.feature_shape == (1, 3, 2)
    sharer = ChunkSharer(data, meta, 2)
    chunk = list(sharer.stream(0))[1]
    assert list(chunk.features.shape) == [5, 1, 3, 2]
    assert list(chunk.labels.shape) == [5, 2]
    xs, _ = _decoded(ChunkSharer(data, meta, 2), 2)
    np.testing.assert_allclose(xs[0], x, atol=RESOLUTION)


def test_chunking_splits_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    data, meta, x, y = _data(rows=10)  # 4 features + 3 classes = 56 bytes per row
    monkeypatch.setattr(dataset_upload, "CHUNK_BYTES", 3 * 56 + 10)
    sharer = ChunkSharer(data, meta, 3)
    assert sharer.chunk_rows == 3
    assert sharer.chunks == 4
    messages = list(ChunkSharer(data, meta, 3).stream(1))
    assert [list(m.features.shape) for m in messages[1:]] == [[3, 4], [3, 4], [3, 4], [1, 4]]
    assert [list(m.labels.shape) for m in messages[1:]] == [[3, 3], [3, 3], [3, 3], [1, 3]]
    xs, ys = _decoded(sharer, 3)
    assert [len(c) for c in xs] == [3, 3, 3, 1]
    np.testing.assert_allclose(np.concatenate(xs), x, atol=RESOLUTION)
    np.testing.assert_array_equal(np.concatenate(ys), one_hot(y, 3))


def test_tiny_chunk_budget_still_sends_a_row_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    data, meta, _, _ = _data(rows=3)
    monkeypatch.setattr(dataset_upload, "CHUNK_BYTES", 1)
    sharer = ChunkSharer(data, meta, 2)
    assert sharer.chunk_rows == 1 and sharer.chunks == 3


def test_each_chunk_is_shared_once_and_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    data, meta, _, _ = _data(rows=10)
    monkeypatch.setattr(dataset_upload, "CHUNK_BYTES", 2 * 56)
    calls: list[tuple[int, ...]] = []
    real_share = shares.share

    def counting_share(secret: shares.Ring, parties: int) -> list[shares.Ring]:
        calls.append(np.shape(secret))
        return real_share(secret, parties)

    monkeypatch.setattr(dataset_upload.shares, "share", counting_share)
    sharer = ChunkSharer(data, meta, 3)
    assert sharer.chunks == 5
    streams = [sharer.stream(rank) for rank in range(3)]
    for stream in streams:
        next(stream)  # headers
    got: list[list[datasets_pb2.UploadDatasetChunk]] = [[], [], []]
    got[0] = list(streams[0])  # rank 0 races ahead: every chunk shared and held
    assert len(calls) == 2 * 5
    assert len(sharer._cache) == 5
    got[1] = list(streams[1])
    assert len(calls) == 2 * 5  # rank 1 reuses the same shares
    assert len(sharer._cache) == 5  # rank 2 has not taken them yet
    got[2].append(next(streams[2]))
    assert len(sharer._cache) == 4  # chunk 0 freed once the last rank took it
    got[2].extend(streams[2])
    assert len(sharer._cache) == 0
    assert len(calls) == 2 * 5
    assert calls[:2] == [(2, 4), (2, 3)]
    total = shares.reconstruct([serde.share_from_proto(got[r][0].features) for r in range(3)])
    np.testing.assert_allclose(shares.decode(total), data.features[:2], atol=RESOLUTION)


# ---------------------------------------------------------------- metrics and status


def _split(value: float, parties: int = 3) -> list[shares.Ring]:
    return shares.share(shares.encode(np.array(value)), parties)


def test_reconstruct_metrics_adds_up_every_servers_share() -> None:
    losses, correct = _split(0.8125), _split(42.0)
    per_server = [EpochMetrics(4, losses[i], correct[i], 50) for i in range(3)]
    result = reconstruct_metrics(per_server)
    assert result.epoch == 4
    assert result.loss == pytest.approx(0.8125, abs=RESOLUTION)
    assert result.accuracy == pytest.approx(42 / 50, abs=1e-4)


def test_reconstruct_metrics_from_one_server_alone_is_meaningless() -> None:
    losses, correct = _split(0.5, 2), _split(3.0, 2)
    one = reconstruct_metrics([EpochMetrics(1, losses[0], correct[0], 4)])
    both = reconstruct_metrics([EpochMetrics(1, losses[i], correct[i], 4) for i in range(2)])
    assert both.loss == pytest.approx(0.5, abs=RESOLUTION)
    assert one.loss != pytest.approx(0.5, abs=1e-3)


def test_reconstruct_metrics_without_validation_rows() -> None:
    losses = _split(1.25, 2)
    zero = np.zeros((), dtype=np.int64)
    result = reconstruct_metrics([EpochMetrics(2, losses[i], zero, 0) for i in range(2)])
    assert result.loss == pytest.approx(1.25, abs=RESOLUTION)
    assert result.accuracy is None


def test_reconstruct_metrics_after_the_wire() -> None:
    losses, correct = _split(2.5, 2), _split(7.0, 2)
    per_server = [
        serde.epoch_metrics_from_proto(
            serde.epoch_metrics_to_proto(EpochMetrics(1, losses[i], correct[i], 10))
        )
        for i in range(2)
    ]
    result = reconstruct_metrics(per_server)
    assert result.loss == pytest.approx(2.5, abs=RESOLUTION)
    assert result.accuracy == pytest.approx(0.7, abs=1e-4)


def _info() -> JobInfo:
    architecture = arch.Architecture((arch.Linear(2, 2),), (2,), (2,))
    return JobInfo("j", "m", "j", "o", architecture, TrainingSpec(("d",), 1, 1, 0.1))


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["succeeded", "succeeded", "succeeded"], "succeeded"),
        (["queued", "queued"], "queued"),
        (["running", "running"], "running"),
        (["succeeded", "failed", "succeeded"], "failed"),
        (["running", "cancelled", "running"], "cancelled"),
        (["cancelled", "failed"], "failed"),
        (["failed", "cancelled", "succeeded"], "failed"),
        (["queued", "running"], "running"),
        (["queued", "succeeded"], "running"),
        (["running", "succeeded", "succeeded"], "running"),
    ],
)
def test_job_status_state(states: list[str], expected: str) -> None:
    status = JobStatus(_info(), {f"server-{i}": s for i, s in enumerate(states)})
    assert status.state == expected
    assert status.state == expected  # reading it twice gives the same answer
