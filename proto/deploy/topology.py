"""The topology file (``cluster.toml``): parties in rank order, dealer, settings.

One file describes the whole cluster and works on one machine or many: every
process reads the same file and picks its own section by rank. Relative paths
are resolved against the file's folder. A host only needs the key, token and
data paths of the process it runs. Example::

    [cluster]
    name = "local"
    ca_cert = "tls/ca.pem"           # private CA that signed every server cert

    [[parties]]                        # rank 0 first; rank 0 is the leader
    name = "server-0"
    grpc_address = "127.0.0.1:50051"
    mpc_address = "127.0.0.1:29500"    # its MPC listener (mutual TLS; rank 0 dials only)
    tls_cert = "tls/server-0.pem"
    tls_key = "tls/server-0.key"
    data_dir = "data/server-0"
    auth_file = "auth/server-0.toml"  # tokens this server accepts (sha256 only)
    peer_token_file = "secrets/server-0.peer.token"  # its own identity on the leader's link
    metrics_port = 9100                # optional: Prometheus /metrics on the grpc host

    [dealer]                           # not with engine = "replicated" (see ENGINES)
    name = "dealer"
    peer_token_file = "secrets/dealer.peer.token"
    mpc_address = "127.0.0.1:29600"    # every party dials the dealer here (mutual TLS)
    tls_cert = "tls/dealer.pem"
    tls_key = "tls/dealer.key"

    [limits]                           # optional: see LimitsConfig
    max_models_per_identity = 200

    [client]
    token_file = "secrets/client.token"

    [serving]
    max_batch_rows = 64
    max_wait_ms = 5.0
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """The topology file is missing, malformed or inconsistent."""


DEALER_ENGINE = "dealer"
REPLICATED_ENGINE = "replicated"
ENGINES = {
    # N >= 2 servers and a dealer (CrypTen's TTP; two servers also get the fast engine)
    DEALER_ENGINE: "servers and a dealer",
    # exactly 3 servers, no dealer: 2-out-of-3 replicated sharing (ppml.servers.mpc.rep3)
    REPLICATED_ENGINE: "three servers, no dealer",
}


@dataclass(frozen=True)
class PartyConfig:
    rank: int
    name: str
    grpc_address: str
    mpc_address: str
    tls_cert: Path | None
    tls_key: Path | None
    data_dir: Path
    auth_file: Path | None
    metrics_port: int | None = None
    peer_token_file: Path | None = None  # this server's token on its link to the leader
    mpc_bind: str | None = None  # where it listens, if others dial another address (NAT, relay)

    @property
    def grpc_host(self) -> str:
        return self.grpc_address.rsplit(":", 1)[0]

    @property
    def mpc_host_port(self) -> tuple[str, int]:
        host, port = self.mpc_address.rsplit(":", 1)
        return host, int(port)


_NO_DEADLINE_S = 1e15  # above any deadline gRPC reports (it caps them near 1e8 s)


@dataclass(frozen=True)
class ServingConfig:
    max_batch_rows: int = 64
    max_wait_ms: float = 5.0  # dispatch after this long without a new request...
    max_delay_ms: float = 150.0  # ...or once the oldest ready request waited this long
    heartbeat_s: float = 20.0
    # How long a prediction or evaluation may wait for its MPC job: the
    # caller's gRPC deadline, default_timeout_s when it set none, and never
    # more than max_timeout_s (a held request keeps its shares in memory).
    default_timeout_s: float = 30.0
    max_timeout_s: float = 300.0
    # CrypTen's process-group timeout (also bounds joining an epoch): a party
    # waiting this long in one collective fails. Heartbeats (every heartbeat_s)
    # keep idle parties and the dealer well inside it, so an idle cluster
    # stays up indefinitely.
    mpc_timeout_s: float = 120.0
    # the longest frame a process reads from an MPC peer (a longer one ends the session);
    # raise it on every process only for fast-engine bundles of very large models
    mpc_max_frame_mb: int = 4096
    max_rows_per_request: int = 4096
    # request ids are remembered this long (duplicates rejected; memory grows with
    # requests per second times this window, then stays level)
    request_id_window_s: float = 600.0
    # Two-party clusters serve models the fast engine supports (Linear/Conv2d,
    # ReLU, Flatten) with it (servers/mpc/fast/service/party.py); false: CrypTen only.
    # Every party must read the same value (one topology file).
    fast_inference: bool = True
    # bundles kept per (model, batch-size bucket) in use; 0: no pools, every forward asks
    # the dealer inside the job (slower; for comparison)
    fast_pool_bundles: int = 4
    fast_refill_idle_ms: float = 5.0  # refill pools once the worker idled this long
    # torch threads per server and dealer process (intra-op): CrypTen's int64 kernels gain
    # little from more, and the processes of one host compete for its cores
    torch_threads: int = 1
    # training steps ask the dealer for their triples ahead, in one planned message
    # (servers/mpc/core/ttp_plan.py); false: one request at a time, as CrypTen does
    plan_dealer_requests: bool = True

    def wait_s(self, time_remaining: float | None) -> float:
        """How long a request may wait here, given gRPC's ``context.time_remaining()``.

        gRPC reports a call without a deadline as ~2^63 seconds remaining; that
        (or None) gets ``default_timeout_s``. Every result is at most
        ``max_timeout_s`` and at least 0.
        """
        if time_remaining is None or not time_remaining < _NO_DEADLINE_S:
            time_remaining = self.default_timeout_s
        return max(0.0, min(time_remaining, self.max_timeout_s))


@dataclass(frozen=True)
class LimitsConfig:
    """What one client may demand of a server; every server enforces them on its own."""

    max_message_mb: int = 64  # one gRPC message (data sets stream in chunks)
    max_concurrent_rpcs: int = 256  # beyond this a call gets RESOURCE_EXHAUSTED at once
    upload_max_mb: int = 1024  # one data set upload, counted while it streams
    upload_max_s: float = 900.0  # one data set upload stream
    max_models_per_identity: int = 200
    max_datasets_per_identity: int = 200
    max_stored_mb_per_identity: int = 4096  # this server's shares of its models and data sets
    max_queued_jobs_per_identity: int = 4  # training jobs not yet finished
    max_parameters: int = 20_000_000  # per model
    max_activations: int = 1 << 25  # values of the largest layer output at max_batch_rows
    min_batch_size: int = 8  # training: no per-row gradient steps
    max_evaluations: int = 100  # per model and data set, per server
    max_job_events: int = 2000  # kept per job for watchers (the final state always)


@dataclass(frozen=True)
class DealerConfig:
    name: str = "dealer"
    peer_token_file: Path | None = None  # the dealer's token on its link to the leader
    mpc_address: str | None = None  # where the parties' MPC links reach it (it listens there)
    tls_cert: Path | None = None  # its identity on the MPC links (name = ``name``)
    tls_key: Path | None = None
    mpc_bind: str | None = None  # where it listens, if the parties dial another address

    @property
    def mpc_host_port(self) -> tuple[str, int]:
        if self.mpc_address is None:
            raise ConfigError("[dealer] has no mpc_address")
        host, port = self.mpc_address.rsplit(":", 1)
        return host, int(port)


@dataclass(frozen=True)
class ClusterConfig:
    path: Path
    name: str
    ca_cert: Path | None
    parties: tuple[PartyConfig, ...]
    dealer: DealerConfig
    client_token_file: Path | None
    monitor_token_file: Path | None
    serving: ServingConfig = field(default_factory=ServingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    engine: str = DEALER_ENGINE  # [cluster] engine: a key of ENGINES

    @property
    def world_size(self) -> int:
        return len(self.parties)

    @property
    def has_dealer(self) -> bool:
        return self.engine == DEALER_ENGINE

    @property
    def leader_links(self) -> int:
        """Control links the leader waits for: every follower, and the dealer if there is one."""
        return self.world_size if self.has_dealer else self.world_size - 1

    @property
    def dealer_name(self) -> str:
        return self.dealer.name

    def peer_name(self, rank: int) -> str:
        """The identity expected on the leader's link from ``rank`` (world_size: the dealer)."""
        return self.dealer.name if rank == self.world_size else self.party(rank).name

    @property
    def leader(self) -> PartyConfig:
        return self.parties[0]

    def party(self, rank: int) -> PartyConfig:
        if not 0 <= rank < self.world_size:
            raise ConfigError(f"rank {rank} is not in 0..{self.world_size - 1}")
        return self.parties[rank]


