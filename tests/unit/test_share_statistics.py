"""Statistical acceptance of the client's secret sharing, measured on the wire.

"One server's received share of a fixed input is indistinguishable from
uniform, and two different inputs give indistinguishable share distributions."

Two in-process gRPC servers stand in for the compute servers: they record every
PredictRequest exactly as it arrives and answer with zero shares. The real SDK
(`ppml.client.cluster.Cluster`) sends many predictions of two fixed inputs; the
tests decode what each server received and run frequency tests on it.

Every hypothesis test below runs at ``ALPHA = TOTAL_FALSE_FAILURE / N_TESTS``
(Bonferroni), so the whole module fails by chance with probability < 1e-6. The
negative controls run the same statistics on broken sharings and show that
they reject.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from scipy import stats

from ppml.client.cluster import Cluster, Endpoint
from ppml.proto.domain.architecture import Architecture, Linear, ModelMeta
from ppml.proto.shares import encode, random_ring
from ppml.proto.wire import serde
from ppml.v1 import inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc

CALLS = 400
OUTPUT_FEATURES = 2
X = np.array([[0.0, 1.0, -1.0, 0.5, 1000.0, -1000.0, 3.25, 1e-4]])
X_OTHER = np.array([[7.0, -7.0, 123.456, 0.0, -0.25, 65536.0, -3e5, 2.0]])

TOTAL_FALSE_FAILURE = 1e-6
# Tests on honest shares in this module: 64 bits x 2 servers x 2 inputs (bit balance)
# + 9 byte tests x 2 servers x 2 inputs (chi-square) + 2 two-sample tests x 2 servers,
# + the calibration test on local CSPRNG data (64 + 9 + 2).
N_TESTS = 64 * 2 * 2 + 9 * 2 * 2 + 2 * 2 + (64 + 9 + 2)
ALPHA = TOTAL_FALSE_FAILURE / N_TESTS


# ---------------------------------------------------------------- recording servers


@dataclass(frozen=True)
class Received:
    request_id: str
    model_id: str
    share: np.ndarray


class RecordingInference(inference_pb2_grpc.InferenceServicer):
    """Records each request's share and answers with a zero output share."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        share = serde.share_from_proto(request.input)
        with self._lock:
            self.received.append(Received(request.request_id, request.model_id, share))
        rows = share.shape[0]
        return inference_pb2.PredictResponse(
            request_id=request.request_id,
            output=serde.share_to_proto(np.zeros((rows, OUTPUT_FEATURES), dtype=np.int64)),
            batch_requests=1,
        )


