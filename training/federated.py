"""Client-side federated learning in plaintext: FedAvg and FedProx local training.

A data owner's rows never leave its machine: it trains the round's global
model locally (:func:`local_update`) and submits only the change of its
weights, flattened (:func:`flatten_params`) into one float64 vector, with its
sample count. An aggregator (the MPC servers, or a CKKS aggregator, see
:mod:`ppml.training.ckks`) forms the sample-weighted average of the deltas;
:func:`weighted_average` and :func:`fedavg_plaintext` are the plaintext
references for tests and benchmarks.

Flat-vector layout (the contract between clients and aggregators): every
floating-point entry of ``model.state_dict()`` (parameters and float
buffers such as batch-norm statistics), in ascending order of name, each
flattened in row-major order. Integer buffers (``num_batches_tracked``)
are not part of it and are left unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from ppml.training import losses
from ppml.training.batches import BatchPlan
from ppml.training.datasets import Dataset

Floats = npt.NDArray[np.float64]


def _float_entries(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    state = model.state_dict()
    return [(name, state[name]) for name in sorted(state) if state[name].is_floating_point()]


def parameter_count(model: nn.Module) -> int:
    """Length of :func:`flatten_params`'s vector for this model."""
    return sum(t.numel() for _, t in _float_entries(model))


def flatten_params(model: nn.Module) -> Floats:
    """The model's float state as one float64 vector (layout in the module docstring)."""
    entries = _float_entries(model)
    if not entries:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([t.detach().cpu().double().reshape(-1).numpy() for _, t in entries])


def unflatten_params(model: nn.Module, vector: npt.ArrayLike) -> None:
    """Load ``vector`` into ``model`` in place; inverse of :func:`flatten_params`.

    Invariant: ``flatten_params`` after ``unflatten_params(m, v)`` equals ``v``
    up to the entries' dtype (exact for float32 values).
    """
    flat = np.asarray(vector, dtype=np.float64)
    entries = _float_entries(model)
    expected = sum(t.numel() for _, t in entries)
    if flat.shape != (expected,):
        raise ValueError(f"model has {expected} float values, vector has shape {flat.shape}")
    state = model.state_dict()
    offset = 0
    with torch.no_grad():
        for name, tensor in entries:
            piece = flat[offset : offset + tensor.numel()].reshape(tensor.shape)
            state[name].copy_(torch.from_numpy(piece).to(tensor.dtype))
            offset += tensor.numel()


@dataclass(frozen=True)
class LocalResult:
    """What a client submits: ``delta = w_local - w_global`` (flat), its row count,
    and its sample-weighted mean training loss (without the proximal term) over
    the last local epoch.
    """

    delta: Floats
    num_samples: int
    mean_loss: float


def local_update(
    model: nn.Module,
    features: npt.ArrayLike | torch.Tensor,
    labels: npt.ArrayLike | torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    loss: str = "cross_entropy",
    mu: float = 0.0,
    global_params: npt.ArrayLike | None = None,
    seed: int = 0,
    num_classes: int | None = None,
) -> LocalResult:
    """Local SGD from the global weights: FedAvg (``mu = 0``) or FedProx (``mu > 0``).

    Training starts from ``global_params`` (a flat vector) if given, else from
    ``model``'s current weights; ``model`` itself is never modified. FedProx
    adds ``mu / 2 * ||w - w_global||^2`` over the trainable parameters to each
    batch's loss, pulling the local weights toward the global ones. Batches
    follow :class:`~ppml.training.batches.BatchPlan` with ``seed``.
    """
    spec = losses.get(loss)
    if epochs < 1 or batch_size < 1 or lr <= 0 or mu < 0:
        raise ValueError("need epochs >= 1, batch_size >= 1, lr > 0 and mu >= 0")
    local = copy.deepcopy(model).train()
    if global_params is not None:
        unflatten_params(local, global_params)
    start = flatten_params(local)
    anchors = [p.detach().clone() for p in local.parameters()]
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows and {len(y)} labels")
    classes = num_classes if num_classes is not None else int(y.max()) + 1
    target = spec.target(nn.functional.one_hot(y, classes).float())
    optimiser = torch.optim.SGD(local.parameters(), lr=lr)
    plan = BatchPlan(len(x), batch_size, seed)
    epoch_loss = 0.0
    for step in range(epochs * plan.batches_per_epoch):
        if step % plan.batches_per_epoch == 0:
            epoch_loss = 0.0
        index = torch.from_numpy(plan.indices(step))
        optimiser.zero_grad()
        data_loss = spec.torch_loss(local(x[index]), target[index])
        objective = data_loss
        if mu > 0:
            prox = sum(
                ((p - a) ** 2).sum() for p, a in zip(local.parameters(), anchors, strict=True)
            )
            objective = data_loss + 0.5 * mu * prox
        objective.backward()
        optimiser.step()
        epoch_loss += float(data_loss.detach()) * len(index)
    return LocalResult(flatten_params(local) - start, len(x), epoch_loss / len(x))


