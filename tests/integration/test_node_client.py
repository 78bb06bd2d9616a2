"""The Node.js client in examples/node-client, written from proto/ alone, against real clusters.

It reads ``cluster.toml``, secret-shares its input with ``crypto.randomBytes``,
sends share i to server i over TLS with the client token and adds the output
shares up. Its decoded outputs must match the plaintext model. Skipped only
when ``node`` is not installed; ``make node-client`` installs its packages.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster

NODE = shutil.which("node")
CLIENT = Path(__file__).resolve().parents[2] / "examples" / "node-client"
MAX_ABS_ERROR = 1e-3

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed, so the Node.js example client cannot run"
)


@pytest.fixture(scope="module")
def node() -> str:
    assert NODE is not None
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("examples/node-client has no node_modules: run `make node-client` (npm ci)")
    return NODE


@pytest.fixture(params=[2, 3], ids=["2-servers", "3-servers"])
def local(request: pytest.FixtureRequest) -> LocalCluster:
    result: LocalCluster = request.getfixturevalue("local2" if request.param == 2 else "local3")
    return result


def _predict(
    node: str, local: LocalCluster, model_id: str, x: Any, tmp: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    path = tmp / "input.json"
    path.write_text(json.dumps(x))
    command = [node, str(CLIENT / "predict.js"), "--config", str(local.config_path)]
    command += ["--model", model_id, "--input", str(path), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _output(result: subprocess.CompletedProcess[str]) -> torch.Tensor:
    assert result.returncode == 0, result.stderr
    return torch.tensor(json.loads(result.stdout), dtype=torch.float64)


def test_node_client_matches_plaintext(
    node: str, local: LocalCluster, mlp: torch.nn.Module, digits: Any, tmp_path: Path
) -> None:
    with Cluster.from_config(local.config_path) as cluster:
        model_id = cluster.share_model(mlp, digits.x_test[:1], name="node-client")
    batches = [
        digits.x_test[:8],  # rows of real inputs
        -digits.x_test[8:11],  # every sign flipped
        torch.zeros(2, 64),  # the output is the bias path alone
    ]
    for x in batches:
        got = _output(_predict(node, local, model_id, x.tolist(), tmp_path))
        with torch.no_grad():
            want = mlp(x).double()
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= MAX_ABS_ERROR
    # one sample (shape input_shape, no rows dimension) in, one output out
    one = digits.x_test[9]
    got = _output(_predict(node, local, model_id, one.tolist(), tmp_path))
    with torch.no_grad():
        want = mlp(one[None])[0].double()
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= MAX_ABS_ERROR


def test_node_client_reports_status_and_error_code(
    node: str, local2: LocalCluster, digits: Any, tmp_path: Path
) -> None:
    x = digits.x_test[:1].tolist()
    missing = _predict(node, local2, "no-such-model", x, tmp_path)
    assert missing.returncode == 1
    assert "NOT_FOUND (MODEL_NOT_FOUND)" in missing.stderr
    assert "no-such-model" in missing.stderr
    stranger = _predict(node, local2, "no-such-model", x, tmp_path, "--token", "not-a-token")
    assert stranger.returncode == 1
    assert "UNAUTHENTICATED (UNAUTHENTICATED): unknown token" in stranger.stderr


def test_node_share_encoding_round_trips(node: str) -> None:
    """The client's own encoding and sharing tests (node --test, no cluster)."""
    result = subprocess.run(
        [node, "--test", str(CLIENT / "test")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=CLIENT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout
