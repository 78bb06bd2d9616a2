"""The dashboard against recorded snapshots (AppTest), its frames, and its fetcher.

Fixtures under ``fixtures/`` were recorded from a real 2-server cluster by
``fixtures/record_snapshots.py``: ``idle.json`` (nothing shared yet),
``traffic.json`` (two models serving) and ``server_down.json`` (server-1 killed).
``training.json`` adds data sets and training jobs in every state to the end of
``traffic.json`` (``fixtures/synthesise_training.py``); ``federations.json`` adds
three federations to it (``fixtures/synthesise_federations.py``).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
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
from ppml.client.deploy.local import free_port
from ppml.dashboard import ckks, federations, frames, history, jobs
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
from ppml.proto import shares
from ppml.proto.domain import federations as fed
from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.domain.jobs import JobInfo, JobState, TrainingSpec
from ppml.proto.domain.status import (
    FastPool,
    HeModelServing,
    JobCost,
    Latency,
    ModelServing,
    StatusReport,
)
from ppml.proto.wire import federations as fed_wire
from ppml.proto.wire import serde
from ppml.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    federation_pb2,
    federation_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

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


@pytest.fixture(scope="module")
def training() -> list[ClusterSnapshot]:
    return load_snapshots(FIXTURES / "training.json")


@pytest.fixture(scope="module")
def federated() -> list[ClusterSnapshot]:
    return load_snapshots(FIXTURES / "federations.json")


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


def test_a_cluster_without_a_dealer_is_all_green(traffic: list[ClusterSnapshot]) -> None:
    """engine = "replicated": no dealer row, no dealer alarm, the servers' state alone."""
    snapshots = [replace(s, dealer="") for s in traffic]
    at = run_app(snapshots)
    table = at.table[0].value
    assert list(table["name"]) == ["server-0", "server-1"]
    assert not at.error
    assert "no dealer" in texts(at.success) and "replicated" in texts(at.success)
    assert at.metric[1].value == "NONE"


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
        "No CKKS predictions yet",
        "No MPC jobs yet",
        "No models shared yet",
        "No datasets yet",
        "No training jobs yet",
        "No federations yet",
    ):
        assert empty in info
    assert not at.get("vega_lite_chart") or all(len(d) for d in charts(at).values())
    assert list(at.table[0].value["name"]) == ["server-0", "server-1", "dealer"]


def test_snapshot_recorded_before_datasets_and_jobs_still_renders() -> None:
    old = json.loads((FIXTURES / "idle.json").read_text())
    for item in old:
        del item["datasets"], item["training_jobs"]
    snapshots = [snapshot_from_json(item) for item in old]
    assert snapshots[0].datasets == () and snapshots[0].training_jobs == ()
    at = run_app(snapshots)
    info = texts(at.info)
    assert "No datasets yet" in info and "No training jobs yet" in info
    assert "No federations yet" in info
    assert not at.dataframe and not at.warning


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_datasets_panel_flags_an_incomplete_share(training: list[ClusterSnapshot]) -> None:
    at = run_app(training)
    table = at.table[-1]
    data = table.value.set_index("id")
    assert list(data.index) == ["digits-train", "digits-val", "mnist-small"]
    assert data.loc["digits-train", "held by"] == "server-0, server-1"
    assert data.loc["mnist-small", "held by"] == "server-0 (incomplete)"
    assert data.loc["mnist-small", "features"] == "1x28x28"
    assert data.loc["digits-train", "rows"] == 1437 and data.loc["digits-val", "rows"] == 360
    assert data.loc["digits-val", "classes"] == 10 and data.loc["digits-val", "owner"] == "alice"
    styles = table.proto.arrow_data.styler.styles  # type: ignore[attr-defined]
    held_by = list(table.value.columns).index("held by")
    assert f"row2_col{held_by}" in styles and f"row0_col{held_by}" not in styles
    assert "No datasets yet" not in texts(at.info)


