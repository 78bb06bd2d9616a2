"""Tables of single-server CKKS inference in the latest snapshot.

A CKKS model lives on the one server it was registered on, which computes on
ciphertexts under each client's own keys: the figures are per server, model
and client identity, and are counts, sizes and timings only.
"""

from __future__ import annotations

import pandas as pd

from ppml.dashboard.data import ClusterSnapshot

MODEL_COLUMNS = [
    "server",
    "model id",
    "requests",
    "errors",
    "images",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "MB in",
    "MB out",
    "KB/image",
]
CONTEXT_COLUMNS = ["server", "identity", "contexts"]


def he_models(snapshot: ClusterSnapshot) -> pd.DataFrame:
    """One row per server and CKKS model: requests, errors, latency, ciphertext traffic."""
    rows = []
    for server in snapshot.servers:
        if server.status is None:
            continue
        for m in server.status.he_models:
            traffic = m.bytes_in + m.bytes_out
            rows.append(
                {
                    "server": server.name,
                    "model id": m.model_id,
                    "requests": m.requests,
                    "errors": m.errors,
                    "images": m.images,
                    "p50 ms": round(m.latency.p50_ms, 1),
                    "p95 ms": round(m.latency.p95_ms, 1),
                    "p99 ms": round(m.latency.p99_ms, 1),
                    "MB in": round(m.bytes_in / 1e6, 1),
                    "MB out": round(m.bytes_out / 1e6, 1),
                    "KB/image": round(traffic / m.images / 1e3, 1) if m.images else 0.0,
                }
            )
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


def he_contexts(snapshot: ClusterSnapshot) -> pd.DataFrame:
    """One row per server and client identity: the CKKS contexts stored for it."""
    rows = [
        {"server": s.name, "identity": identity, "contexts": count}
        for s in snapshot.servers
        if s.status is not None
        for identity, count in sorted(s.status.he_contexts.items())
    ]
    return pd.DataFrame(rows, columns=CONTEXT_COLUMNS)
