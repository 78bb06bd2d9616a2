"""A server's side of a federation round on the replicated engine (three servers, no dealer).

The ``federate`` kind (``servers/kinds/federate.py``) closes an MPC round
with these in place of :mod:`ppml.servers.mpc.aggregation.update_checks` and
:mod:`ppml.servers.mpc.aggregation.aggregate` when the cluster runs
``engine = "replicated"``; what is opened is the same as there:

* :func:`weights_in_range`: each included participant's secret weight (its
  sample count) is made replicated (1 round) and checked against the public
  bounds with :func:`~ppml.servers.mpc.rep3.ranges.outside` (exact on the
  whole ring, 9 rounds); only one validity bit per participant is opened
  (1 round);
* :func:`aggregate`: the kept updates' shares are summed locally, the total
  weight is opened (:func:`~ppml.servers.mpc.rep3.divide.open_sum`, 1 round,
  re-randomised so that no server's part of it is seen), and the sum is
  divided by that public integer (:func:`~ppml.servers.mpc.rep3.divide.by_public`,
  2 rounds): each coordinate of the average is within ``2^-15`` of the
  exact average of the submitted fixed-point updates (two units of the
  wire's 16 fractional bits), with no wrap, for every average with
  ``|average| * total < 2^46``; as the CrypTen path's division.

What the servers learn: the validity bits and the round's total weight (the
public denominator), as on a cluster with a dealer. Every party's output
share is re-randomised with a fresh zero sharing before it is stored.

Not on this engine yet (refused when a federation is created,
:func:`unsupported_federation`): client-level DP, whose clipping needs the
norm of each update in MPC. The CKKS back end needs no MPC on the servers
(the leader sums ciphertexts; the servers agree on who submitted with a
public all-reduce of flags), so it runs as on any cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ppml.proto.domain import federations as fed
from ppml.proto.domain.architecture import Architecture
from ppml.proto.shares import SCALE, Ring
from ppml.servers.mpc.aggregation.aggregate import Aggregate
from ppml.servers.mpc.rep3 import divide, ranges
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.rounds import Steps, run
from ppml.servers.mpc.rep3.rss import open_all, reshare
from ppml.servers.mpc.rep3.service.party import CommNet, ReplicatedInference
from ppml.servers.mpc.rep3.service.spec import unsupported

ENGINE = "this cluster's engine (engine = 'replicated')"


def unsupported_federation(architecture: Architecture, spec: fed.FederationSpec) -> str | None:
    """Why a federation cannot run on the replicated engine (None: it can)."""
    why = unsupported(architecture)  # the final model must serve here
    if why is not None:
        return why
    if spec.dp.enabled:
        return (
            f"client-level DP (dp clip_norm > 0) does not run on {ENGINE} yet: clipping each "
            "update in MPC needs its norm; run DP federations on a cluster with a dealer"
        )
    return None


def check_weights(corr: Correlated, weights: Ring, low: int, high: int) -> Steps[list[bool]]:
    """Whether each secret weight (additive shares, ring units) is in ``[low, high]``: 11 rounds.

    Opens one bit per entry and nothing else.
    """
    shared = yield from reshare(corr, np.ascontiguousarray(weights, dtype=np.int64))
    bad = yield from ranges.outside(corr, shared, low, high)
    opened = yield from open_all(corr.rank, bad)
    return [int(bit) == 0 for bit in opened.reshape(-1)]


def average(corr: Correlated, summed: Ring, total_weight: Ring) -> Steps[tuple[Ring, float]]:
    """This party's share of ``summed / total`` and the opened total (real units): 3 rounds.

    ``summed`` and ``total_weight`` are this party's additive shares (fixed
    point, 16 fractional bits); the total must be a whole number of samples >= 1.
    """
    opened = yield from divide.open_sum(corr, np.asarray(total_weight, dtype=np.int64))
    total = float(opened.reshape(-1)[0]) / SCALE
    divisor = round(total)
    if divisor < 1:
        raise ValueError(f"the round's total sample count is {total:.3g}")
    share = yield from divide.by_public(corr, summed, divisor)
    out: Ring = share + corr.zero(share.shape)
    return out, total


def weights_in_range(
    engine: ReplicatedInference, weights: Sequence[Ring], low: float, high: float
) -> list[bool]:
    """:func:`check_weights` for this server's weight shares (shape ``(1,)`` each), bounds in
    real units; every server gets the same list. On the MPC worker, in lockstep."""
    if not weights:
        return []
    stacked = np.concatenate([np.asarray(w, dtype=np.int64).reshape(-1) for w in weights])
    if stacked.shape != (len(weights),):
        raise ValueError("every weight must be a share of one value")
    net = CommNet()
    corr = engine.correlated(net)
    bounds = round(low * SCALE), round(high * SCALE)
    return run(net, check_weights(corr, stacked, *bounds))


def aggregate(
    engine: ReplicatedInference,
    architecture: Architecture,
    updates: Sequence[dict[str, Ring]],
    weights: Sequence[Ring],
) -> Aggregate:
    """This server's share of the sample-weighted average of ``updates`` (no DP)."""
    if not updates:
        raise ValueError("nothing to aggregate")
    names = fed.parameter_names(architecture)
    flats = np.stack([np.concatenate([u[n].reshape(-1) for n in names]) for u in updates])
    summed = flats.sum(axis=0)  # int64 wraps mod 2^64: shares add
    total_share = np.sum(np.stack([np.asarray(w, dtype=np.int64).reshape(-1) for w in weights]), 0)
    net = CommNet()
    corr = engine.correlated(net)
    share, total = run(net, average(corr, summed, total_share))
    return Aggregate(share, np.zeros(share.shape), total)
