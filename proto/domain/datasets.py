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
    allowed: tuple[str, ...] = ()  # identities besides the owner; "*" = any client
    scaling: str = ""  # public note on scaling applied before sharing
    created_unix_ms: int = 0

    @property
    def features(self) -> int:
        """Feature values per row."""
        count = 1
        for dim in self.feature_shape:
            count *= dim
        return count

    def may_use(self, identity: str) -> bool:
        """Whether ``identity`` may train on or evaluate against this data set."""
        return identity == self.owner or ANYONE in self.allowed or identity in self.allowed
