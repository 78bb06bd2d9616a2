"""Fail closed: no auth file, no CA, stranger peers, world-readable shares, unknown dealer ops."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import numpy as np
import pytest
from fakes import cluster_config

from ppml.client import Cluster, Endpoint
from ppml.client.deploy.local import write_local_topology
from ppml.proto.deploy.topology import load_config
from ppml.proto.domain import commands as cmd
from ppml.proto.domain.architecture import Architecture, Linear, ModelMeta
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.app import ComputeServer
from ppml.servers.control.holds import Holds
from ppml.servers.control.leader import Leader
from ppml.servers.mpc.dealer import Dealer
from ppml.servers.store.storage import MODEL_CODEC, FileShareStore


def test_a_server_without_an_auth_file_refuses_to_start(tmp_path: Path) -> None:
    path = write_local_topology(tmp_path, 2)
    path.write_text(re.sub(r"auth_file = .*\n", "", path.read_text()))
    with pytest.raises(ValueError, match="no auth_file"):
        ComputeServer(load_config(path), 0)


def test_a_client_without_a_ca_refuses_to_connect() -> None:
    endpoints = [Endpoint("a", "127.0.0.1:1"), Endpoint("b", "127.0.0.1:2")]
    with pytest.raises(ValueError, match="ca_cert"):
        Cluster(endpoints, "token", ca_cert=None)


def test_a_client_may_go_without_tls_only_when_told_and_it_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoints = [Endpoint("a", "127.0.0.1:1"), Endpoint("b", "127.0.0.1:2")]
    with Cluster(endpoints, "token", ca_cert=None, insecure=True):
        pass
    assert "WITHOUT TLS" in caplog.text


def test_a_peer_may_only_link_as_its_own_rank() -> None:
    leader = Leader(cluster_config(2), lambda command: None, Holds(), [])
    leader.attach(cmd.Hello(1, "party", "x"), identity="server-1")
    leader.attach(cmd.Hello(2, "dealer", "x"), identity="dealer")
    with pytest.raises(PpmlError) as excinfo:
        leader.attach(cmd.Hello(2, "dealer", "x"), identity="server-1")
    assert excinfo.value.code == ErrorCode.PERMISSION_DENIED
    with pytest.raises(PpmlError):
        leader.attach(cmd.Hello(1, "party", "x"), identity="local-user")


def test_stored_shares_are_private_to_the_servers_user(tmp_path: Path) -> None:
    store = FileShareStore(tmp_path / "data", MODEL_CODEC)
    architecture = Architecture((Linear(2, 1),), (2,), (1,))
    meta = ModelMeta("m", "m", "alice", architecture, 1)
    shares = {"0.weight": np.zeros((1, 2), np.int64), "0.bias": np.zeros(1, np.int64)}
    store.put(meta, shares)
    store.update_meta(meta)
    for path in [tmp_path / "data", *(tmp_path / "data").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, f"{path} has mode {oct(mode)}"


@pytest.mark.parametrize("op", ["exp", "__import__", "save", "load"])
def test_the_dealer_runs_only_allow_listed_ops(op: str) -> None:
    with pytest.raises(ValueError, match="does not make triples"):
        Dealer().additive((2,), (2,), op)
