"""A server's status report (public counters and timings only)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Latency:
    count: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0


@dataclass(frozen=True)
class ModelServing:
    model_id: str
    requests: int  # every request, successful or not
    batches: int
    latency: Latency  # successful requests only
    errors: dict[str, int] = field(default_factory=dict)  # gRPC status name -> count

    @property
    def ok(self) -> int:
        """Requests that succeeded."""
        return max(0, self.requests - sum(self.errors.values()))


@dataclass(frozen=True)
class JobCost:
    kind: str
    jobs: int
    rounds: int
    bytes: int
    seconds: float = 0.0


@dataclass(frozen=True)
class FastPool:
    """Fast-engine bundles this server holds ahead of requests, and how they are used."""

    bundles: int = 0  # single-use bundles pooled now, every model and bucket
    images: int = 0  # the images they cover
    bytes: int = 0  # their size
    refilled: int = 0  # bundles added by refill jobs since start
    fill_rate: float = 0.0  # images per second added over the last minute
    hits: int = 0  # fast forwards served from the pool
    misses: int = 0  # fast forwards that asked the dealer on demand


@dataclass(frozen=True)
class HeModelServing:
    """Single-server CKKS inference of one model on this server (ciphertexts only)."""

    model_id: str  # "(unknown)" for requests naming no model stored here
    requests: int  # every request, successful or not
    errors: int  # requests refused or failed
    images: int  # images in successful requests
    latency: Latency  # successful requests only
    bytes_in: int = 0  # ciphertext bytes received in successful requests
    bytes_out: int = 0  # ciphertext bytes returned

    @property
    def ok(self) -> int:
        """Requests that succeeded."""
        return max(0, self.requests - self.errors)


@dataclass(frozen=True)
class StatusReport:
    rank: int
    world_size: int
    version: str
    uptime_s: float
    tls: bool
    serving: bool
    mpc_epoch: int
    last_error: str
    queue_depth: int
    models_stored: int
    heartbeats: int
    requests_total: int
    models: list[ModelServing] = field(default_factory=list)
    batch_sizes: dict[int, int] = field(default_factory=dict)
    mpc_cost: list[JobCost] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    name: str = ""
    grpc_address: str = ""
    # leader: followers and dealer whose control link is up; follower: ["leader"] or []
    links_up: list[str] = field(default_factory=list)
    dealer_connected: bool = False  # leader only
    dealer_requests: dict[str, int] = field(default_factory=dict)  # leader only
    dealer_sessions: int = 0  # leader only
    running_job: str = ""  # kind of the MPC job running now, "" when idle
    datasets_stored: int = 0
    training_jobs: dict[str, int] = field(default_factory=dict)  # state -> jobs
    fast_pool: FastPool = field(default_factory=FastPool)
    he_models: list[HeModelServing] = field(default_factory=list)
    # client identity -> CKKS contexts (public evaluation keys) stored for it
    he_contexts: dict[str, int] = field(default_factory=dict)
