"""The issue's scenario: four offices hold parts of a smartphone-activity (HAR) data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tolerances import same_accuracy

from ppml.client import Cluster
from ppml.training.datasets import partition
from ppml.training.loaders import load_har

FEATURES, CLASSES = 561, 6


def _write_split(folder: Path, split: str, rows: int, rng: np.random.Generator) -> None:
    """A UCI HAR-layout split: activity k's 561 features cluster around their own centre."""
    centres = np.random.default_rng(0).uniform(-0.5, 0.5, size=(CLASSES, FEATURES))
    labels = rng.integers(0, CLASSES, size=rows)
    x = np.clip(centres[labels] + rng.normal(scale=0.3, size=(rows, FEATURES)), -1, 1)
    (folder / split).mkdir(parents=True)
    np.savetxt(folder / split / f"X_{split}.txt", x, fmt="%.7e")
    (folder / split / f"y_{split}.txt").write_text("".join(f"{y + 1}\n" for y in labels))
    subjects = rng.integers(1, 31, size=rows)
    (folder / split / f"subject_{split}.txt").write_text("".join(f"{s}\n" for s in subjects))


def test_four_offices_train_an_activity_classifier(cluster2: Cluster, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _write_split(tmp_path, "train", 320, rng)
    _write_split(tmp_path, "test", 120, rng)
    train, _ = load_har(tmp_path, "train")
    test, _ = load_har(tmp_path, "test")
    offices = partition(train, 4, "label_skew", alpha=0.5, seed=0)
    ids = [cluster2.share_dataset(o, name=f"office-{i}") for i, o in enumerate(offices)]
    test_id = cluster2.share_dataset(test, name="har-test", allow=())

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, CLASSES)
    )
    job = cluster2.train(
        model,
        ids,
        epochs=2,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        validation=test_id,
        reveal_metrics=True,
        seed=5,
    )
    model_id = job.result(timeout=300)
    accuracy = cluster2.evaluate(model_id, test_id).accuracy
    assert accuracy > 0.9  # six separable activities; chance is 1/6
    assert same_accuracy(job.metrics()[-1].accuracy, accuracy, test.rows)
    listed = {d.meta.dataset_id: d.meta for d in cluster2.list_datasets()}
    assert [listed[i].rows for i in ids] == [o.rows for o in offices]
    assert {listed[i].feature_shape for i in ids} == {(FEATURES,)}
    assert {listed[i].num_classes for i in ids} == {CLASSES}