class PublicRegistry(registry_pb2_grpc.ModelRegistryServicer):
    """Answers the SDK's look-up of the model's input shape (public metadata)."""

    def GetModel(
        self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelInfo:
        width = X.shape[1]
        architecture = Architecture(
            (Linear(width, OUTPUT_FEATURES, True),), (width,), (OUTPUT_FEATURES,)
        )
        return serde.model_meta_to_proto(ModelMeta(request.model_id, "", "owner", architecture, 0))


@dataclass(frozen=True)
class WireShares:
    """Shares each server received, one row per call, flattened to (CALLS, 8)."""

    server0: np.ndarray
    server1: np.ndarray
    request_ids0: list[str]
    request_ids1: list[str]
    model_ids: set[str]


def _collect(cluster: Cluster, servicers: list[RecordingInference], x: np.ndarray) -> WireShares:
    for servicer in servicers:
        servicer.received.clear()
    for _ in range(CALLS):
        out = cluster.predict("m1", x)
        assert tuple(out.shape) == (1, OUTPUT_FEATURES)
    by_id = [{r.request_id: r for r in s.received} for s in servicers]
    ids = [r.request_id for r in servicers[0].received]
    return WireShares(
        server0=np.stack([by_id[0][i].share.reshape(-1) for i in ids]),
        server1=np.stack([by_id[1][i].share.reshape(-1) for i in ids]),
        request_ids0=ids,
        request_ids1=[r.request_id for r in servicers[1].received],
        model_ids={r.model_id for s in servicers for r in s.received},
    )


@pytest.fixture(scope="module")
def wire() -> Iterator[dict[str, WireShares]]:
    servicers = [RecordingInference(), RecordingInference()]
    servers = []
    endpoints = []
    for rank, servicer in enumerate(servicers):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
        registry_pb2_grpc.add_ModelRegistryServicer_to_server(PublicRegistry(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        assert port != 0
        server.start()
        servers.append(server)
        endpoints.append(Endpoint(f"s{rank}", f"127.0.0.1:{port}"))
    cluster = Cluster(endpoints, token="t", ca_cert=None, insecure=True)
    try:
        yield {
            "x": _collect(cluster, servicers, X),
            "x_other": _collect(cluster, servicers, X_OTHER),
        }
    finally:
        cluster.close()
        for server in servers:
            server.stop(None)


# ---------------------------------------------------------------- statistics


def _as_uint64(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64).view(np.uint64).reshape(-1)


def bit_balance_pvalues(values: np.ndarray) -> np.ndarray:
    """Two-sided binomial p-value of 'bit b is set with probability 1/2', for b in 0..63."""
    flat = _as_uint64(values)
    pvalues = np.empty(64)
    for bit in range(64):
        ones = int(np.count_nonzero((flat >> np.uint64(bit)) & np.uint64(1)))
        pvalues[bit] = stats.binomtest(ones, flat.size, 0.5).pvalue
    return pvalues


def byte_pvalues(values: np.ndarray) -> np.ndarray:
    """Chi-square p-values of 'bytes are uniform over 0..255': all bytes, then each position."""
    raw = np.ascontiguousarray(values, dtype="<i8").view(np.uint8).reshape(-1, 8)
    columns = [raw.reshape(-1)] + [raw[:, k] for k in range(8)]
    return np.array([stats.chisquare(np.bincount(col, minlength=256)).pvalue for col in columns])


def two_sample_pvalues(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """KS on the top 16 bits as floats in [0, 1), and chi-square on a top-byte contingency table."""
    top_a = (_as_uint64(a) >> np.uint64(48)).astype(np.float64) / 65536.0
    top_b = (_as_uint64(b) >> np.uint64(48)).astype(np.float64) / 65536.0
    ks = float(stats.ks_2samp(top_a, top_b).pvalue)
    table = np.stack(
        [
            np.bincount((_as_uint64(a) >> np.uint64(56)).astype(np.int64), minlength=256),
            np.bincount((_as_uint64(b) >> np.uint64(56)).astype(np.int64), minlength=256),
        ]
    )
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return ks, 1.0
    chi = float(stats.chi2_contingency(table).pvalue)
    return ks, chi


# ---------------------------------------------------------------- what went over the wire


def test_every_call_reached_both_servers_with_one_share_each(
    wire: dict[str, WireShares],
) -> None:
    for name, x in (("x", X), ("x_other", X_OTHER)):
        shares = wire[name]
        assert shares.server0.shape == shares.server1.shape == (CALLS, X.size)
        assert sorted(shares.request_ids0) == sorted(shares.request_ids1)
        assert len(set(shares.request_ids0)) == CALLS  # a fresh request id per call
        assert shares.model_ids == {"m1"}
        # the two wire shares are additive shares of encode(x) mod 2^64
        with np.errstate(over="ignore"):
            total = shares.server0 + shares.server1
        np.testing.assert_array_equal(total, np.broadcast_to(encode(x).reshape(-1), total.shape))
        # and neither server ever sees the encoded input itself
        assert not np.any(np.all(shares.server0 == encode(x).reshape(-1), axis=1))
        assert not np.any(np.all(shares.server1 == encode(x).reshape(-1), axis=1))


def test_shares_never_repeat_across_calls(wire: dict[str, WireShares]) -> None:
    for shares in wire.values():
        for server in (shares.server0, shares.server1):
            assert np.unique(server.reshape(-1)).size == server.size


# ---------------------------------------------------------------- uniformity


@pytest.mark.parametrize("inp", ["x", "x_other"])
@pytest.mark.parametrize("server", ["server0", "server1"])
def test_every_bit_of_a_received_share_is_balanced(
    wire: dict[str, WireShares], inp: str, server: str
) -> None:
    pvalues = bit_balance_pvalues(getattr(wire[inp], server))
    worst = int(np.argmin(pvalues))
    assert pvalues[worst] > ALPHA, f"bit {worst} is biased (p={pvalues[worst]:.3g})"


@pytest.mark.parametrize("inp", ["x", "x_other"])
@pytest.mark.parametrize("server", ["server0", "server1"])
def test_bytes_of_a_received_share_are_uniform(
    wire: dict[str, WireShares], inp: str, server: str
) -> None:
    pvalues = byte_pvalues(getattr(wire[inp], server))
    assert np.min(pvalues) > ALPHA, f"byte histogram p-values {pvalues}"


# ---------------------------------------------------------------- indistinguishability


@pytest.mark.parametrize("server", ["server0", "server1"])
def test_two_inputs_give_indistinguishable_share_distributions(
    wire: dict[str, WireShares], server: str
) -> None:
    ks, chi = two_sample_pvalues(getattr(wire["x"], server), getattr(wire["x_other"], server))
    assert ks > ALPHA, f"KS on top 16 bits tells x from x' (p={ks:.3g})"
    assert chi > ALPHA, f"top-byte contingency tells x from x' (p={chi:.3g})"


# ---------------------------------------------------------------- negative controls


def test_statistics_reject_the_encoded_input_itself() -> None:
    """Without sharing, 'the share' is encode(x): every statistic must reject."""
    plain = np.broadcast_to(encode(X).reshape(-1), (CALLS, X.size))
    plain_other = np.broadcast_to(encode(X_OTHER).reshape(-1), (CALLS, X.size))
    assert np.min(bit_balance_pvalues(plain)) < ALPHA
    assert np.min(byte_pvalues(plain)) < ALPHA
    ks, chi = two_sample_pvalues(plain, plain_other)
    assert min(ks, chi) < ALPHA


def test_statistics_reject_short_masks() -> None:
    """A subtler bug: masks drawn from 32 bits instead of the whole ring."""
    rng_shape = (CALLS, X.size)

    def broken(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = random_ring(rng_shape) & np.int64(0xFFFFFFFF)
        with np.errstate(over="ignore"):
            return encode(x).reshape(1, -1) - mask, mask

    s0, s1 = broken(X)
    s0_other, _ = broken(X_OTHER)
    assert np.min(bit_balance_pvalues(s1)) < ALPHA
    assert np.min(byte_pvalues(s1)) < ALPHA
    assert np.min(bit_balance_pvalues(s0)) < ALPHA
    ks, chi = two_sample_pvalues(s0, s0_other)
    assert min(ks, chi) < ALPHA


def test_statistics_accept_honest_local_shares() -> None:
    """The statistics themselves are calibrated: fresh CSPRNG data passes them."""
    a = random_ring((CALLS, X.size))
    b = random_ring((CALLS, X.size))
    assert np.min(bit_balance_pvalues(a)) > ALPHA
    assert np.min(byte_pvalues(a)) > ALPHA
    assert min(two_sample_pvalues(a, b)) > ALPHA
