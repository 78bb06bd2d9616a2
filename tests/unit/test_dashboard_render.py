"""The dashboard against recorded snapshots (AppTest), its frames, and its fetcher.

Fixtures under ``fixtures/`` were recorded from a real 2-server cluster by
``fixtures/record_snapshots.py``: ``idle.json`` (nothing shared yet),
``traffic.json`` (two models serving) and ``server_down.json`` (server-1 killed).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pyarrow as pa
import pytest
from grpc_health.v1 import health, health_pb2_grpc
from streamlit.testing.v1 import AppTest

from ppml.client import cli
from ppml.dashboard import frames, history
from ppml.dashboard.app import SOURCE_KEY, parse_args
from ppml.dashboard.data import (
    ClusterSnapshot,
    LiveSource,
    ReplaySource,
    ServerSnapshot,
    load_snapshots,
    snapshot_from_json,
    snapshot_to_json,
)
from ppml.dashboard.render import escape_markdown
from ppml.proto import serde
from ppml.proto.status import JobCost, Latency, ModelServing, StatusReport
from ppml.servers.local import free_port
from ppml.v1 import registry_pb2, registry_pb2_grpc, status_pb2, status_pb2_grpc

FIXTURES = Path(__file__).parent / "fixtures"
APP = Path(__file__).parents[2] / "dashboard" / "app.py"


def run_app(snapshots: list[ClusterSnapshot], refreshes: int = 1) -> AppTest:
    """Run the real app script ``refreshes`` times on a replay of ``snapshots``."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state[SOURCE_KEY] = ReplaySource(snapshots)
    for _ in range(refreshes):
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, pd.DataFrame]:
    """Every Altair chart on the page: its title -> the data it was given."""
    found = {}
    for element in at.get("vega_lite_chart"):
        proto = element.proto  # type: ignore[attr-defined]
        spec = json.loads(proto.spec)
        title = spec.get("title", {})
        title = title.get("text", "") if isinstance(title, dict) else title
        tables = [pa.ipc.open_stream(io.BytesIO(d.data.data)).read_all() for d in proto.datasets]
        found[title] = pd.concat([t.to_pandas() for t in tables]) if tables else pd.DataFrame()
    return found


def texts(elements: Any) -> str:
    return "\n".join(str(e.value) for e in elements)


@pytest.fixture(scope="module")
def traffic() -> list[ClusterSnapshot]:
    return load_snapshots(FIXTURES / "traffic.json")


# ---------------------------------------------------------------- the page


def test_overview_lists_every_server_and_the_dealer(traffic: list[ClusterSnapshot]) -> None:
    at = run_app(traffic)
    table = at.table[0].value
    assert list(table["name"]) == ["server-0", "server-1", "dealer"]
    assert list(table["health"]) == ["SERVING", "SERVING", "CONNECTED"]
    assert list(table["TLS"][:2]) == ["on", "on"]
    assert table["address"][0] == traffic[-1].servers[0].address
    assert not at.error
    assert "All 2 compute servers and the dealer are up" in texts(at.success)


def test_down_server_is_named_and_red() -> None:
    at = run_app(load_snapshots(FIXTURES / "server_down.json"), refreshes=2)
    errors = texts(at.error)
    assert "server-1" in errors and "DOWN" in errors and "unreachable" in errors
    assert "server-0" not in errors
    table = at.table[0]
    rows = table.value
    assert rows.loc[rows["name"] == "server-1", "health"].item() == "DOWN (unreachable)"
    assert rows.loc[rows["name"] == "server-0", "health"].item() == "SERVING"
    styles = table.proto.arrow_data.styler.styles  # type: ignore[attr-defined]
    assert "row1_col0" in styles and "#fde0e0" in styles and "row0_col0" not in styles
    assert not at.success
    assert at.metric[0].value == "1/2"


def test_charts_get_data(traffic: list[ClusterSnapshot]) -> None:
    at = run_app(traffic, refreshes=len(traffic))
    drawn = charts(at)
    rates = drawn["requests/s"]
    assert set(rates["server"]) == {"server-0", "server-1"}
    assert rates["rps"].max() > 0
    assert {"p50", "p95", "p99"} <= set(drawn["latency (ms, recent requests)"]["quantile"])
    sizes = drawn["batch-size distribution (requests per MPC job)"]
    assert sizes["jobs"].sum() > 0
    assert drawn["bytes per job kind"]["bytes"].min() > 0
    assert drawn["rounds per job kind"]["rounds"].min() > 0
    assert drawn["MPC traffic (bytes/s)"]["bytes_per_s"].max() > 0
    assert len(drawn["queue depth (requests waiting for their batch)"]) == 2 * len(traffic)
    models = at.table[1].value
    assert set(models["model"]) == {"mlp-8-4-2", "linear-8-3"}
    assert (models["requests"] > 0).all()
    registry = at.table[-1].value
    assert list(registry["architecture"]) == ["Linear(8→4) → ReLU → Linear(4→2)", "Linear(8→3)"]
    assert "No training jobs yet." in texts(at.info)


