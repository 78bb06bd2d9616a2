"""Tests for ppml.servers.api.prometheus: the status collector and its HTTP(S) endpoint."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ppml.proto.deploy.tls import issue_server_cert, make_ca
from ppml.proto.deploy.tokens import Identity, token_hash
from ppml.proto.domain import status as st
from ppml.servers.api.prometheus import (
    MetricsEndpoint,
    StatusCollector,
    make_registry,
    serve_metrics,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _report(**changes: object) -> st.StatusReport:
    report = st.StatusReport(
        rank=0,
        world_size=2,
        version="0.1.0",
        uptime_s=42.5,
        tls=True,
        serving=True,
        mpc_epoch=3,
        last_error="",
        queue_depth=4,
        models_stored=2,
        datasets_stored=5,
        training_jobs={"running": 1, "succeeded": 3},
        heartbeats=17,
        requests_total=12,
        models=[
            st.ModelServing(
                "net-a",
                9,
                3,
                st.Latency(7, 12.5, 30.0, 41.0),
                {"INVALID_ARGUMENT": 2},
            ),
            st.ModelServing("net-b", 3, 0, st.Latency(), {"ABORTED": 3}),
        ],
        batch_sizes={1: 2, 4: 1},
        mpc_cost=[
            st.JobCost("heartbeat", 17, 34, 1024, 0.5),
            st.JobCost("predict", 3, 300, 1 << 33, 2.25),
        ],
        errors={"INVALID_ARGUMENT": 2, "ABORTED": 3},
        name="server-0",
        grpc_address="127.0.0.1:50051",
        links_up=["server-1", "dealer"],
        dealer_connected=True,
    )
    return replace(report, **changes)  # type: ignore[arg-type]


def _parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _scrape(report: st.StatusReport) -> Samples:
    return _parse(generate_latest(make_registry(lambda: report)).decode())


def test_gauges() -> None:
    samples = _scrape(_report())
    assert samples[("ppml_up", ())] == 1
    assert samples[("ppml_mpc_epoch", ())] == 3
    assert samples[("ppml_queue_depth", ())] == 4
    assert samples[("ppml_models_stored", ())] == 2
    assert samples[("ppml_datasets_stored", ())] == 5
    assert samples[("ppml_training_jobs", (("state", "running"),))] == 1
    assert samples[("ppml_training_jobs", (("state", "succeeded"),))] == 3
    assert samples[("ppml_uptime_seconds", ())] == 42.5
    assert samples[("ppml_control_links_up", ())] == 2
    info = (("name", "server-0"), ("rank", "0"), ("version", "0.1.0"))
    assert samples[("ppml_server_info", info)] == 1


def test_not_serving_is_down() -> None:
    assert _scrape(_report(serving=False))[("ppml_up", ())] == 0


def test_requests_by_model_and_code_count_successes() -> None:
    samples = _scrape(_report())
    requests = {k[1]: v for k, v in samples.items() if k[0] == "ppml_requests_total"}
    assert requests == {
        (("code", "OK"), ("model", "net-a")): 7,
        (("code", "INVALID_ARGUMENT"), ("model", "net-a")): 2,
        (("code", "OK"), ("model", "net-b")): 0,
        (("code", "ABORTED"), ("model", "net-b")): 3,
    }


def test_latency_quantiles_only_for_models_with_successes() -> None:
    samples = _scrape(_report())
    latency = {k[1]: v for k, v in samples.items() if k[0] == "ppml_request_latency_ms"}
    assert latency == {
        (("model", "net-a"), ("quantile", "0.5")): 12.5,
        (("model", "net-a"), ("quantile", "0.95")): 30.0,
        (("model", "net-a"), ("quantile", "0.99")): 41.0,
    }


def test_batches_mpc_cost_and_heartbeats() -> None:
    samples = _scrape(_report())
    assert samples[("ppml_batch_jobs_total", (("batch_size", "1"),))] == 2
    assert samples[("ppml_batch_jobs_total", (("batch_size", "4"),))] == 1
    predict = (("kind", "predict"),)
    assert samples[("ppml_mpc_jobs_total", predict)] == 3
    assert samples[("ppml_mpc_rounds_total", predict)] == 300
    assert samples[("ppml_mpc_bytes_total", predict)] == float(1 << 33)
    assert samples[("ppml_mpc_seconds_total", predict)] == 2.25
    assert samples[("ppml_mpc_jobs_total", (("kind", "heartbeat"),))] == 17
    assert samples[("ppml_heartbeats_total", ())] == 17


def test_families_have_the_documented_types() -> None:
    text = generate_latest(make_registry(_report)).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for counter in ("requests", "batch_jobs", "mpc_jobs", "mpc_rounds", "mpc_bytes", "heartbeats"):
        assert types[f"ppml_{counter}"] == "counter"
    assert types["ppml_mpc_seconds"] == "counter"
    for gauge in ("up", "mpc_epoch", "queue_depth", "models_stored", "uptime_seconds"):
        assert types[f"ppml_{gauge}"] == "gauge"


def test_ckks_serving_per_model_and_contexts_per_identity() -> None:
    he = [
        st.HeModelServing("poly", 9, 2, 260, st.Latency(7, 80.5, 410.0, 1200.0), 3 << 30, 40_000),
        st.HeModelServing("(unknown)", 1, 1, 0, st.Latency()),
    ]
    report = _report(he_models=he, he_contexts={"office-1": 2, "client": 1})
    text = generate_latest(make_registry(lambda: report)).decode()
    samples = _parse(text)

    def by_labels(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {k[1]: v for k, v in samples.items() if k[0] == name}

    poly, unknown = (("model", "poly"),), (("model", "(unknown)"),)
    assert by_labels("ppml_he_requests_total") == {poly: 9, unknown: 1}
    assert by_labels("ppml_he_errors_total") == {poly: 2, unknown: 1}
    assert by_labels("ppml_he_images_total") == {poly: 260, unknown: 0}
    assert by_labels("ppml_he_ciphertext_bytes_total") == {
        (("direction", "in"), ("model", "poly")): float(3 << 30),
        (("direction", "out"), ("model", "poly")): 40_000,
        (("direction", "in"), ("model", "(unknown)")): 0,
        (("direction", "out"), ("model", "(unknown)")): 0,
    }
    assert by_labels("ppml_he_latency_ms") == {  # models with successes only
        (("model", "poly"), ("quantile", "0.5")): 80.5,
        (("model", "poly"), ("quantile", "0.95")): 410.0,
        (("model", "poly"), ("quantile", "0.99")): 1200.0,
    }
    assert by_labels("ppml_he_contexts") == {
        (("identity", "client"),): 1,
        (("identity", "office-1"),): 2,
    }
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for counter in ("requests", "errors", "images", "ciphertext_bytes"):
        assert types[f"ppml_he_{counter}"] == "counter"
    assert types["ppml_he_latency_ms"] == types["ppml_he_contexts"] == "gauge"


def test_no_ckks_traffic_gives_empty_families() -> None:
    samples = _scrape(_report())
    assert not [k for k in samples if k[0].startswith("ppml_he_")]


def test_empty_report_still_exposes_the_basics() -> None:
    report = st.StatusReport(0, 2, "", 0.0, False, False, 0, "", 0, 0, 0, 0)
    samples = _scrape(report)
    assert samples[("ppml_up", ())] == 0
    assert samples[("ppml_heartbeats_total", ())] == 0
    assert not [k for k in samples if k[0] == "ppml_requests_total"]


def test_collector_reads_the_report_at_every_scrape() -> None:
    reports = iter([_report(heartbeats=1), _report(heartbeats=2)])
    registry = make_registry(lambda: next(reports))
    assert _parse(generate_latest(registry).decode())[("ppml_heartbeats_total", ())] == 1
    assert _parse(generate_latest(registry).decode())[("ppml_heartbeats_total", ())] == 2


def test_the_global_registry_is_untouched() -> None:
    make_registry(_report)
    collectors = getattr(REGISTRY, "_collector_to_names", {})
    assert not any(isinstance(c, StatusCollector) for c in collectors)


# ---------------------------------------------------------------- endpoint

_TOKENS = {"monitor-token": "monitor", "client-token": "client"}
_TABLE = {token_hash(t): Identity(f"{role}-1", role) for t, role in _TOKENS.items()}


def _get(
    url: str, token: str | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


@pytest.fixture
def plain() -> Iterator[MetricsEndpoint]:
    endpoint = serve_metrics(make_registry(_report), "127.0.0.1", 0, auth=_TABLE)
    yield endpoint
    endpoint.stop()


def test_endpoint_serves_metrics_to_a_token(plain: MetricsEndpoint) -> None:
    status, text = _get(f"http://127.0.0.1:{plain.port}/metrics", "monitor-token")
    assert status == 200
    assert _parse(text)[("ppml_mpc_epoch", ())] == 3


def test_endpoint_rejects_missing_and_unknown_tokens(plain: MetricsEndpoint) -> None:
    url = f"http://127.0.0.1:{plain.port}/metrics"
    assert _get(url)[0] == 401
    assert _get(url, "not-a-token")[0] == 401
    assert _get(url, "client-token")[0] == 200


def test_endpoint_rejects_roles_that_may_not_read_status() -> None:
    table = {token_hash("other"): Identity("x", "other")}
    endpoint = serve_metrics(make_registry(_report), "127.0.0.1", 0, auth=table)
    try:
        assert _get(f"http://127.0.0.1:{endpoint.port}/metrics", "other")[0] == 403
    finally:
        endpoint.stop()


def test_stop_frees_the_port(plain: MetricsEndpoint) -> None:
    port = plain.port
    plain.stop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_tls_endpoint(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    cert = issue_server_cert(ca, tmp_path, "server-0", ["127.0.0.1"])
    endpoint = serve_metrics(make_registry(_report), "127.0.0.1", 0, cert.cert, cert.key, _TABLE)
    url = f"https://127.0.0.1:{endpoint.port}/metrics"
    try:
        # a client that connects and stays silent does not block other scrapes
        with socket.create_connection(("127.0.0.1", endpoint.port)):
            context = ssl.create_default_context(cafile=str(ca.cert))
            status, text = _get(url, "monitor-token", context)
            assert status == 200
            assert _parse(text)[("ppml_up", ())] == 1
        with pytest.raises(urllib.error.URLError):
            _get(url, "monitor-token", ssl.create_default_context())  # unknown CA
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _get(f"http://127.0.0.1:{endpoint.port}/metrics", "monitor-token")
    finally:
        endpoint.stop()