def test_training_panel_counts_orders_and_explains_jobs(
    training: list[ClusterSnapshot],
) -> None:
    at = run_app(training, refreshes=2)
    counts = {k: _metrics(at)[k] for k in jobs.STATES}
    assert counts == {
        "running": "1",
        "queued": "1",
        "succeeded": "1",
        "failed": "2",
        "cancelled": "1",
    }
    table = at.dataframe[0].value
    assert list(table["id"]) == [
        "digits-mlp-2",  # running
        "digits-wide",  # running on server-0, failed on server-1
        "digits-linear",  # queued
        "digits-sgd-lr1",  # finished, newest first
        "digits-mlp-1",
        "mnist-linear",
    ]
    rows = table.set_index("id")
    assert rows.loc["digits-mlp-2", "state"] == "running"
    assert rows.loc["digits-mlp-2", "progress"] == pytest.approx(46 / 115, abs=1e-4)
    assert rows.loc["digits-mlp-2", "steps"] == "46/115"  # the second refresh
    assert rows.loc["digits-mlp-2", "reveal metrics"] == "yes"
    assert rows.loc["digits-mlp-1", "progress"] == 1.0
    assert rows.loc["digits-mlp-1", "model id"] == "digits-mlp-1-model"
    failed = rows.loc["mnist-linear"]
    assert failed["state"] == "failed" and failed["loss"] == "mse"
    assert failed["reason"] == "NOT_FOUND: data set 'mnist-small' is not stored on server-1"
    assert rows.loc["digits-sgd-lr1", "reason"] == "cancelled by alice"
    assert rows.loc["digits-sgd-lr1", "name"] == frames.NONE
    split = rows.loc["digits-wide"]
    assert split["state"] == "failed (server-0: running, server-1: failed)"
    assert split["reason"] == "server-1: INTERNAL: share store full (disk quota exceeded)"
    assert rows.loc["digits-linear", "batch size"] == 32
    assert rows.loc["digits-linear", "epochs"] == 3
    warning = texts(at.warning)
    assert "digits-wide" in warning and "disagree" in warning and "digits-mlp-2" not in warning
    proto = at.dataframe[0].proto  # type: ignore[attr-defined]
    assert json.loads(proto.columns)["progress"]["type_config"]["type"] == "progress"
    assert "No training jobs yet" not in texts(at.info)


def test_a_server_that_answered_without_a_job_disagrees(
    training: list[ClusterSnapshot],
) -> None:
    snapshot = training[-1]
    only_on_0 = [r for r in snapshot.training_jobs if r["server"] == "server-0"][:1]
    merged = jobs.cluster_jobs(replace(snapshot, training_jobs=tuple(only_on_0)))
    assert [j.states for j in merged] == [{"server-0": "succeeded", "server-1": jobs.ABSENT}]
    assert not merged[0].agreed and merged[0].state == "succeeded"
    down = replace(snapshot.servers[1], health="UNREACHABLE", error="health: UNAVAILABLE: x")
    merged = jobs.cluster_jobs(
        replace(snapshot, servers=(snapshot.servers[0], down), training_jobs=tuple(only_on_0))
    )
    assert merged[0].agreed  # an unreachable server says nothing either way


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


def _table_with(at: AppTest, column: str) -> pd.DataFrame:
    return next(t.value for t in at.table if column in t.value.columns)