def test_zero_traffic_shows_empty_states() -> None:
    at = run_app(load_snapshots(FIXTURES / "idle.json"), refreshes=2)
    info = texts(at.info)
    for empty in (
        "No predictions yet",
        "No MPC jobs yet",
        "No models shared yet",
        "No datasets yet",
        "No training jobs yet",
    ):
        assert empty in info
    assert not at.get("vega_lite_chart") or all(len(d) for d in charts(at).values())
    assert list(at.table[0].value["name"]) == ["server-0", "server-1", "dealer"]


def _report(rank: int, **changes: Any) -> StatusReport:
    base = StatusReport(
        rank=rank,
        world_size=2,
        version="0.1.0",
        uptime_s=60.0,
        tls=True,
        serving=True,
        mpc_epoch=1,
        last_error="",
        queue_depth=0,
        models_stored=0,
        heartbeats=0,
        requests_total=0,
        name=f"server-{rank}",
    )
    return replace(base, **changes)


def _snapshot(taken_at: float, servers: list[ServerSnapshot]) -> ClusterSnapshot:
    return ClusterSnapshot("test", "dealer", taken_at, tuple(servers))


def test_unreachable_leader_and_failed_requests() -> None:
    failing = ModelServing("m1", 5, 2, Latency(3, 10.0, 20.0, 30.0), {"ABORTED": 2})
    follower = _report(
        1,
        serving=False,
        last_error="MPC session restarting",
        requests_total=5,
        models=[failing],
        errors={"ABORTED": 2},
        mpc_cost=[JobCost("predict", 2, 40, 4096, 0.5)],
    )
    leader = ServerSnapshot("server-0", 0, "10.0.0.1:50051", "UNREACHABLE", error="timeout")
    snapshot = _snapshot(
        100.0, [leader, ServerSnapshot("server-1", 1, "10.0.0.2:50051", "NOT_SERVING", follower)]
    )
    at = run_app([snapshot])
    assert "server-0" in texts(at.error)
    assert "server-1" in texts(at.warning) and "NOT_SERVING" in texts(at.warning)
    overview = at.table[0].value
    assert overview.loc[overview["name"] == "dealer", "health"].item() == "UNKNOWN"
    assert charts(at)["failed requests by gRPC status"]["requests"].sum() == 2
    assert at.table[1].value["errors"].item() == "ABORTED: 2"


# ---------------------------------------------------------------- frames and history


def test_rates_come_from_counter_deltas_and_survive_restarts() -> None:
    def snap(t: float, requests: int) -> ClusterSnapshot:
        models = [ModelServing("m", requests, requests, Latency())]
        report = _report(0, requests_total=requests, models=models)
        return _snapshot(t, [ServerSnapshot("server-0", 0, "a:1", "SERVING", report)])

    past = [snap(0.0, 0), snap(2.0, 10), snap(4.0, 14), snap(6.0, 3)]  # restart before t=6
    rates = history.request_rates(past)
    assert list(rates["rps"]) == [5.0, 2.0, 1.5]
    assert history.counter_delta(14, 3) == 3
    assert history.recent_rates(past)[("server-0", "m")] == pytest.approx(0.5)


def test_history_is_rolling_and_monotonic() -> None:
    past = history.History(max_age_s=10)
    for t in (0.0, 5.0, 5.0, 12.0, 3.0):
        past.add(_snapshot(t, []))
    assert [s.taken_at for s in past.snapshots] == [5.0, 12.0]


def test_snapshots_round_trip_through_json(traffic: list[ClusterSnapshot]) -> None:
    for snapshot in [*traffic, *load_snapshots(FIXTURES / "server_down.json")]:
        assert snapshot_from_json(json.loads(json.dumps(snapshot_to_json(snapshot)))) == snapshot


def test_registry_shows_public_metadata_only(traffic: list[ClusterSnapshot]) -> None:
    table = frames.registry(traffic[-1])
    assert set(table.columns) == {
        "id",
        "name",
        "owner",
        "architecture",
        "input",
        "output",
        "parameters",
        "created (UTC)",
        "held by",
    }
    assert list(table["held by"]) == ["server-0, server-1"] * 2


def test_free_text_cannot_inject_markdown() -> None:
    assert escape_markdown("[x](http://evil) :red[y] *z*") == (
        "\\[x\\](http://evil) \\:red\\[y\\] \\*z\\*"
    )
    assert escape_markdown("- item") == "\\- item"
    assert escape_markdown("ABORTED: 2, server-0") == "ABORTED: 2, server-0"


def test_parse_args_ignores_foreign_arguments() -> None:
    args = parse_args(["-q", "tests/x.py", "--config", "c.toml", "--refresh", "5"])
    assert args.config == "c.toml" and args.refresh == 5 and not args.insecure


def test_cli_runs_streamlit_on_the_app(tmp_path: Path) -> None:
    command = cli.dashboard_command(str(tmp_path / "cluster.toml"), 8600)
    assert command[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(command[4]) == APP.resolve()
    assert command[command.index("--server.port") + 1] == "8600"
    assert command[command.index("--") + 1 :] == ["--config", str(tmp_path / "cluster.toml")]


# ---------------------------------------------------------------- fetching


class _Recorder(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        metadata = dict(details.invocation_metadata or ())
        self.calls.append((details.method.rsplit("/", 1)[-1], str(metadata.get("authorization"))))
        return continuation(details)


class _Status(status_pb2_grpc.StatusServicer):
    def GetStatus(self, request: Any, context: grpc.ServicerContext) -> status_pb2.ServerStatus:
        return serde.status_to_proto(_report(0, requests_total=7))


class _Registry(registry_pb2_grpc.ModelRegistryServicer):
    def __init__(self, models: list[registry_pb2.ModelInfo]) -> None:
        self.models = models

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        return registry_pb2.ListModelsResponse(models=self.models)


@pytest.fixture
def half_cluster(
    tmp_path: Path, traffic: list[ClusterSnapshot]
) -> Iterator[tuple[Path, _Recorder]]:
    """A topology whose server-0 is a fake in-process server and server-1 is absent."""
    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[recorder])
    status_pb2_grpc.add_StatusServicer_to_server(_Status(), server)
    models = [serde.model_meta_to_proto(m) for m in traffic[-1].servers[0].models]
    registry_pb2_grpc.add_ModelRegistryServicer_to_server(_Registry(models), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    closed = free_port()  # nothing listens there
    (tmp_path / "monitor.token").write_text("monitor-secret\n")
    (tmp_path / "cluster.toml").write_text(
        f"""
[[parties]]
name = "server-0"
grpc_address = "127.0.0.1:{port}"
mpc_address = "127.0.0.1:1"
[[parties]]
name = "server-1"
grpc_address = "127.0.0.1:{closed}"
mpc_address = "127.0.0.1:2"
[client]
monitor_token_file = "monitor.token"
"""
    )
    yield tmp_path / "cluster.toml", recorder
    server.stop(None)


def test_fetch_reads_what_it_can_and_never_raises(half_cluster: tuple[Path, _Recorder]) -> None:
    config, recorder = half_cluster
    source = LiveSource(config, insecure=True, timeout=2.0)
    try:
        snapshot = source.fetch()
    finally:
        source.close()
    up, down = snapshot.servers
    assert (up.name, up.health, up.error) == ("server-0", "SERVING", "")
    assert up.status is not None and up.status.requests_total == 7
    assert [m.name for m in up.models] == ["mlp-8-4-2", "linear-8-3"]
    assert (down.name, down.health, down.status) == ("server-1", "UNREACHABLE", None)
    assert "UNAVAILABLE" in down.error
    methods = {method for method, _ in recorder.calls}
    assert methods == {"Check", "GetStatus", "ListModels"}  # read-only RPCs only
    tokens = {token for method, token in recorder.calls if method != "Check"}
    assert tokens == {"Bearer monitor-secret"}


def test_dealer_requests_are_charted() -> None:
    leader = _report(
        0,
        dealer_connected=True,
        dealer_requests={"additive": 12, "wraps": 3},
        mpc_cost=[JobCost("predict", 2, 40, 4096, 0.5)],
    )
    snapshot = _snapshot(1.0, [ServerSnapshot("server-0", 0, "a:1", "SERVING", leader)])
    at = run_app([snapshot])
    data = charts(at)["dealer requests by kind"]
    assert dict(zip(data["kind"], data["requests"], strict=True)) == {"additive": 12, "wraps": 3}
