"""Public metadata of a secret-shared data set (never its values)."""

from __future__ import annotations

from dataclasses import dataclass

ANYONE = "*"


@dataclass(frozen=True)
class DatasetMeta:
    dataset_id: str
    name: str
    owner: str
    rows: int
    feature_shape: tuple[int, ...]  # one row, without the row dimension
    num_classes: int  # labels are shared one-hot: (rows, num_classes)
    allowed: tuple[str, ...] = ()  # may train on / evaluate against it besides the owner
    scaling: str = ""  # public note on scaling applied before sharing
    created_unix_ms: int = 0
    release: tuple[str, ...] = ()  # may export models trained on it besides the owner

    @property
    def features(self) -> int:
        """Feature values per row."""
        count = 1
        for dim in self.feature_shape:
            count *= dim
        return count

    def may_use(self, identity: str) -> bool:
        """Whether ``identity`` may train on or evaluate against this data set."""
        return grants(self.owner, self.allowed, identity)

    def source(self) -> DataSource:
        """This data set as a training source, with its owner's release as of now."""
        return DataSource(self.dataset_id, self.owner, self.release)


def grants(owner: str, listed: tuple[str, ...], identity: str) -> bool:
    """The owner, or anyone listed, or anyone when ``"*"`` is listed."""
    return identity == owner or ANYONE in listed or identity in listed


@dataclass(frozen=True)
class DataSource:
    """A data set a model was trained on, with its owner's release at training time."""

    dataset_id: str
    owner: str
    release: tuple[str, ...] = ()

    def releases_to(self, identity: str) -> bool:
        """Whether ``identity`` may export (or evaluate on other data) a model trained on it."""
        return grants(self.owner, self.release, identity)
