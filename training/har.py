"""An offline synthetic stand-in for UCI "Human Activity Recognition Using Smartphones".

Same layout and types as :func:`ppml.training.loaders.load_har`: a
:class:`~ppml.training.datasets.Dataset` of 561 float features in [-1, 1]
with labels 0..5 (:data:`ACTIVITIES`, in the real data set's order), plus an
int64 array of subject ids in 1..30.

How rows are made (so the data is learnable, not trivially, and non-IID by
subject):

1. a fixed *world* (from ``world_seed``, shared by every call, like the real
   phenomenon): a mean per activity in a ``LATENT``-dimensional space, where
   dynamic activities (walking, up- and downstairs) sit apart from static
   ones and sitting lies close to standing (the real data's hard pair); a
   random projection to 561 features; per subject a latent offset and its
   own activity mix;
2. each row: a subject, an activity from that subject's mix, a latent point
   = activity mean + subject offset + unit Gaussian noise, projected,
   squashed by ``tanh`` into (-1, 1), plus small feature noise, clipped to
   [-1, 1].

Rows from different ``seed`` s but the same ``world_seed`` come from the
same distribution, so a test set is ``synthetic_har(n, seed=1)``; passing
disjoint ``subjects`` gives a subject-disjoint split like the real
train/test division.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ppml.training.datasets import Dataset, DatasetError

ACTIVITIES = (
    "WALKING",
    "WALKING_UPSTAIRS",
    "WALKING_DOWNSTAIRS",
    "SITTING",
    "STANDING",
    "LAYING",
)
FEATURES = 561
SUBJECTS = tuple(range(1, 31))
LATENT = 8
# the real data set's activity shares (train split), used as every subject's mean mix
_SHARES = np.array([0.167, 0.146, 0.134, 0.175, 0.187, 0.191])

Subjects = npt.NDArray[np.int64]


@dataclass(frozen=True)
class _World:
    means: npt.NDArray[np.float64]  # (6, LATENT)
    projection: npt.NDArray[np.float64]  # (LATENT, FEATURES)
    bias: npt.NDArray[np.float64]  # (FEATURES,)
    offsets: npt.NDArray[np.float64]  # (30, LATENT): subject s at row s - 1
    mixes: npt.NDArray[np.float64]  # (30, 6): each subject's activity probabilities


def _world(seed: int) -> _World:
    rng = np.random.default_rng([seed, 561])
    means = rng.normal(scale=1.3, size=(len(ACTIVITIES), LATENT))
    means[:3, 0] += 3.0  # dynamic activities
    means[3:, 0] -= 3.0  # static activities
    means[4] = means[3] + rng.normal(scale=0.9, size=LATENT)  # standing near sitting
    projection = rng.normal(size=(LATENT, FEATURES)) / np.sqrt(LATENT)
    bias = rng.normal(scale=0.3, size=FEATURES)
    offsets = rng.normal(scale=0.6, size=(len(SUBJECTS), LATENT))
    mixes = rng.dirichlet(20 * _SHARES, size=len(SUBJECTS))
    return _World(means, projection, bias, offsets, mixes)


def synthetic_har(
    rows: int,
    seed: int = 0,
    subjects: Sequence[int] = SUBJECTS,
    world_seed: int = 0,
) -> tuple[Dataset, Subjects]:
    """``rows`` HAR-layout rows: (data set with labels 0..5, subject ids in ``subjects``)."""
    if rows < 1:
        raise DatasetError(f"rows must be >= 1, got {rows}")
    ids = np.asarray(subjects, dtype=np.int64)
    if ids.size == 0 or ids.min() < 1 or ids.max() > len(SUBJECTS) or len(set(ids)) != ids.size:
        raise DatasetError(f"subjects must be distinct ids in 1..{len(SUBJECTS)}")
    world = _world(world_seed)
    rng = np.random.default_rng([seed, world_seed])
    who = rng.choice(ids, size=rows)
    cumulative = np.cumsum(world.mixes[who - 1], axis=1)
    labels = (rng.random((rows, 1)) > cumulative).sum(axis=1).clip(max=len(ACTIVITIES) - 1)
    latent = world.means[labels] + world.offsets[who - 1] + rng.normal(size=(rows, LATENT))
    features = np.tanh(0.5 * (latent @ world.projection) + world.bias)
    features = np.clip(features + rng.normal(scale=0.05, size=features.shape), -1.0, 1.0)
    data = Dataset(features, labels.astype(np.int64), len(ACTIVITIES), "har-synthetic")
    return data, who


def split_by_subject(
    data: Dataset, subjects: Subjects, owners: int, seed: int = 0
) -> list[tuple[Dataset, Subjects]]:
    """Split rows across ``owners`` so that no subject's rows go to two owners.

    The distinct subjects are shuffled (``seed``) and dealt into ``owners``
    near-equal groups; each owner gets every row of its group, in the
    original order. Invariants: the owners' subject sets are disjoint, their
    rows add up to all rows, and every owner has at least one subject. For a
    label skew on top, use :func:`ppml.training.datasets.partition` with
    ``"label_skew"``.
    """
    if subjects.shape != (data.rows,):
        raise DatasetError(f"{data.rows} rows but subject ids of shape {subjects.shape}")
    distinct = np.unique(subjects)
    if not 1 <= owners <= distinct.size:
        raise DatasetError(f"cannot split {distinct.size} subjects across {owners} owners")
    groups = np.array_split(np.random.default_rng(seed).permutation(distinct), owners)
    parts = []
    for owner, group in enumerate(groups):
        rows = np.flatnonzero(np.isin(subjects, group))
        part = Dataset(
            data.features[rows], data.labels[rows], data.num_classes, f"{data.name}-{owner}"
        )
        parts.append((part, subjects[rows]))
    return parts