def weighted_average(updates: Sequence[npt.ArrayLike], weights: Sequence[float]) -> Floats:
    """``sum_k w_k u_k / sum_k w_k``; all updates of one length, weights >= 0, sum > 0."""
    if not updates or len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    vectors = [np.asarray(u, dtype=np.float64) for u in updates]
    if len({v.shape for v in vectors}) != 1:
        raise ValueError(f"updates differ in shape: {sorted({v.shape for v in vectors})}")
    w = np.asarray(weights, dtype=np.float64)
    if w.min() < 0 or w.sum() <= 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    return np.asarray(sum(wk * v for wk, v in zip(w, vectors, strict=True)) / w.sum())


def accuracy(model: nn.Module, data: Dataset) -> float:
    """Arg-max accuracy of ``model`` on ``data``."""
    model.eval()
    with torch.no_grad():
        output = model(torch.as_tensor(data.features, dtype=torch.float32))
    return float((output.argmax(1).numpy() == data.labels).mean())


@dataclass(frozen=True)
class RoundRecord:
    round: int  # 1-based
    mean_loss: float  # sample-weighted mean of the clients' last-epoch training losses
    accuracy: float | None  # on the test set, after the round's update


Aggregate = Callable[[Sequence[LocalResult]], Floats]


def _sample_weighted(results: Sequence[LocalResult]) -> Floats:
    return weighted_average([r.delta for r in results], [r.num_samples for r in results])


def fedavg_plaintext(
    model: nn.Module,
    parts: Sequence[Dataset],
    rounds: int,
    epochs: int,
    batch_size: int,
    lr: float,
    loss: str = "cross_entropy",
    mu: float = 0.0,
    seed: int = 0,
    server_lr: float = 1.0,
    aggregate: Aggregate | None = None,
    test: Dataset | None = None,
) -> tuple[nn.Module, list[RoundRecord]]:
    """Run FedAvg/FedProx over ``parts`` (every owner every round); returns a trained
    copy of ``model`` and one record per round.

    ``aggregate`` turns the round's results into the averaged delta (default:
    the sample-weighted plaintext average); pass a CKKS or DP aggregation to
    run the same loop through it. Owner ``k`` in round ``r`` shuffles with
    seed ``(seed, r, k)`` folded into one integer.
    """
    if not parts:
        raise ValueError("need at least one data owner")
    combine = aggregate or _sample_weighted
    classes = max(p.num_classes for p in parts)
    global_model = copy.deepcopy(model)
    history: list[RoundRecord] = []
    for round_no in range(1, rounds + 1):
        current = flatten_params(global_model)
        results = [
            local_update(
                global_model,
                part.features,
                part.labels,
                epochs,
                batch_size,
                lr,
                loss,
                mu,
                current,
                seed=(seed * 1_000_003 + round_no) * 1_000 + owner,
                num_classes=classes,
            )
            for owner, part in enumerate(parts)
        ]
        unflatten_params(global_model, current + server_lr * combine(results))
        mean_loss = float(
            np.average([r.mean_loss for r in results], weights=[r.num_samples for r in results])
        )
        score = accuracy(global_model, test) if test is not None else None
        history.append(RoundRecord(round_no, mean_loss, score))
    return global_model.eval(), history
