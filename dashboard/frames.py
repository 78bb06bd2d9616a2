"""Tables of the latest snapshot (one row per server and model, job kind, data set, ...)."""

from __future__ import annotations

import pandas as pd

from ppml.dashboard import jobs
from ppml.dashboard.data import ClusterSnapshot
from ppml.dashboard.records import Record
from ppml.proto.domain.architecture import ModelMeta

NONE = "—"  # an empty cell (a plain "-" would render as a Markdown bullet)
INCOMPLETE = " (incomplete)"  # after "held by" when a server that answered lacks a share


def model_names(snapshot: ClusterSnapshot) -> dict[str, str]:
    """Model id -> a label for charts: its name if it has one, else its id."""
    names: dict[str, str] = {}
    for server in snapshot.servers:
        for meta in server.models:
            names.setdefault(meta.model_id, meta.name or meta.model_id)
    return names


def model_table(snapshot: ClusterSnapshot, rates: dict[tuple[str, str], float]) -> pd.DataFrame:
    """One row per server and model: counters, rate, latency quantiles, errors."""
    names = model_names(snapshot)
    rows = []
    for server in snapshot.servers:
        if server.status is None:
            continue
        for m in server.status.models:
            rows.append(
                {
                    "server": server.name,
                    "model": names.get(m.model_id, m.model_id),
                    "model id": m.model_id,
                    "requests": m.requests,
                    "batches": m.batches,
                    "req/s": round(rates.get((server.name, m.model_id), 0.0), 2),
                    "p50 ms": round(m.latency.p50_ms, 1),
                    "p95 ms": round(m.latency.p95_ms, 1),
                    "p99 ms": round(m.latency.p99_ms, 1),
                    "errors": ", ".join(f"{k}: {v}" for k, v in sorted(m.errors.items())) or NONE,
                }
            )
    return pd.DataFrame(rows)


def batch_sizes(snapshot: ClusterSnapshot) -> pd.DataFrame:
    rows = [
        {"server": s.name, "batch size": int(size), "jobs": int(jobs)}
        for s in snapshot.servers
        if s.status is not None
        for size, jobs in sorted(s.status.batch_sizes.items())
    ]
    return pd.DataFrame(rows, columns=["server", "batch size", "jobs"])


def errors_by_code(snapshot: ClusterSnapshot) -> pd.DataFrame:
    rows = [
        {"server": s.name, "code": code, "requests": int(count)}
        for s in snapshot.servers
        if s.status is not None
        for code, count in sorted(s.status.errors.items())
        if count
    ]
    return pd.DataFrame(rows, columns=["server", "code", "requests"])


def mpc_cost(snapshot: ClusterSnapshot) -> pd.DataFrame:
    rows = []
    for s in snapshot.servers:
        if s.status is None:
            continue
        for c in s.status.mpc_cost:
            jobs = max(c.jobs, 1)
            rows.append(
                {
                    "server": s.name,
                    "kind": c.kind,
                    "jobs": c.jobs,
                    "rounds": c.rounds,
                    "bytes": c.bytes,
                    "seconds": round(c.seconds, 3),
                    "rounds/job": round(c.rounds / jobs, 1),
                    "KiB/job": round(c.bytes / jobs / 1024, 1),
                    "ms/job": round(1000 * c.seconds / jobs, 1),
                }
            )
    return pd.DataFrame(rows)


def dealer_requests(snapshot: ClusterSnapshot) -> pd.DataFrame:
    """Correlated-randomness requests the dealer served, by kind (leader's report)."""
    leader = snapshot.leader
    if leader is None or leader.status is None:
        return pd.DataFrame(columns=["kind", "requests"])
    rows = [{"kind": k, "requests": v} for k, v in sorted(leader.status.dealer_requests.items())]
    return pd.DataFrame(rows, columns=["kind", "requests"])


def fast_pools(snapshot: ClusterSnapshot) -> pd.DataFrame:
    """Per server: the fast engine's bundles pooled ahead of requests, fill rate, hits."""
    columns = ["server", "bundles", "images", "MB", "fill rate (img/s)", "refilled", "hits",
               "misses", "hit rate"]  # fmt: skip
    rows = []
    for s in snapshot.servers:
        if s.status is None:
            continue
        p = s.status.fast_pool
        if not (p.bundles or p.refilled or p.hits or p.misses):
            continue  # no fast inference on this server (yet)
        forwards = p.hits + p.misses
        rows.append(
            {
                "server": s.name,
                "bundles": p.bundles,
                "images": p.images,
                "MB": round(p.bytes / 1e6, 1),
                "fill rate (img/s)": round(p.fill_rate, 2),
                "refilled": p.refilled,
                "hits": p.hits,
                "misses": p.misses,
                "hit rate": f"{100 * p.hits / forwards:.0f} %" if forwards else "",
            }
        )
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- overview and registry


