"""The federated part of ``make demo``: the same four offices, training at home.

Each office joins from its own SDK connection (its own identity), trains the
round's global model on its own rows, which never leave it, and submits only
its update, secret-shared to the two servers. The servers add the updates up
in MPC and release only the average (to the participants); with DP on, each
update is clipped and Gaussian noise is added inside MPC first, and
``dp-accounting`` reports the epsilon spent.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ppml.client.cluster import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.client.federation import RoundProgress
from ppml.proto.domain import federations as fed
from ppml.training.datasets import Dataset

FEATURE_SCALE = 16.0  # digits' pixel range: public, so every office scales alike


@dataclass(frozen=True)
class FederationOutcome:
    accuracy: float
    rounds: list[RoundProgress]
    info: fed.FederationInfo
    seconds: float


def office_names(count: int) -> tuple[str, ...]:
    return tuple(f"office-{i}" for i in range(count))


def join_all(
    local: LocalCluster,
    federation_id: str,
    data: dict[str, Any],
    num_classes: int,
    **join: Any,
) -> dict[str, object]:
    """Every office joins from its own connection, in its own thread, until the end.

    ``data`` holds each office's ``(X, y)`` or train function; ``join`` goes to
    :meth:`Cluster.join_federation` (e.g. ``ckks_context``).
    """
    reports: dict[str, object] = {}

    def run(name: str) -> None:
        with Cluster.from_config(local.config_path, token=local.token(name)) as office:
            try:
                reports[name] = office.join_federation(
                    federation_id, data[name], num_classes=num_classes, timeout=600, **join
                )
            except Exception as exc:  # shown by the caller
                reports[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in data]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return reports


def federate(
    local: LocalCluster,
    owner: Cluster,
    model: nn.Module,
    parts: Sequence[Dataset],
    x_test: np.ndarray,
    y_test: np.ndarray,
    rounds: int,
    dp: fed.DpSettings | None = None,
    lr: float = 0.1,
    local_epochs: int = 2,
    batch_size: int = 32,
    scale: float = 1.0,
) -> FederationOutcome:
    """Run one federation over ``parts`` (one office each); the final model's accuracy."""
    import time

    names = office_names(len(parts))
    start = time.perf_counter()
    handle = owner.create_federation(
        model,
        names,
        rounds=rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        lr=lr,
        dp=dp,
        sample_input=torch.zeros(1, parts[0].features.shape[1]),
    )
    data = {n: (p.features / scale, p.labels) for n, p in zip(names, parts, strict=True)}
    reports = join_all(local, handle.federation_id, data, parts[0].num_classes)
    failures = {n: r for n, r in reports.items() if isinstance(r, Exception)}
    if failures:
        raise RuntimeError(f"offices failed: {failures}")
    model_id = handle.result(timeout=120)
    trained = owner.export_model(model_id).to_torch()
    with torch.no_grad():
        x = torch.tensor(x_test / scale, dtype=torch.float32)
        accuracy = float((trained(x).argmax(1).numpy() == y_test).mean())
    return FederationOutcome(accuracy, handle.rounds(), handle.info(), time.perf_counter() - start)


def show(outcome: FederationOutcome) -> None:
    for r in outcome.rounds:
        parts = [f"{len(r.participants)} offices"]
        if r.mean_loss is not None:
            parts.append(f"mean local loss {r.mean_loss:.3f}")
        if r.epsilon:
            parts.append(f"epsilon {r.epsilon:.2f}")
        print(f"  round {r.round}: {', '.join(parts)}")
    print(
        f"  {outcome.info.state.value} in {outcome.seconds:.1f} s: accuracy {outcome.accuracy:.1%}"
    )
