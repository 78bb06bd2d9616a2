"""Concurrent clients are answered correctly and merged into batched MPC jobs."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster

CLIENTS = 32


def test_32_concurrent_clients_are_batched(
    local2: LocalCluster, mlp: torch.nn.Module, digits: Any
) -> None:
    with Cluster.from_config(local2.config_path) as owner:
        model_id = owner.share_model(mlp, digits.x_test[:1], name="batched")
        before = owner.status()[0].batch_sizes
    rows = digits.x_test[: 2 * CLIENTS]

    def client(i: int) -> list[tuple[int, torch.Tensor, int]]:
        # each client has its own SDK instance (own channels), as separate users would
        with Cluster.from_config(local2.config_path) as cluster:
            out = []
            for j in (2 * i, 2 * i + 1):
                result = cluster.predict_detailed(model_id, rows[j : j + 1])
                out.append((j, result.output, result.batch_requests))
            return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for chunk in pool.map(client, range(CLIENTS)) for r in chunk]

    with torch.no_grad():
        plain = mlp(rows)
    assert len(results) == 2 * CLIENTS
    for j, output, _ in results:
        assert (output[0] - plain[j]).abs().max().item() < 1e-2
    assert max(batch for _, _, batch in results) > 1

    def new_jobs(report: Any) -> dict[int, int]:
        return {k: v - before.get(k, 0) for k, v in report.batch_sizes.items()}

    # a server counts a batch when its job finishes, which may be just after the replies
    deadline = time.monotonic() + 30
    with Cluster.from_config(local2.config_path) as owner:
        while True:
            after = owner.status()
            rows_counted = [sum(s * c for s, c in new_jobs(r).items()) for r in after]
            if all(n >= 2 * CLIENTS for n in rows_counted) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    for report in after:  # every server ran the same batched jobs
        jobs = new_jobs(report)
        assert any(size > 1 and count > 0 for size, count in jobs.items())
        assert sum(size * count for size, count in jobs.items()) == 2 * CLIENTS
