"""An eavesdropper on a running cluster's MPC links learns nothing of a known input.

A ``LocalCluster`` whose MPC links (party 0 → party 1, every party → the
dealer) pass through recording relays; a prediction of a distinctive input
runs through the SDK. The recorded bytes must not contain the input's
fixed-point encoding (nor the shares the client sent), and must look random.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster, free_port, write_local_topology
from ppml.proto.deploy.topology import load_config
from ppml.proto.shares import encode
from ppml.servers.mpc.network.relay import Relay


def _recorded_topology(directory: Path, record: Path) -> list[Relay]:
    path = write_local_topology(directory, 2)
    config = load_config(path)
    text = path.read_text()
    relays = []
    for name, address in (("server-1", config.party(1).mpc_address),
                          ("dealer", config.dealer.mpc_address)):  # fmt: skip
        assert address is not None
        host, port = address.rsplit(":", 1)
        relay = Relay((host, int(port)), ("127.0.0.1", free_port()), record_dir=record / name)
        relays.append(relay)
        dialed = f"{relay.address[0]}:{relay.address[1]}"
        text = text.replace(
            f'mpc_address = "{address}"', f'mpc_address = "{dialed}"\nmpc_bind = "{address}"'
        )
    path.write_text(text)
    return relays


def _application_data(stream: bytes) -> bytes:
    """The payloads of a TLS stream's application-data records (headers stripped)."""
    out, at = bytearray(), 0
    while at + 5 <= len(stream):
        kind, length = stream[at], int.from_bytes(stream[at + 3 : at + 5], "big")
        if kind == 0x17:
            out += stream[at + 5 : at + 5 + length]
        at += 5 + length
    return bytes(out)


def _chi_square(data: bytes) -> float:
    counts = Counter(data)
    expected = len(data) / 256
    return sum((counts.get(b, 0) - expected) ** 2 / expected for b in range(256))


def test_the_mpc_links_carry_no_trace_of_a_known_input(tmp_path: Path) -> None:
    record = tmp_path / "capture"
    relays = _recorded_topology(tmp_path / "cluster", record)
    torch.manual_seed(0)  # public test model
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.tensor([[1234.5678 + i for i in range(16)]])  # distinctive values
    try:
        with (
            LocalCluster(parties=2, directory=tmp_path / "cluster") as local,
            Cluster.from_config(local.config_path) as cluster,
        ):
            model_id = cluster.share_model(model, x)
            with torch.no_grad():
                assert (cluster.predict(model_id, x) - model(x)).abs().max().item() < 1e-2
    finally:
        for relay in relays:
            relay.close()
    captured = b"".join(f.read_bytes() for f in sorted(record.rglob("*.bin")))
    assert len(captured) > 10_000  # the prediction's traffic went through the relays
    encoded = encode(x.numpy().astype(np.float64)).astype("<i8")
    for value in encoded.reshape(-1)[:8]:
        assert value.tobytes() not in captured
    assert encoded.tobytes()[:32] not in captured
    # every link is TLS; the encrypted payloads look uniformly random
    payload = b"".join(_application_data(f.read_bytes()) for f in sorted(record.rglob("*.bin")))
    assert len(payload) > 0.5 * len(captured)  # record headers aside, it is all ciphertext
    chi = _chi_square(payload)
    assert chi < 255 + 6 * math.sqrt(2 * 255), chi  # 6 standard deviations above the mean
