"""DP-SGD's batches: uniform fixed-size subsets, fresh every step, from a key no API holds.

The privacy accountant assumes each step trains on a uniformly random set of
exactly ``batch`` rows, independent of every other step and unknown outside
the servers (``SampledWithoutReplacementDpEvent``). These tests check the
sampler against that, and that its key is drawn afresh from the OS CSPRNG
with every party's contribution, so two jobs with the same public settings
train on different batches.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch

from ppml.servers.mpc.randomness import prng
from ppml.training.batches import KEY_BYTES, SecretBatches

KEY = bytes(range(32))  # a fixed key: the statistics below are deterministic, never flaky


def test_every_batch_is_a_set_of_exactly_batch_distinct_rows() -> None:
    for rows, batch in [(1000, 64), (10, 3), (7, 7), (5, 9), (1, 1)]:
        sampler = SecretBatches(rows, batch, KEY)
        for step in range(20):
            index = sampler.indices(step)
            assert index.dtype == np.int64 and len(index) == min(rows, batch)
            assert len(set(index.tolist())) == len(index)
            assert index.min() >= 0 and index.max() < rows


def test_each_step_is_a_uniform_subset() -> None:
    """Rows 6, batch 2: all 15 subsets equally likely (chi-square over 3000 steps)."""
    sampler = SecretBatches(6, 2, KEY)
    steps = 3000
    counts = Counter(frozenset(sampler.indices(s).tolist()) for s in range(steps))
    assert len(counts) == math.comb(6, 2)
    expected = steps / 15
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 36.1  # 14 degrees of freedom: p = 0.001


def test_steps_are_independent_and_rows_equally_likely() -> None:
    rows, batch, steps = 40, 10, 2000
    sampler = SecretBatches(rows, batch, KEY)
    sets = [set(sampler.indices(s).tolist()) for s in range(steps)]
    # consecutive steps overlap as two independent draws do: hypergeometric mean b^2 / n = 2.5
    overlaps = [len(a & b) for a, b in itertools.pairwise(sets)]
    assert np.mean(overlaps) == pytest.approx(batch * batch / rows, abs=0.15)
    # each row is in a batch with probability b / n = 1/4
    hits = Counter(row for chosen in sets for row in chosen)
    assert set(hits) == set(range(rows))
    assert all(abs(c / steps - batch / rows) < 0.05 for c in hits.values())
    # no epoch structure: a public shuffle would use each row exactly once per 4 steps
    assert any(len(set().union(*sets[i : i + 4])) < rows for i in range(0, 40, 4))


def test_the_same_key_gives_every_party_the_same_batches_and_another_key_others() -> None:
    a, b = SecretBatches(500, 32, KEY), SecretBatches(500, 32, KEY)
    assert all(np.array_equal(a.indices(s), b.indices(s)) for s in range(10))
    other = SecretBatches(500, 32, bytes(32))
    assert not np.array_equal(a.indices(0), other.indices(0))


def test_the_key_is_never_shown() -> None:
    sampler = SecretBatches(10, 2, KEY)
    assert KEY.hex() not in repr(sampler) and "key" not in repr(sampler)
    with pytest.raises(ValueError, match="32 bytes"):
        SecretBatches(10, 2, b"short")


class _Party:
    """A party of a fake all-gather: its own contribution first, the others' given."""

    ENCRYPTED_LINKS = True

    def __init__(self, rank: int, others: list[bytes]) -> None:
        self.rank, self.others = rank, others
        self.sent: list[bytes] = []

    def get_world_size(self) -> int:
        return 1 + len(self.others)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        mine = bytes(tensor.numpy().tobytes())
        self.sent.append(mine)
        parts = [np.frombuffer(bytearray(o), dtype=np.uint8) for o in self.others]
        parts.insert(self.rank, tensor.numpy())
        return [torch.from_numpy(np.asarray(p, dtype=np.uint8)) for p in parts]


def test_two_jobs_with_the_same_public_settings_get_different_keys_and_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key comes from os.urandom on every party, nothing public: never the same twice."""
    peer = b"\x07" * KEY_BYTES
    parties: list[Any] = []

    def communicator() -> Any:
        parties.append(_Party(0, [peer]))
        return parties[-1]

    monkeypatch.setattr(prng, "_communicator", communicator)
    first, second = prng.joint_secret_key(), prng.joint_secret_key()
    assert len(first) == KEY_BYTES and first != second
    for party, key in zip(parties, (first, second), strict=True):
        (mine,) = party.sent  # each call drew 32 fresh bytes and sent them to the peers
        assert len(mine) == KEY_BYTES and mine != peer
        assert key == hashlib.sha256(mine + peer).digest()  # every contribution counts
    jobs = [SecretBatches(1000, 50, key) for key in (first, second)]
    assert not np.array_equal(jobs[0].indices(0), jobs[1].indices(0))
