"""The public mini-batch order of a training job.

Every party, and the plaintext reference, derive the same order from the
job's public seed: one permutation of the row indices per epoch, cut into
consecutive batches (the last one may be smaller). The indices only pick
rows of each party's *share*; no row is ever opened.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class BatchPlan:
    rows: int
    batch_size: int
    seed: int

    @property
    def batches_per_epoch(self) -> int:
        return max(1, -(-self.rows // self.batch_size))

    @functools.lru_cache(maxsize=4)  # noqa: B019 (plans are few, small and immutable)
    def permutation(self, epoch: int) -> npt.NDArray[np.int64]:
        """Epoch ``epoch``'s (0-based) order of all row indices (computed once per epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.rows).astype(np.int64)
        order.flags.writeable = False  # shared by every step of the epoch
        return order

    def locate(self, step: int) -> tuple[int, int]:
        """``(epoch, batch)`` of a 0-based step, both 0-based."""
        return divmod(step, self.batches_per_epoch)

    def indices(self, step: int) -> npt.NDArray[np.int64]:
        """Row indices of step ``step``'s batch."""
        epoch, batch = self.locate(step)
        start = batch * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size].copy()