def _address(value: object, what: str) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{what} must be 'host:port', got {value!r}")
    host, port = value.rsplit(":", 1)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be 'host:port' with a port in 1..65535, got {value!r}")
    return value


def _optional_address(table: dict[str, object], key: str, where: str) -> str | None:
    return _address(table[key], f"{where}.{key}") if key in table else None


def _path(base: Path, value: object, what: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a path string")
    path = Path(value)
    return path if path.is_absolute() else base / path


_ZERO_ALLOWED = frozenset({"fast_pool_bundles"})  # 0 switches the feature off


def _numbers(raw: dict[str, object], cls: type[T], section: str) -> T:
    """A dataclass of positive numbers (and flags) from a table; int fields stay ints."""
    known = cls.__dataclass_fields__  # type: ignore[attr-defined]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"[{section}] has unknown keys {unknown}; known: {sorted(known)}")
    values: dict[str, float | int | bool] = {}
    for key, value in raw.items():
        if isinstance(getattr(cls(), key), bool):
            if not isinstance(value, bool):
                raise ConfigError(f"[{section}] {key} must be true or false")
            values[key] = value
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"[{section}] {key} must be a positive number")
        if value < 0 or (value == 0 and key not in _ZERO_ALLOWED):
            zero = " or 0" if key in _ZERO_ALLOWED else ""
            raise ConfigError(f"[{section}] {key} must be a positive number{zero}")
        values[key] = int(value) if isinstance(getattr(cls(), key), int) else value
    return cls(**values)


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate a topology file; raises ConfigError naming the problem."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"topology file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    base = path.parent
    cluster = raw.get("cluster", {})
    parties_raw = raw.get("parties")
    if not isinstance(parties_raw, list) or len(parties_raw) < 2:
        raise ConfigError(f"{path}: needs at least two [[parties]] (non-colluding servers)")
    parties = []
    for rank, entry in enumerate(parties_raw):
        where = f"{path}: parties[{rank}]"
        name = entry.get("name", f"server-{rank}")
        data_dir = _path(base, entry.get("data_dir", f"data/{name}"), f"{where}.data_dir")
        assert data_dir is not None
        metrics = entry.get("metrics_port")
        if metrics is not None and (
            not isinstance(metrics, int) or isinstance(metrics, bool) or not 0 < metrics < 65536
        ):
            raise ConfigError(f"{where}.metrics_port must be a port in 1..65535, got {metrics!r}")
        parties.append(
            PartyConfig(
                rank=rank,
                name=name,
                grpc_address=_address(entry.get("grpc_address"), f"{where}.grpc_address"),
                mpc_address=_address(entry.get("mpc_address"), f"{where}.mpc_address"),
                tls_cert=_path(base, entry.get("tls_cert"), f"{where}.tls_cert"),
                tls_key=_path(base, entry.get("tls_key"), f"{where}.tls_key"),
                data_dir=data_dir,
                auth_file=_path(base, entry.get("auth_file"), f"{where}.auth_file"),
                metrics_port=metrics,
                peer_token_file=_path(
                    base, entry.get("peer_token_file"), f"{where}.peer_token_file"
                ),
                mpc_bind=_optional_address(entry, "mpc_bind", where),
            )
        )
    names = [p.name for p in parties]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: party names must be unique, got {names}")
    grpc_addresses = [p.grpc_address for p in parties]
    if len(set(grpc_addresses)) != len(grpc_addresses):
        raise ConfigError(f"{path}: two parties share a grpc_address")
    if "peer_token_file" in cluster:
        raise ConfigError(
            f"{path}: [cluster] peer_token_file is gone: give each [[parties]] entry and the "
            "[dealer] its own peer_token_file (each link to the leader has its own identity)"
        )
    engine = cluster.get("engine", DEALER_ENGINE)
    if engine not in ENGINES:
        known = ", ".join(f"{k!r} ({v})" for k, v in ENGINES.items())
        raise ConfigError(f"{path}: [cluster] engine must be one of {known}; got {engine!r}")
    if engine == REPLICATED_ENGINE and len(parties) != 3:
        raise ConfigError(
            f"{path}: engine = 'replicated' runs on exactly 3 [[parties]]; this file has "
            f"{len(parties)}"
        )
    if engine == REPLICATED_ENGINE and "dealer" in raw:
        raise ConfigError(
            f"{path}: engine = 'replicated' has no dealer; remove the [dealer] section "
            "(three servers make their own randomness from pairwise keys)"
        )
    dealer = raw.get("dealer", {})
    client = raw.get("client", {})
    return ClusterConfig(
        path=path,
        name=str(cluster.get("name", "ppml")),
        ca_cert=_path(base, cluster.get("ca_cert"), "cluster.ca_cert"),
        parties=tuple(parties),
        dealer=DealerConfig(
            name=str(dealer.get("name", "dealer")),
            peer_token_file=_path(base, dealer.get("peer_token_file"), "dealer.peer_token_file"),
            mpc_address=(
                _address(dealer["mpc_address"], "dealer.mpc_address")
                if "mpc_address" in dealer
                else None
            ),
            tls_cert=_path(base, dealer.get("tls_cert"), "dealer.tls_cert"),
            tls_key=_path(base, dealer.get("tls_key"), "dealer.tls_key"),
            mpc_bind=_optional_address(dealer, "mpc_bind", "dealer"),
        ),
        client_token_file=_path(base, client.get("token_file"), "client.token_file"),
        monitor_token_file=_path(
            base, client.get("monitor_token_file"), "client.monitor_token_file"
        ),
        serving=_numbers(raw.get("serving", {}), ServingConfig, "serving"),
        limits=_numbers(raw.get("limits", {}), LimitsConfig, "limits"),
        engine=engine,
    )
