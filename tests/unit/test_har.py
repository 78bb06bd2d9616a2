"""The synthetic HAR generator: real layout, learnable but not trivially, non-IID by subject."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ppml.training.datasets import Dataset, DatasetError, partition
from ppml.training.har import ACTIVITIES, FEATURES, SUBJECTS, split_by_subject, synthetic_har
from ppml.training.loaders import load_har

TRAIN_SUBJECTS, TEST_SUBJECTS = range(1, 22), range(22, 31)  # the real 21/9 subject split


def test_layout_matches_uci_har() -> None:
    data, subjects = synthetic_har(900, seed=3)
    assert isinstance(data, Dataset) and data.features.shape == (900, FEATURES) == (900, 561)
    assert data.features.dtype == np.float64 and data.labels.dtype == np.int64
    assert data.num_classes == len(ACTIVITIES) == 6
    assert set(np.unique(data.labels)) == set(range(6))
    assert data.features.min() >= -1.0 and data.features.max() <= 1.0
    assert subjects.dtype == np.int64 and subjects.shape == (900,)
    assert set(np.unique(subjects)) == set(SUBJECTS) == set(range(1, 31))


def test_same_types_as_the_real_loader(tmp_path: Path) -> None:
    """Written in the UCI folder layout, the synthetic rows load back through load_har."""
    data, subjects = synthetic_har(50, seed=1)
    (tmp_path / "train").mkdir()
    np.savetxt(tmp_path / "train" / "X_train.txt", data.features, fmt="%.9e")
    np.savetxt(tmp_path / "train" / "y_train.txt", data.labels + 1, fmt="%d")
    np.savetxt(tmp_path / "train" / "subject_train.txt", subjects, fmt="%d")
    loaded, loaded_subjects = load_har(tmp_path, "train")
    assert type(loaded) is type(data) and loaded.num_classes == data.num_classes
    assert np.allclose(loaded.features, data.features, atol=1e-8)
    assert np.array_equal(loaded.labels, data.labels)
    assert loaded_subjects.dtype == subjects.dtype
    assert np.array_equal(loaded_subjects, subjects)


def test_seeds_and_subject_selection() -> None:
    a, sa = synthetic_har(200, seed=5)
    b, sb = synthetic_har(200, seed=5)
    c, _ = synthetic_har(200, seed=6)
    assert np.array_equal(a.features, b.features) and np.array_equal(sa, sb)
    assert not np.array_equal(a.features, c.features)
    _, only = synthetic_har(300, seed=0, subjects=[4, 9])
    assert set(only) == {4, 9}
    for bad in ([], [0], [31], [2, 2]):
        with pytest.raises(DatasetError):
            synthetic_har(10, subjects=bad)


def _mlp_accuracy(train: Dataset, test: Dataset) -> float:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(561, 32), torch.nn.ReLU(), torch.nn.Linear(32, 6))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    x = torch.tensor(train.features, dtype=torch.float32)
    y = torch.tensor(train.labels)
    for epoch in range(6):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(x), 32):
            index = order[start : start + 32]
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimiser.step()
    with torch.no_grad():
        predicted = model(torch.tensor(test.features, dtype=torch.float32)).argmax(1).numpy()
    return float(np.mean(predicted == test.labels))


def test_learnable_by_a_small_mlp_on_unseen_subjects_but_not_from_one_feature() -> None:
    train, _ = synthetic_har(2400, seed=0, subjects=TRAIN_SUBJECTS)
    test, _ = synthetic_har(800, seed=1, subjects=TEST_SUBJECTS)
    assert _mlp_accuracy(train, test) > 0.8
    single = [
        LogisticRegression(max_iter=200)
        .fit(train.features[:, [j]], train.labels)
        .score(test.features[:, [j]], test.labels)
        for j in range(0, FEATURES, 11)
    ]
    assert max(single) < 0.6  # chance is 1/6; one feature cannot tell six activities apart


def test_split_by_subject_is_disjoint_and_complete() -> None:
    data, subjects = synthetic_har(1500, seed=2)
    parts = split_by_subject(data, subjects, owners=4, seed=7)
    assert len(parts) == 4
    owner_subjects = [set(s.tolist()) for _, s in parts]
    for i in range(4):
        assert owner_subjects[i]
        for j in range(i + 1, 4):
            assert not owner_subjects[i] & owner_subjects[j]
    assert set().union(*owner_subjects) == set(subjects.tolist())
    assert sum(p.rows for p, _ in parts) == data.rows
    rows = np.sort(np.concatenate([p.features[:, 0] for p, _ in parts]))
    assert np.array_equal(rows, np.sort(data.features[:, 0]))
    for part, part_subjects in parts:
        assert part_subjects.shape == (part.rows,)


def test_subject_split_is_less_iid_than_a_random_split() -> None:
    data, subjects = synthetic_har(3000, seed=4)

    def spread(parts: list[Dataset]) -> float:
        means = np.stack([p.features.mean(0) for p in parts])
        return float(np.linalg.norm(means - means.mean(0), axis=1).mean())

    by_subject = [p for p, _ in split_by_subject(data, subjects, owners=4)]
    assert spread(by_subject) > 3 * spread(partition(data, 4, "iid"))


def test_split_errors() -> None:
    data, subjects = synthetic_har(100, seed=0, subjects=[1, 2, 3])
    with pytest.raises(DatasetError, match="3 subjects across 4 owners"):
        split_by_subject(data, subjects, owners=4)
    with pytest.raises(DatasetError):
        split_by_subject(data, subjects[:-1], owners=2)