def test_federations_panel_shows_rounds_dropouts_and_budget(
    federated: list[ClusterSnapshot],
) -> None:
    at = run_app(federated, refreshes=2)
    table = _table_with(at, "epsilon spent")
    assert list(table["id"]) == ["clinics-dp", "banks-budget", "offices-ckks"]  # running first
    rows = table.set_index("id")
    clinics = rows.loc["clinics-dp"]
    assert (clinics["owner"], clinics["backend"], clinics["state"]) == ("alice", "mpc", "running")
    assert clinics["round"] == "4 of 5"  # the second refresh: 3 rounds closed
    assert clinics["participants"] == "clinic-a, clinic-b, clinic-c" and clinics["min"] == 2
    assert clinics["DP"] == "clip 1, noise multiplier 1.13 (for ε 4), δ 1e-05"
    assert clinics["epsilon spent"] == "2.44 of 4"
    offices = rows.loc["offices-ckks"]
    assert (offices["backend"], offices["state"], offices["round"]) == (
        "ckks",
        "succeeded",
        "2 of 2 closed",
    )
    assert offices["DP"] == "off" and offices["epsilon spent"] == "off"
    banks = rows.loc["banks-budget"]
    assert banks["state"] == "budget_exhausted (server-0: budget_exhausted, server-1: running)"
    assert banks["epsilon spent"] == "0.98 of 1"
    assert "budget 1 would be exceeded" in banks["reason"]
    warning = texts(at.warning)
    assert "banks-budget" in warning and "disagree" in warning and "clinics-dp" not in warning

    drawn = charts(at)
    bars = drawn["participants per round · clinics-dp"]
    counts = {(int(r), k): int(c) for r, k, c in bars[["round", "kind", "count"]].values}
    assert counts[(2, "took part")] == 2 and counts[(2, "dropped")] == 1
    assert counts[(3, "took part")] == 3 and counts[(3, "dropped")] == 0
    epsilon = drawn["epsilon spent vs budget · clinics-dp"]
    assert epsilon["epsilon"].max() == pytest.approx(2.44)
    assert epsilon["budget"].dropna().tolist() == [4.0]  # the budget's rule
    assert "epsilon spent vs budget · offices-ckks" not in drawn  # no DP, no budget
    assert drawn["participants per round · offices-ckks"]["count"].sum() == 4 + 3 + 1
    rounds = _table_with(at, "dropped")  # the first federation's rounds
    assert list(rounds["round"]) == [1, 2, 3]
    assert list(rounds["dropped"]) == [frames.NONE, "clinic-c", frames.NONE]
    assert list(rounds["epsilon"]) == ["1.210", "1.870", "2.440"]
    assert "No client-level DP" in texts(at.caption)
    assert "No federations yet" not in texts(at.info)


def test_federation_records_hold_no_loss_shares(federated: list[ClusterSnapshot]) -> None:
    found = federations.cluster_federations(federated[-1])
    assert {f.federation_id for f in found} == {"clinics-dp", "banks-budget", "offices-ckks"}
    for record in federated[-1].federations:
        keys = set(record) | {k for r in record["results"] for k in r}
        assert not [k for k in keys if "loss" in k or "sum" in k], keys
    assert found[0].budget == 4.0 and found[2].budget is None


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


def test_snapshots_round_trip_through_json(
    traffic: list[ClusterSnapshot],
    training: list[ClusterSnapshot],
    federated: list[ClusterSnapshot],
) -> None:
    recorded = [*traffic, *training, *federated, *load_snapshots(FIXTURES / "server_down.json")]
    for snapshot in recorded:
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


def test_dataset_records_keep_public_metadata_only(training: list[ClusterSnapshot]) -> None:
    table = frames.datasets(training[-1])
    assert list(table.columns) == frames.DATASET_COLUMNS
    assert all("share" not in key for r in training[-1].datasets for key in r)
    for record in training[-1].training_jobs:
        assert "metrics" not in record


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
    assert command[command.index("--server.address") + 1] == "127.0.0.1"  # loopback by default
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


DIGITS = DatasetMeta("digits", "digits", "alice", 1437, (64,), 10, ("*",), "x / 16", 1_000)


class _Datasets(datasets_pb2_grpc.DatasetRegistryServicer):
    def ListDatasets(self, request: Any, context: grpc.ServicerContext) -> Any:
        return datasets_pb2.ListDatasetsResponse(datasets=[serde.dataset_meta_to_proto(DIGITS)])


class _Training(training_pb2_grpc.TrainingServicer):
    def __init__(self, architecture: Any) -> None:
        spec = TrainingSpec(("digits",), 2, 64, 0.1, reveal_metrics=True)
        job = JobInfo("job-1", "model-1", "mlp", "alice", architecture, spec, JobState.RUNNING)
        self.info = serde.job_info_to_proto(job.evolve(steps_total=46, steps_done=3))
        self.info.metrics.add(epoch=1, validation_rows=360)  # what only the owner may see

    def ListJobs(self, request: Any, context: grpc.ServicerContext) -> Any:
        return training_pb2.ListJobsResponse(jobs=[self.info])


