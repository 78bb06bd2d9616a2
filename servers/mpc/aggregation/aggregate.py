"""Secure aggregation of federated updates in MPC, with optional client-level DP.

Runs on each compute server's MPC worker thread, in lockstep with the other
parties (the ``federate`` kind). Inputs are this party's shares of each
included participant's update; the output is this party's share of the
average, which the servers add to their shares of the global model. Nothing
is opened to the servers except, without DP, the round's total sample count
(the public denominator of the sample-weighted average).

* **Without DP:** participants submit ``n_k * delta_k`` and ``n_k``. The
  shares are summed locally, ``sum n_k`` is opened, and the sum is divided by
  it (a public integer).
* **With DP (DP-FedAvg):** participants submit ``delta_k``. Each update is
  clipped *in MPC* to ``delta_k * min(1, C' / ||delta_k||)`` with
  ``C' = C (1 - 2^-7)``, as DP-SGD's examples are
  (:func:`~ppml.servers.mpc.core.clipping.clipped_rows`: accurate to 0.5 %, inside
  the margin, so a clipped norm stays below ``C``). Every coordinate is
  range-checked before anything is squared, and an update with a coordinate
  out of range, or whose squared norm came out out of range, counts as 0:
  no submitted value (crafted shares included) gets past the clipping. The
  clipped updates are summed with weight 1 each (sensitivity ``C``), and
  each party adds Gaussian noise it draws from its own CSPRNG
  (:class:`~ppml.training.privacy.SecureRandom`) to *its own share* of the
  sum, with standard deviation ``per_server_noise_std(z * C, n)``, so that
  the noise of the other parties alone reaches ``z * C`` against any single
  server (``ppml.training.privacy.noise`` explains the split). The noisy sum
  is divided by the public number of participants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ppml.proto.domain.architecture import Architecture
from ppml.proto.domain.federations import parameter_names
from ppml.proto.shares import SCALE, Ring
from ppml.servers.mpc.core.clipping import clipped_rows
from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.training.privacy import SecureRandom, gaussian_sigma, per_server_noise_std


@dataclass(frozen=True)
class DpNoise:
    clip_norm: float
    noise_multiplier: float


@dataclass(frozen=True)
class Aggregate:
    """This party's share of the average, flat, plus the noise it added itself."""

    average: Ring  # flat, in the order of parameter_names(architecture)
    own_noise: np.ndarray  # float64, zeros without DP (never leaves this party)
    total_weight: float  # opened sum of sample counts (0 with DP: not opened)


def _flat(architecture: Architecture, update: dict[str, Ring]) -> Ring:
    return np.concatenate([update[name].reshape(-1) for name in parameter_names(architecture)])


def _shared(ring: Ring) -> Any:
    from crypten.mpc import MPCTensor

    return MPCTensor.from_shares(torch.from_numpy(np.ascontiguousarray(ring)))


def _share_of(tensor: Any) -> Ring:
    return np.asarray(tensor.share.numpy(), dtype=np.int64).copy()


def agreed_mask(held: Sequence[bool]) -> list[bool]:
    """Which entries every party holds (a public all-reduce of 0/1 flags)."""
    comm = crypten.communicator.get()
    flags = torch.tensor([1 if h else 0 for h in held], dtype=torch.long)
    total = comm.all_reduce(flags)
    return [int(v) == comm.get_world_size() for v in total.tolist()]


def aggregate(
    architecture: Architecture,
    updates: Sequence[dict[str, Ring]],
    weights: Sequence[Ring],
    dp: DpNoise | None,
    rng: SecureRandom | None = None,
) -> Aggregate:
    """The (noisy, clipped) average of ``updates``; see the module docstring."""
    if not updates:
        raise ValueError("nothing to aggregate")
    flats = np.stack([_flat(architecture, u) for u in updates])  # (m, d) shares
    if dp is None:
        summed = flats.sum(axis=0)  # int64 wraps mod 2^64: shares add
        total = _shared(np.sum(np.stack(weights), axis=0)).get_plain_text()
        total_weight = float(total.reshape(-1)[0])
        divisor = round(total_weight)
        if divisor < 1:
            raise ValueError(f"the round's total sample count is {total_weight:.3g}")
        average = _share_of(_shared(summed).div(divisor))
        return Aggregate(average, np.zeros(summed.shape), total_weight)
    clipped_sum = _share_of(clipped_rows(_shared(flats), dp.clip_norm).sum(dim=0))
    sigma = gaussian_sigma(dp.clip_norm, dp.noise_multiplier)
    world = crypten.communicator.get().get_world_size()
    own = (rng or SecureRandom()).normal(clipped_sum.size, per_server_noise_std(sigma, world))
    noisy = clipped_sum + np.rint(own * SCALE).astype(np.int64)
    average = _share_of(_shared(noisy).div(len(updates)))
    return Aggregate(average, own, 0.0)


def sum_shares(values: Sequence[Ring | None]) -> Ring | None:
    """Sum of the present shares (None if none is present): local, no communication."""
    present = [v for v in values if v is not None]
    return np.sum(np.stack(present), axis=0) if present else None
