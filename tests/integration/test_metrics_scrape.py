"""Prometheus endpoint and status fields of real servers after real traffic (MPC and CKKS)."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
import uuid

import grpc
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.proto import shares
from ppml.proto.deploy.channels import client_channel
from ppml.proto.deploy.topology import PartyConfig
from ppml.proto.wire import serde
from ppml.training.poly_cnn import IMAGE_SHAPE, poly_cnn
from ppml.v1 import inference_pb2, inference_pb2_grpc

OK_REQUESTS = 7
BAD_REQUESTS = 2

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _send_wrong_shape(local: LocalCluster, model_id: str) -> None:
    """One request per server whose share has 63 columns instead of 64."""
    config = local.config
    token = (local.directory / "secrets" / "client.token").read_text().strip()
    request_id = uuid.uuid4().hex
    for party in config.parties:
        channel = client_channel(party.grpc_address, config.ca_cert)
        try:
            request = inference_pb2.PredictRequest(
                request_id=request_id,
                model_id=model_id,
                input=serde.share_to_proto(shares.random_ring((1, 63))),
            )
            with pytest.raises(grpc.RpcError) as info:
                inference_pb2_grpc.InferenceStub(channel).Predict(
                    request, timeout=10, metadata=(("authorization", f"Bearer {token}"),)
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            channel.close()


@pytest.fixture(scope="module")
def model_id(local2: LocalCluster, cluster2: Cluster, mlp: torch.nn.Module) -> str:
    model_id = cluster2.share_model(mlp, torch.zeros(1, 64), name="metrics")
    x = torch.linspace(-0.5, 0.5, 64).reshape(1, 64)
    for _ in range(OK_REQUESTS):
        cluster2.predict(model_id, x)
    for _ in range(BAD_REQUESTS):
        _send_wrong_shape(local2, model_id)
    return model_id


def _scrape(local: LocalCluster, party: PartyConfig, token: str | None) -> tuple[int, str]:
    assert party.metrics_port is not None
    context = ssl.create_default_context(cafile=str(local.config.ca_cert))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(
        f"https://{party.grpc_host}:{party.metrics_port}/metrics", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _monitor_token(local: LocalCluster) -> str:
    return (local.directory / "secrets" / "monitor.token").read_text().strip()


def test_every_server_counts_successes_and_errors(local2: LocalCluster, model_id: str) -> None:
    for party in local2.config.parties:
        status, text = _scrape(local2, party, _monitor_token(local2))
        assert status == 200, party.name
        samples = _samples(text)
        ok = ("ppml_requests_total", (("code", "OK"), ("model", model_id)))
        bad = ("ppml_requests_total", (("code", "INVALID_ARGUMENT"), ("model", model_id)))
        assert samples[ok] == OK_REQUESTS, party.name
        assert samples[bad] == BAD_REQUESTS, party.name
        assert samples[("ppml_up", ())] == 1
        info = (("name", party.name), ("rank", str(party.rank)))
        assert any(k[0] == "ppml_server_info" and set(info) <= set(k[1]) for k in samples)
        p50 = ("ppml_request_latency_ms", (("model", model_id), ("quantile", "0.5")))
        assert samples[p50] > 0
        assert samples[("ppml_mpc_jobs_total", (("kind", "predict"),))] >= 1


def test_scrape_needs_a_token(local2: LocalCluster) -> None:
    party = local2.config.parties[0]
    assert _scrape(local2, party, None)[0] == 401
    assert _scrape(local2, party, "not-a-token")[0] == 401


def test_status_names_links_and_per_model_errors(
    local2: LocalCluster, cluster2: Cluster, model_id: str
) -> None:
    leader, follower = cluster2.status()
    parties = local2.config.parties
    assert (leader.name, leader.grpc_address) == (parties[0].name, parties[0].grpc_address)
    assert (follower.name, follower.grpc_address) == (parties[1].name, parties[1].grpc_address)
    assert {"server-1", "dealer"} <= set(leader.links_up)
    assert leader.dealer_connected
    assert follower.links_up == ["leader"]
    assert not follower.dealer_connected
    for report in (leader, follower):
        (serving,) = [m for m in report.models if m.model_id == model_id]
        assert serving.requests == OK_REQUESTS + BAD_REQUESTS
        assert serving.errors == {"INVALID_ARGUMENT": BAD_REQUESTS}
        assert serving.ok == OK_REQUESTS


def test_leader_reports_the_dealers_requests(cluster2: Cluster, model_id: str) -> None:
    # predictions ran (fixture), so the dealer served material (the fast engine's setups and
    # bundles on two servers, Beaver triples for CrypTen); it reports every second
    deadline = time.monotonic() + 10
    while True:
        leader = cluster2.status()[0]
        if sum(leader.dealer_requests.values()) > 0:
            break
        assert time.monotonic() < deadline, leader.dealer_requests
        time.sleep(0.2)
    assert leader.dealer_sessions >= 1
    crypten_kinds = {"additive", "square", "binary", "wraps", "B2A", "trunc"}
    assert set(leader.dealer_requests) <= crypten_kinds | {"fast_setup", "fast_bundles"}
    assert cluster2.status()[1].dealer_requests == {}


@pytest.fixture(scope="module")
def he_model_id(cluster2: Cluster) -> str:
    """A CKKS model on server 0 (untrained: the figures, not its accuracy, are checked)."""
    model_id = cluster2.he_register(poly_cnn(), IMAGE_SHAPE, name="metrics-ckks")
    result = cluster2.predict_ckks(model_id, torch.full((2, *IMAGE_SHAPE), 0.5))
    assert tuple(result.output.shape) == (2, 10)
    return model_id


def test_ckks_serving_in_status_and_scrape(
    local2: LocalCluster, cluster2: Cluster, he_model_id: str
) -> None:
    leader, follower = cluster2.status()
    (serving,) = [m for m in leader.he_models if m.model_id == he_model_id]
    assert (serving.requests, serving.errors, serving.images) == (1, 0, 2)
    assert serving.latency.count == 1 and serving.latency.p50_ms > 0
    assert serving.bytes_in > 0 and serving.bytes_out > 0
    contexts = leader.he_contexts.get("local-user", 0)
    assert contexts >= 1  # its evaluation keys, uploaded before the first prediction
    assert not [m for m in follower.he_models if m.model_id == he_model_id]

    status, text = _scrape(local2, local2.config.parties[0], _monitor_token(local2))
    assert status == 200
    samples = _samples(text)
    model = (("model", he_model_id),)
    assert samples[("ppml_he_requests_total", model)] == 1
    assert samples[("ppml_he_images_total", model)] == 2
    assert samples[("ppml_he_errors_total", model)] == 0
    bytes_in = (("direction", "in"), ("model", he_model_id))
    assert samples[("ppml_he_ciphertext_bytes_total", bytes_in)] == serving.bytes_in
    p50 = ("ppml_he_latency_ms", (("model", he_model_id), ("quantile", "0.5")))
    assert samples[p50] == serving.latency.p50_ms
    assert samples[("ppml_he_contexts", (("identity", "local-user"),))] == contexts
