"""An outsider probes every port a running cluster listens on, and gets nothing.

A real cluster (2 servers + dealer, started by ``LocalCluster``; the one other
tests share): every listening socket of its processes is found from ``/proc``
and must be one the topology file names (no ephemeral listener, nothing on all
interfaces). Then each is knocked on as an outsider: plaintext, TLS without a
client certificate, a certificate from another CA, a torch ``TCPStore`` client.
The MPC listeners refuse all of them; the gRPC and metrics ports speak only
TLS and answer nothing without a token. The cluster still serves afterwards.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import torch
import torch.distributed as dist
from probing import knock, listening, outsider

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.proto.deploy.tls import issue_server_cert, make_ca
from ppml.servers.mpc.network.tls_links import ACCEPTED, SEND, Hello
from ppml.v1 import registry_pb2, registry_pb2_grpc


@pytest.fixture(scope="module")
def local(local2: LocalCluster) -> LocalCluster:
    """The session's 2-server cluster (default settings): the probes must not disturb it."""
    return local2


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def _expected(local: LocalCluster) -> dict[str, set[tuple[str, int]]]:
    config = local.config
    out: dict[str, set[tuple[str, int]]] = {}
    for party in config.parties:
        ports = {_split(party.grpc_address)}
        if party.metrics_port:
            ports.add((party.grpc_host, party.metrics_port))
        if party.rank > 0:  # rank 0 dials every MPC link; the others listen
            ports.add(_split(party.mpc_address))
        out[party.name] = ports
    assert config.dealer.mpc_address is not None
    out["dealer"] = {_split(config.dealer.mpc_address)}
    return out


def test_every_listener_is_one_the_topology_names(local: LocalCluster) -> None:
    expected = _expected(local)
    for name, process in local.processes.items():
        assert listening(process.pid) == expected[name], name


def test_mpc_listeners_refuse_everyoutsider(local: LocalCluster, tmp_path: Path) -> None:
    foreign_ca = make_ca(tmp_path / "foreign", "another CA")
    foreign = issue_server_cert(foreign_ca, tmp_path / "foreign", "server-0", ["127.0.0.1"])
    config = local.config
    hello = Hello(bytes(16), 0, 1, SEND).pack()
    assert config.dealer.mpc_address is not None
    for address in (config.party(1).mpc_address, config.dealer.mpc_address):
        target = _split(address)
        for what, context in {
            "plaintext": None,
            "no client certificate": outsider(None),
            "another CA": outsider(foreign),
        }.items():
            answer = knock(target, context, hello)
            assert ACCEPTED not in answer, (address, what)
            assert answer == b"" or answer[0] == 0x15, (address, what, answer)  # an alert at most


def test_no_port_speaks_plaintext_or_tcpstore(local: LocalCluster) -> None:
    for ports in _expected(local).values():
        for host, port in ports:
            answer = knock((host, port), None, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not answer.startswith(b"HTTP/"), (host, port, answer)
            with pytest.raises((RuntimeError, OSError, dist.DistStoreError)):
                dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=3))


def test_grpc_and_metrics_answer_nothing_without_a_token(local: LocalCluster) -> None:
    config = local.config
    assert config.ca_cert is not None
    credentials = grpc.ssl_channel_credentials(config.ca_cert.read_bytes())
    context = ssl.create_default_context(cafile=str(config.ca_cert))
    for party in config.parties:
        with grpc.secure_channel(party.grpc_address, credentials) as channel:
            stub = registry_pb2_grpc.ModelRegistryStub(channel)
            with pytest.raises(grpc.RpcError) as excinfo:
                stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)
            assert excinfo.value.code() == grpc.StatusCode.UNAUTHENTICATED
        url = f"https://{party.grpc_host}:{party.metrics_port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(url, context=context, timeout=10)
        assert http.value.code == 401


def test_the_cluster_still_serves_after_the_probes(local: LocalCluster) -> None:
    torch.manual_seed(0)  # public test weights
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x = torch.full((2, 4), 0.5)
    with Cluster.from_config(local.config_path) as cluster:
        model_id = cluster.share_model(model, x)
        with torch.no_grad():
            assert (cluster.predict(model_id, x) - model(x)).abs().max().item() < 1e-3