def format_uptime(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


NO_DEALER = "NONE"


def dealer_state(snapshot: ClusterSnapshot) -> tuple[str, str]:
    """("CONNECTED" | "DISCONNECTED" | "UNKNOWN" | "NONE", why), as the leader sees the dealer.

    The dealer has no RPC of its own: the leader's status says whether it is
    connected (``dealer_connected``). A cluster on the replicated engine has
    none (``snapshot.dealer`` is empty).
    """
    if not snapshot.dealer:
        return NO_DEALER, "three servers and no dealer (engine = 'replicated')"
    leader = snapshot.leader
    if leader is None or leader.status is None:
        return "UNKNOWN", "leader unreachable"
    if leader.status.dealer_connected:
        return "CONNECTED", f"control link to {leader.name} is up"
    return "DISCONNECTED", f"no control link to {leader.name}"


def overview(snapshot: ClusterSnapshot) -> pd.DataFrame:
    """One row per compute server, then the dealer (if the cluster has one)."""
    rows: list[dict[str, object]] = []
    for s in snapshot.servers:
        r = s.status
        rows.append(
            {
                "name": s.name,
                "role": "leader" if s.rank == 0 else "server",
                "rank": s.rank,
                "address": s.address,
                "health": "DOWN (unreachable)" if not s.reachable else s.health,
                "version": r.version if r else NONE,
                "uptime": format_uptime(r.uptime_s) if r else NONE,
                "TLS": ("on" if r.tls else "off") if r else NONE,
                "epoch": r.mpc_epoch if r else NONE,
                "requests": r.requests_total if r else NONE,
                "queue": r.queue_depth if r else NONE,
                "links up": (", ".join(r.links_up) or "none") if r else NONE,
                "last error": (r.last_error if r else "") or s.error or NONE,
            }
        )
    state, why = dealer_state(snapshot)
    if state == NO_DEALER:
        return pd.DataFrame(rows).astype(str)
    rows.append(
        {
            "name": snapshot.dealer,
            "role": "dealer",
            "rank": NONE,
            "address": "(no RPC)",
            "health": state,
            **dict.fromkeys(("version", "uptime", "TLS", "epoch", "requests", "queue"), NONE),
            "links up": NONE,
            "last error": NONE if state == "CONNECTED" else why,
        }
    )
    return pd.DataFrame(rows).astype(str)


def registry(snapshot: ClusterSnapshot) -> pd.DataFrame:
    """Every model any server holds: public metadata only, and which servers hold a share."""
    metas: dict[str, ModelMeta] = {}
    holders: dict[str, list[str]] = {}
    for s in snapshot.servers:
        for meta in s.models:
            metas.setdefault(meta.model_id, meta)
            holders.setdefault(meta.model_id, []).append(s.name)
    reachable = sum(1 for s in snapshot.servers if s.answered("models"))
    rows = []
    for model_id, meta in sorted(metas.items(), key=lambda kv: kv[1].created_unix_ms):
        a = meta.architecture
        created = pd.Timestamp(meta.created_unix_ms, unit="ms", tz="UTC")
        rows.append(
            {
                "id": model_id,
                "name": meta.name or NONE,
                "owner": meta.owner,
                "architecture": a.describe(),
                "input": "x".join(map(str, a.input_shape)),
                "output": "x".join(map(str, a.output_shape)),
                "parameters": f"{meta.parameter_count:,}",
                "created (UTC)": created.strftime("%Y-%m-%d %H:%M:%S"),
                "held by": ", ".join(holders[model_id])
                + ("" if len(holders[model_id]) >= reachable else INCOMPLETE),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- data sets and training


def _utc(unix_ms: int) -> str:
    if not unix_ms:
        return NONE
    return pd.Timestamp(unix_ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")


DATASET_COLUMNS = [
    "id",
    "name",
    "owner",
    "rows",
    "features",
    "classes",
    "held by",
    "created (UTC)",
]


def datasets(snapshot: ClusterSnapshot) -> pd.DataFrame:
    """One row per data set: public metadata, and which servers hold a share."""
    first: dict[str, Record] = {}
    holders: dict[str, list[str]] = {}
    for record in snapshot.datasets:
        dataset_id = str(record.get("dataset_id", ""))
        first.setdefault(dataset_id, record)
        holders.setdefault(dataset_id, []).append(str(record.get("server", "")))
    answered = {s.name for s in snapshot.servers if s.answered("datasets")}
    rows = []
    for dataset_id, r in sorted(first.items(), key=lambda kv: kv[1].get("created_unix_ms", 0)):
        held = holders[dataset_id]
        rows.append(
            {
                "id": dataset_id,
                "name": r.get("name") or NONE,
                "owner": r.get("owner") or NONE,
                "rows": int(r.get("rows", 0)),
                "features": "x".join(map(str, r.get("feature_shape", []))) or NONE,
                "classes": int(r.get("num_classes", 0)),
                "held by": ", ".join(held) + ("" if answered <= set(held) else INCOMPLETE),
                "created (UTC)": _utc(int(r.get("created_unix_ms", 0))),
            }
        )
    return pd.DataFrame(rows, columns=DATASET_COLUMNS)


JOB_COLUMNS = [
    "name",
    "id",
    "owner",
    "state",
    "progress",
    "steps",
    "samples/s",
    "epochs",
    "batch size",
    "loss",
    "reveal metrics",
    "data sets",
    "reason",
    "model id",
]


def training_jobs(snapshot: ClusterSnapshot) -> pd.DataFrame:
    """One row per training job, active ones first; ``progress`` is a fraction (0..1)."""
    rows = []
    for job in jobs.cluster_jobs(snapshot):
        rows.append(
            {
                "name": job.get("name") or NONE,
                "id": job.job_id,
                "owner": job.get("owner") or NONE,
                "state": job.describe_states(),
                "progress": round(job.progress, 4),
                "steps": f"{job.get('steps_done', 0)}/{job.get('steps_total', 0)}",
                "samples/s": round(float(job.get("samples_per_s", 0.0)), 1),
                "epochs": int(job.get("epochs", 0)),
                "batch size": int(job.get("batch_size", 0)),
                "loss": job.get("loss") or NONE,
                "reveal metrics": "yes" if job.get("reveal_metrics") else "no",
                "data sets": ", ".join(job.get("dataset_ids", [])) or NONE,
                "reason": job.describe_reason() or NONE,
                "model id": job.get("model_id") or NONE,
            }
        )
    return pd.DataFrame(rows, columns=JOB_COLUMNS)