class _Federations(federation_pb2_grpc.FederationServicer):
    def __init__(self, architecture: Any) -> None:
        loss = shares.share(shares.encode([0.5]), 2)[0]  # what only the owner may see
        spec = fed.FederationSpec(("a", "b"), 3, min_participants=1)
        result = fed.RoundResult(1, ("a",), ("b",), True, 0.0, loss, loss)
        info = fed.FederationInfo("fl-1", "fl-1-model", "", "alice", architecture, spec)
        self.info = fed_wire.info_to_proto(info.evolve(round=2, results=(result,)))

    def ListFederations(self, request: Any, context: grpc.ServicerContext) -> Any:
        return federation_pb2.ListFederationsResponse(federations=[self.info])


@contextmanager
def _half_cluster(
    tmp_path: Path, traffic: list[ClusterSnapshot], old: bool
) -> Iterator[tuple[Path, _Recorder]]:
    """A topology whose server-0 is a fake in-process server and server-1 is absent.

    An ``old`` server-0 offers neither the dataset registry nor training.
    """
    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[recorder])
    status_pb2_grpc.add_StatusServicer_to_server(_Status(), server)
    models = [serde.model_meta_to_proto(m) for m in traffic[-1].servers[0].models]
    registry_pb2_grpc.add_ModelRegistryServicer_to_server(_Registry(models), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    if not old:
        datasets_pb2_grpc.add_DatasetRegistryServicer_to_server(_Datasets(), server)
        architecture = traffic[-1].servers[0].models[0].architecture
        training_pb2_grpc.add_TrainingServicer_to_server(_Training(architecture), server)
        federation_pb2_grpc.add_FederationServicer_to_server(_Federations(architecture), server)
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
    try:
        yield tmp_path / "cluster.toml", recorder
    finally:
        server.stop(None)


@pytest.fixture
def half_cluster(
    tmp_path: Path, traffic: list[ClusterSnapshot]
) -> Iterator[tuple[Path, _Recorder]]:
    with _half_cluster(tmp_path, traffic, old=False) as cluster:
        yield cluster


@pytest.fixture
def old_half_cluster(
    tmp_path: Path, traffic: list[ClusterSnapshot]
) -> Iterator[tuple[Path, _Recorder]]:
    with _half_cluster(tmp_path, traffic, old=True) as cluster:
        yield cluster


def _fetch(config: Path) -> ClusterSnapshot:
    source = LiveSource(config, insecure=True, timeout=2.0)
    try:
        return source.fetch()
    finally:
        source.close()


def test_fetch_reads_what_it_can_and_never_raises(half_cluster: tuple[Path, _Recorder]) -> None:
    config, recorder = half_cluster
    snapshot = _fetch(config)
    up, down = snapshot.servers
    assert (up.name, up.health, up.error) == ("server-0", "SERVING", "")
    assert up.status is not None and up.status.requests_total == 7
    assert [m.name for m in up.models] == ["mlp-8-4-2", "linear-8-3"]
    assert (down.name, down.health, down.status) == ("server-1", "UNREACHABLE", None)
    assert "UNAVAILABLE" in down.error
    methods = {method for method, _ in recorder.calls}
    # read-only RPCs only
    assert methods == {
        "Check",
        "GetStatus",
        "ListModels",
        "ListDatasets",
        "ListJobs",
        "ListFederations",
    }
    tokens = {token for method, token in recorder.calls if method != "Check"}
    assert tokens == {"Bearer monitor-secret"}
    (dataset,) = snapshot.datasets
    assert dataset["server"] == "server-0" and dataset["dataset_id"] == "digits"
    assert dataset["feature_shape"] == [64] and dataset["rows"] == 1437
    (job,) = snapshot.training_jobs
    assert (job["server"], job["job_id"], job["state"]) == ("server-0", "job-1", "running")
    assert (job["steps_done"], job["steps_total"], job["reveal_metrics"]) == (3, 46, True)
    assert "metrics" not in job  # never kept, even when a server sends some
    (federation,) = snapshot.federations
    assert (federation["server"], federation["federation_id"]) == ("server-0", "fl-1")
    assert federation["results"] == [
        {
            "round": 1,
            "participants": ["a"],
            "dropped": ["b"],
            "applied": True,
            "epsilon": 0.0,
            "closed_unix_ms": 0,
            "reason": "",
        }
    ]  # no loss shares, though the server sent the owner's view
    assert snapshot_from_json(json.loads(json.dumps(snapshot_to_json(snapshot)))) == snapshot


def test_fetch_from_an_older_server_leaves_datasets_and_jobs_empty(
    old_half_cluster: tuple[Path, _Recorder],
) -> None:
    config, _ = old_half_cluster
    snapshot = _fetch(config)
    up = snapshot.servers[0]
    assert up.health == "SERVING" and up.status is not None and len(up.models) == 2
    assert snapshot.datasets == () and snapshot.training_jobs == () and not snapshot.federations
    assert "datasets: UNIMPLEMENTED" in up.error and "jobs: UNIMPLEMENTED" in up.error
    assert "federations: UNIMPLEMENTED" in up.error
    assert up.answered("models") and not up.answered("datasets")
    at = run_app([snapshot])
    assert "UNIMPLEMENTED" in texts(at.warning)
    assert "No datasets yet" in texts(at.info) and "No training jobs yet" in texts(at.info)
    assert "No federations yet" in texts(at.info)


def test_fast_engine_pools_are_shown_per_server() -> None:
    pooled = FastPool(bundles=5, images=40, bytes=2_500_000, refilled=9, fill_rate=1.5, hits=30,
                      misses=10)  # fmt: skip
    cost = [JobCost("predict", 2, 40, 4096, 0.5)]
    servers = [
        ServerSnapshot(f"server-{r}", r, f"a:{r}", "SERVING",
                       _report(r, fast_pool=pooled, mpc_cost=cost))
        for r in (0, 1)
    ]  # fmt: skip
    at = run_app([_snapshot(1.0, servers)])
    table = _table_with(at, "fill rate (img/s)")
    assert list(table["server"]) == ["server-0", "server-1"]
    row = table.iloc[0]
    assert (row["bundles"], row["images"], row["MB"]) == (5, 40, 2.5)
    assert (row["fill rate (img/s)"], row["hits"], row["misses"]) == (1.5, 30, 10)
    assert row["hit rate"] == "75 %"
    idle = [ServerSnapshot("server-0", 0, "a:1", "SERVING", _report(0, mpc_cost=cost))]
    at = run_app([_snapshot(1.0, idle)])
    assert "No fast-engine bundle pools in use." in texts(at.caption)


def test_ckks_inference_per_model_and_contexts_per_identity() -> None:
    poly = HeModelServing("he-poly", 9, 2, 250, Latency(7, 80.0, 410.0, 1200.0), 60_000_000,
                          2_500_000)  # fmt: skip
    unknown = HeModelServing("(unknown)", 1, 1, 0, Latency())
    leader = _report(0, he_models=[poly, unknown], he_contexts={"office-1": 2, "client": 1})
    servers = [
        ServerSnapshot("server-0", 0, "a:0", "SERVING", leader),
        ServerSnapshot("server-1", 1, "a:1", "SERVING", _report(1)),
        ServerSnapshot("server-2", 2, "a:2", "DOWN"),
    ]
    snapshot = _snapshot(1.0, servers)

    models = ckks.he_models(snapshot)
    assert list(models["model id"]) == ["he-poly", "(unknown)"]
    row = models.iloc[0]
    assert (row["server"], row["requests"], row["errors"], row["images"]) == ("server-0", 9, 2, 250)
    assert (row["p50 ms"], row["p95 ms"], row["p99 ms"]) == (80.0, 410.0, 1200.0)
    assert (row["MB in"], row["MB out"], row["KB/image"]) == (60.0, 2.5, 250.0)
    assert models.iloc[1]["KB/image"] == 0.0  # no images: no division by zero
    contexts = ckks.he_contexts(snapshot)
    assert contexts.to_dict("records") == [
        {"server": "server-0", "identity": "client", "contexts": 1},
        {"server": "server-0", "identity": "office-1", "contexts": 2},
    ]

    at = run_app([snapshot])
    assert list(_table_with(at, "KB/image")["model id"]) == ["he-poly", "(unknown)"]
    assert list(_table_with(at, "identity")["contexts"]) == [1, 2]
    assert "No CKKS predictions yet" not in texts(at.info)


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
