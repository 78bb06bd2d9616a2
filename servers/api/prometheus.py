"""Prometheus metrics of one compute server, on an optional port.

When a party's section of the topology file has ``metrics_port``, the server
serves the Prometheus text format at ``/metrics`` on that port, bound to the
host of its ``grpc_address``. With TLS on (the default) the endpoint is HTTPS
with the server's own certificate, so a scraper needs the cluster's CA
(Prometheus: ``scheme: https`` and ``tls_config: {ca_file: tls/ca.pem}``);
under ``--insecure`` it is plain HTTP. When the server has an ``auth_file``,
a scrape needs the same bearer token as the ``Status`` RPC (``monitor``,
``client`` or ``peer``; Prometheus: ``authorization: {credentials_file:
secrets/monitor.token}``), else it gets 401/403.

One collector, registered on a private registry (not the global one), turns
:meth:`ComputeServer.report` into metric families at scrape time, so the
endpoint and the ``Status`` RPC always agree. Families::

    ppml_up                      gauge    1 while the MPC session is up (SERVING), else 0
    ppml_server_info             gauge    1, labels name, rank, version
    ppml_mpc_epoch               gauge
    ppml_queue_depth             gauge
    ppml_models_stored           gauge
    ppml_datasets_stored         gauge
    ppml_training_jobs           gauge    state (queued, running, succeeded, failed, cancelled)
    ppml_uptime_seconds          gauge
    ppml_control_links_up        gauge
    ppml_requests_total          counter  model, code ("OK" or the gRPC status name)
    ppml_request_latency_ms      gauge    model, quantile (0.5 / 0.95 / 0.99) over the
                                          last 4096 successful requests of that model
    ppml_batch_jobs_total        counter  batch_size (requests per MPC job)
    ppml_mpc_jobs_total          counter  kind (predict, heartbeat)
    ppml_mpc_rounds_total        counter  kind
    ppml_mpc_bytes_total         counter  kind
    ppml_mpc_seconds_total       counter  kind
    ppml_heartbeats_total        counter
    ppml_fast_pool_bundles       gauge    fast-engine bundles pooled now (and _images, _bytes)
    ppml_fast_pool_fill_rate     gauge    images per second added to the pools, last minute
    ppml_fast_refilled_total     counter  bundles added by refill jobs
    ppml_fast_forwards_total     counter  source ("pool" or "dealer": asked on demand)
    ppml_he_requests_total       counter  model: CKKS predict requests, successful or not
    ppml_he_errors_total         counter  model: CKKS predict requests refused or failed
    ppml_he_images_total         counter  model: images in successful CKKS requests
    ppml_he_ciphertext_bytes_total  counter  model, direction ("in" or "out")
    ppml_he_latency_ms           gauge    model, quantile (0.5 / 0.95 / 0.99) over the
                                          last 4096 successful CKKS requests of that model
    ppml_he_contexts             gauge    identity: CKKS contexts (public evaluation
                                          keys, one per parameter set) stored for it

Labels are ids, names and codes only, never values derived from secrets.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ppml.proto.deploy.tokens import Identity
from ppml.proto.domain.status import StatusReport
from ppml.servers.api.auth import identify, required_roles

log = logging.getLogger(__name__)

_QUANTILES = (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms"))
_HANDSHAKE_TIMEOUT_S = 10.0
_ROLES = required_roles("/ppml.v1.Status/GetStatus") or ()


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def status_metrics(report: StatusReport) -> list[Metric]:
    """The metric families of one status report (a pure function of it)."""
    info = GaugeMetricFamily(
        "ppml_server_info", "1, labelled with this party", labels=["name", "rank", "version"]
    )
    info.add_metric([report.name, str(report.rank), report.version], 1)
    families: list[Metric] = [
        _gauge("ppml_up", "1 while this party's MPC session is up (SERVING)", int(report.serving)),
        info,
        _gauge("ppml_mpc_epoch", "Current MPC epoch (0 before the first)", report.mpc_epoch),
        _gauge("ppml_queue_depth", "Requests waiting for an MPC job", report.queue_depth),
        _gauge("ppml_models_stored", "Models this server holds shares of", report.models_stored),
        _gauge(
            "ppml_datasets_stored", "Data sets this server holds shares of", report.datasets_stored
        ),
        _gauge("ppml_uptime_seconds", "Seconds since the server started", report.uptime_s),
        _gauge("ppml_control_links_up", "Control links that are up", len(report.links_up)),
    ]

    requests = CounterMetricFamily(
        "ppml_requests_total", "Predict requests by model and gRPC status", labels=["model", "code"]
    )
    latency = GaugeMetricFamily(
        "ppml_request_latency_ms",
        "Latency of recent successful predict requests (ms)",
        labels=["model", "quantile"],
    )
    for model in report.models:
        requests.add_metric([model.model_id, "OK"], model.ok)
        for code, count in sorted(model.errors.items()):
            requests.add_metric([model.model_id, code], count)
        if model.latency.count:
            for quantile, attr in _QUANTILES:
                latency.add_metric([model.model_id, quantile], getattr(model.latency, attr))
    families += [requests, latency]

    batches = CounterMetricFamily(
        "ppml_batch_jobs_total", "Predict MPC jobs by requests per job", labels=["batch_size"]
    )
    for size, jobs in sorted(report.batch_sizes.items()):
        batches.add_metric([str(size)], jobs)
    families.append(batches)

    costs = {
        "jobs": CounterMetricFamily("ppml_mpc_jobs_total", "MPC jobs run", labels=["kind"]),
        "rounds": CounterMetricFamily(
            "ppml_mpc_rounds_total", "Communication rounds of this party", labels=["kind"]
        ),
        "bytes": CounterMetricFamily(
            "ppml_mpc_bytes_total", "Bytes sent by this party in MPC", labels=["kind"]
        ),
        "seconds": CounterMetricFamily(
            "ppml_mpc_seconds_total", "Wall time spent running MPC jobs", labels=["kind"]
        ),
    }
    for cost in report.mpc_cost:
        for attr, family in costs.items():
            family.add_metric([cost.kind], getattr(cost, attr))
    families += costs.values()

    families.append(
        CounterMetricFamily(
            "ppml_heartbeats_total", "Heartbeat jobs run while idle", value=report.heartbeats
        )
    )
    training = GaugeMetricFamily("ppml_training_jobs", "Training jobs by state", labels=["state"])
    for state, count in sorted(report.training_jobs.items()):
        training.add_metric([state], count)
    families.append(training)
    return families + _fast_pool_metrics(report) + _he_metrics(report)


def _fast_pool_metrics(report: StatusReport) -> list[Metric]:
    pool = report.fast_pool
    forwards = CounterMetricFamily(
        "ppml_fast_forwards_total", "Fast-engine forwards by bundle source", labels=["source"]
    )
    forwards.add_metric(["pool"], pool.hits)
    forwards.add_metric(["dealer"], pool.misses)
    return [
        _gauge("ppml_fast_pool_bundles", "Fast-engine bundles pooled now", pool.bundles),
        _gauge("ppml_fast_pool_images", "Images the pooled bundles cover", pool.images),
        _gauge("ppml_fast_pool_bytes", "Bytes of pooled bundles", pool.bytes),
        _gauge(
            "ppml_fast_pool_fill_rate", "Images per second added to the pools", pool.fill_rate
        ),
        CounterMetricFamily(
            "ppml_fast_refilled_total", "Bundles added by refill jobs", value=pool.refilled
        ),
        forwards,
    ]


def _he_metrics(report: StatusReport) -> list[Metric]:
    """Single-server CKKS inference: per model, and the stored contexts per identity."""
    requests = CounterMetricFamily(
        "ppml_he_requests_total", "CKKS predict requests by model", labels=["model"]
    )
    errors = CounterMetricFamily(
        "ppml_he_errors_total", "CKKS predict requests refused or failed", labels=["model"]
    )
    images = CounterMetricFamily(
        "ppml_he_images_total", "Images in successful CKKS predict requests", labels=["model"]
    )
    traffic = CounterMetricFamily(
        "ppml_he_ciphertext_bytes_total",
        "Ciphertext bytes of successful CKKS predict requests",
        labels=["model", "direction"],
    )
    latency = GaugeMetricFamily(
        "ppml_he_latency_ms",
        "Latency of recent successful CKKS predict requests (ms)",
        labels=["model", "quantile"],
    )
    for model in report.he_models:
        requests.add_metric([model.model_id], model.requests)
        errors.add_metric([model.model_id], model.errors)
        images.add_metric([model.model_id], model.images)
        traffic.add_metric([model.model_id, "in"], model.bytes_in)
        traffic.add_metric([model.model_id, "out"], model.bytes_out)
        if model.latency.count:
            for quantile, attr in _QUANTILES:
                latency.add_metric([model.model_id, quantile], getattr(model.latency, attr))
    contexts = GaugeMetricFamily(
        "ppml_he_contexts", "CKKS contexts stored per client identity", labels=["identity"]
    )
    for identity, count in sorted(report.he_contexts.items()):
        contexts.add_metric([identity], count)
    return [requests, errors, images, traffic, latency, contexts]


class StatusCollector(Collector):
    """Reads ``report()`` at every scrape; never caches."""

    def __init__(self, report: Callable[[], StatusReport]) -> None:
        self._report = report

    def collect(self) -> Iterable[Metric]:
        return status_metrics(self._report())


def make_registry(report: Callable[[], StatusReport]) -> CollectorRegistry:
    """A private registry (not the global one) holding one :class:`StatusCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(report))
    return registry


# ---------------------------------------------------------------- HTTP(S) endpoint


def _with_auth(app: WSGIApplication, table: dict[str, Identity]) -> WSGIApplication:
    """Answer 401/403 unless the request bears a token allowed to read status."""

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        identity = identify(table, str(environ.get("HTTP_AUTHORIZATION", "")))
        if identity is None or identity.role not in _ROLES:
            status = "401 Unauthorized" if identity is None else "403 Forbidden"
            headers = [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")]
            start_response(status, headers)
            return [status.encode() + b"\n"]
        return app(environ, start_response)

    return guarded


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    """Threaded WSGI server; with TLS, each handshake runs in its connection's thread.

    (``prometheus_client.start_http_server`` wraps the listening socket, so one
    client that connects and stays silent would stall the accept loop.)
    """

    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_HANDSHAKE_TIMEOUT_S)
        with self.tls.wrap_socket(request, server_side=True) as conn:
            super().finish_request(conn, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics request from %s failed", client_address, exc_info=True)


class MetricsEndpoint:
    """A running ``/metrics`` server; :meth:`stop` closes it."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def stop(self) -> None:
        """Stop serving and close the port (idempotent)."""
        if not self._thread.is_alive():
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    auth: dict[str, Identity] | None = None,
) -> MetricsEndpoint:
    """Serve ``registry`` on ``host:port`` (port 0 picks one).

    HTTPS when ``tls_cert`` and ``tls_key`` are given; bearer tokens checked
    against ``auth`` (token hash -> identity) unless it is None.
    """
    host = host.strip("[]")
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("_BoundServer", (_Server,), {"address_family": family})
    app = make_wsgi_app(registry)
    if auth is not None:
        app = _with_auth(app, auth)
    server: _Server = make_server(host, port, app, server_class, _QuietHandler)
    if tls_cert is not None and tls_key is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls_cert, tls_key)
        server.tls = context
    return MetricsEndpoint(server)
