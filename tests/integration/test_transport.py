"""TLS is on by default; plaintext only with an explicit --insecure that warns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ppml.client import Cluster, Endpoint, ServerUnavailable
from ppml.client.deploy.local import LocalCluster


def test_tls_server_refuses_a_plaintext_client(local2: LocalCluster) -> None:
    config = local2.config
    token = (local2.directory / "secrets" / "client.token").read_text().strip()
    endpoints = [Endpoint(p.name, p.grpc_address) for p in config.parties]
    with (
        Cluster(endpoints, token, ca_cert=None, insecure=True) as plaintext,
        pytest.raises(ServerUnavailable),
    ):
        plaintext.list_models()


def test_insecure_cluster_works_and_warns(tmp_path: Path, mlp: torch.nn.Module) -> None:
    with (
        LocalCluster(parties=2, directory=tmp_path, insecure=True) as local,
        Cluster.from_config(local.config_path, insecure=True) as cluster,
    ):
        model_id = cluster.share_model(mlp, torch.zeros(1, 64))
        x = torch.full((1, 64), 0.2)
        with torch.no_grad():
            assert (cluster.predict(model_id, x) - mlp(x)).abs().max().item() < 1e-2
        assert all(not r.tls for r in cluster.status())
        for name in ("server-0", "server-1"):
            assert "WITHOUT TLS" in local.log(name).read_text()
        assert "WITHOUT TLS" in local.log("dealer").read_text()
