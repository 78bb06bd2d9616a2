"""The dealer's part of exact truncation (the protocol runs between processes in
tests/integration/test_mpc_engine.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ppml.servers.mpc import session
from ppml.servers.mpc.core import truncation
from ppml.servers.mpc.randomness.keyed_random import KeyedGenerator


class _Server:
    device = "cpu"

    def __init__(self, keys: list[bytes]) -> None:
        self.generators = [KeyedGenerator(key) for key in keys]

    def _get_generators(self, device: object = None) -> list[KeyedGenerator]:
        return self.generators


@pytest.mark.parametrize("parties", [2, 3])
@pytest.mark.parametrize("divisor", [2, 3, 1 << 16, 1000])
def test_party_parts_sum_to_floor_and_msb_of_the_mask(parties: int, divisor: int) -> None:
    session.install()
    keys = [os.urandom(32) for _ in range(parties)]
    corrections = truncation.dealer_trunc(_Server(keys), torch.Size([4, 500]), divisor)
    party = [KeyedGenerator(key) for key in keys]  # what each party draws, in order
    r = torch.stack([g.ring((4, 500)) for g in party]).sum(dim=0)
    q, m = corrections[0].clone(), corrections[1].clone()
    for g in party[1:]:
        q += g.ring((4, 500))
        m += g.ring((4, 500))
    unsigned = r.numpy().view(np.uint64)
    assert np.array_equal(q.numpy().view(np.uint64), unsigned // np.uint64(divisor))
    assert np.array_equal(m.numpy(), (unsigned >> np.uint64(63)).astype(np.int64))
    assert 0.4 < float(m.double().mean()) < 0.6  # the mask's top bit is uniform


def test_a_scalar_keeps_its_shape() -> None:
    session.install()
    out = truncation.dealer_trunc(_Server([os.urandom(32)] * 2), torch.Size([]), 1 << 16)
    assert out.shape == (2,)


@pytest.mark.parametrize("divisor", [0, 1, -4, 1 << 63, 2.0, True])
def test_the_dealer_refuses_divisors_outside_the_protocol(divisor: object) -> None:
    with pytest.raises(ValueError, match="divisor"):
        truncation.check_divisor(divisor)
