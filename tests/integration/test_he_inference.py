"""Single-server CKKS inference between real processes (TLS, the SDK, SEAL).

The owner trains the polynomial CNN here (conv -> square -> linear -> square
-> linear on MNIST-shaped digits) and registers it on server 0; clients
encrypt under their own keys. Every refusal leaves the server serving: each
bad-input test ends with a good prediction.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from tenseal import sealapi

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.client.errors import (
    ContextMismatch,
    ContextNotFound,
    InvalidCiphertext,
    InvalidContext,
    InvalidModel,
    ModelNotFound,
    PermissionDenied,
)
from ppml.client.he_compile import Square, compile_plan
from ppml.proto.he import seal_io
from ppml.proto.he.plan import PlanError
from ppml.training.poly_cnn import mnist_shaped_digits, train_poly_cnn
from ppml.v1 import he_pb2

OFFICES = ("office-1", "office-2")
# documented bound (docs/architecture.md, "CKKS inference"): logits within 1e-2
LOGIT_BOUND = 1e-2


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return mnist_shaped_digits()


@pytest.fixture(scope="module")
def poly(data: tuple[np.ndarray, ...]) -> torch.nn.Sequential:
    return train_poly_cnn(data[0], data[1])


@pytest.fixture(scope="module")
def model_id(owner: Cluster, poly: torch.nn.Sequential) -> str:
    return owner.he_register(poly, (1, 28, 28), name="poly-cnn", allow=["office-1"])


def _plain(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.double()(torch.from_numpy(x).double()).numpy()


def test_encrypted_predictions_match_the_plaintext_model(
    owner: Cluster, poly: torch.nn.Sequential, model_id: str, data: tuple[np.ndarray, ...]
) -> None:
    test_x = data[2]
    expected = _plain(poly, test_x)
    result = owner.predict_ckks(model_id, test_x)  # 450 images: the batch layout
    got = result.output.double().numpy()
    assert result.layout == "batch"
    agree = float(np.mean(got.argmax(1) == expected.argmax(1)))
    assert agree >= 0.995, agree
    assert np.abs(got - expected).max() <= LOGIT_BOUND
    single = owner.predict_ckks(model_id, test_x[:3])
    assert single.layout == "single"
    assert np.abs(single.output.double().numpy() - expected[:3]).max() <= LOGIT_BOUND
    via_predict = owner.predict(model_id, test_x[:1], backend="ckks")
    assert int(via_predict.argmax()) == int(expected[0].argmax())


def test_concurrent_requests_of_one_identity_share_an_evaluation(
    owner: Cluster, poly: torch.nn.Sequential, model_id: str, data: tuple[np.ndarray, ...]
) -> None:
    x = data[2][:8]
    expected = _plain(poly, x)
    owner.predict_ckks(model_id, x[:1])  # keys and model info are in place
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: owner.predict_ckks(model_id, x[i : i + 1]), range(8)))
    for i, result in enumerate(results):
        assert result.layout == "single"
        assert np.abs(result.output.double().numpy() - expected[i]).max() <= LOGIT_BOUND
    assert max(r.batch_requests for r in results) >= 2


def test_keys_never_leave_the_client(
    owner: Cluster, local: LocalCluster, model_id: str, data: tuple[np.ndarray, ...]
) -> None:
    owner.predict_ckks(model_id, data[2][:1])
    keys = owner._he_keys("n8192-d5")
    secret_file = keys.folder / "secret.seal"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_bytes()
    public = keys.public_parts()
    data_dirs = [party.data_dir for party in local.config.parties]
    stored = sorted(p for d in data_dirs for p in (d / "he").rglob("*") if p.is_file())
    contexts = [p for p in stored if "contexts" in p.parts]
    assert {p.name for p in contexts} == {"relin.seal", "galois.seal", "meta.json"}
    assert public["relin_keys"] in [p.read_bytes() for p in contexts if p.name == "relin.seal"]
    assert public["galois_keys"] in [p.read_bytes() for p in contexts if p.name == "galois.seal"]
    for path in (p for d in data_dirs for p in d.rglob("*") if p.is_file()):
        assert secret[64:128] not in path.read_bytes(), path


def _upload(cluster: Cluster, chunks: list[he_pb2.ContextChunk]) -> None:
    cluster._he_call(
        0, lambda s: s.he.UploadContext(iter(chunks), timeout=60, metadata=cluster._metadata)
    )


def _header(**over: object) -> he_pb2.ContextChunk:
    fields: dict[str, object] = {
        "param_set": "n8192-d5",
        "poly_modulus_degree": 8192,
        "coeff_mod_bit_sizes": [38, 28, 28, 28, 28, 28, 40],
    }
    fields.update(over)
    return he_pb2.ContextChunk(**fields)  # type: ignore[arg-type]


def test_refused_contexts(
    offices: dict[str, Cluster], model_id: str, data: tuple[np.ndarray, ...]
) -> None:
    client = offices["office-1"]
    keys = client._he_keys("n8192-d5")
    secret = seal_io.to_bytes(keys.secret)
    public = keys.public_parts()
    with pytest.raises(InvalidContext, match="secret key"):
        _upload(client, [_header(), he_pb2.ContextChunk(part="secret_key", data=secret)])
    disguised = [
        _header(),
        he_pb2.ContextChunk(part="relin_keys", data=public["relin_keys"]),
        he_pb2.ContextChunk(part="galois_keys", data=secret),
    ]
    with pytest.raises(InvalidContext, match="Galois keys do not load"):
        _upload(client, disguised)
    with pytest.raises(InvalidContext, match="below 128-bit security"):
        _upload(client, [_header(coeff_mod_bit_sizes=[60, 40, 40, 40, 40, 60])])
    with pytest.raises(InvalidContext, match="unknown CKKS parameter set"):
        _upload(client, [_header(param_set="n4096-tiny")])
    with pytest.raises(ContextNotFound):  # nothing of office-1 was stored
        client._he_call(
            0,
            lambda s: s.he.GetContext(
                he_pb2.GetContextRequest(param_set="n8192-d5"),
                timeout=30,
                metadata=client._metadata,
            ),
        )
    result = client.predict_ckks(model_id, data[2][:1])  # uploads the right keys, serves
    assert result.output.shape == (1, 10)


def _request(
    cluster: Cluster,
    model_id: str,
    blobs: list[bytes],
    fingerprint: str,
    rows: int = 1,
    layout: str = "single",
) -> he_pb2.HePredictResponse:
    request = he_pb2.HePredictRequest(
        model_id=model_id,
        layout=layout,
        rows=rows,
        context_fingerprint=fingerprint,
        ciphertexts=blobs,
    )
    return cluster._he_call(
        0, lambda s: s.he.Predict(request, timeout=60, metadata=cluster._metadata)
    )


def _encrypt(cluster: Cluster, scale_bits: int = 28, level: int = 0) -> bytes:
    keys = cluster._he_keys("n8192-d5")
    plain = sealapi.Plaintext()
    keys.encoder.encode([0.5] * keys.params.slots, 2.0**scale_bits, plain)
    ct = sealapi.Ciphertext()
    keys.encryptor.encrypt_symmetric(plain, ct)
    for _ in range(level):
        sealapi.Evaluator(keys.context).mod_switch_to_next_inplace(ct)
    return seal_io.to_bytes(ct)


def test_refused_ciphertexts_leave_the_server_serving(
    owner: Cluster, offices: dict[str, Cluster], model_id: str, data: tuple[np.ndarray, ...]
) -> None:
    owner.predict_ckks(model_id, data[2][:1])
    mine = owner._he_keys("n8192-d5").fingerprint
    good = _encrypt(owner)
    with pytest.raises(InvalidCiphertext, match="scale"):
        _request(owner, model_id, [_encrypt(owner, scale_bits=30)], mine)
    with pytest.raises(InvalidCiphertext, match="top level"):
        _request(owner, model_id, [_encrypt(owner, level=1)], mine)
    with pytest.raises(InvalidCiphertext, match="bytes; at most"):
        _request(owner, model_id, [good + bytes(800_000)], mine)
    with pytest.raises(InvalidCiphertext, match="does not load"):
        _request(owner, model_id, [b"\x00" * 1000], mine)
    with pytest.raises(InvalidCiphertext, match="1 group"):
        _request(owner, model_id, [good, good], mine)
    office = offices["office-1"]
    office.predict_ckks(model_id, data[2][:1])  # office-1's own context is stored
    with pytest.raises(ContextMismatch, match="encrypt under your own context"):
        _request(office, model_id, [good], mine)  # owner's ciphertext, owner's fingerprint
    with pytest.raises(ModelNotFound, match="you may use"):  # not shared with office-2
        offices["office-2"].predict_ckks(model_id, data[2][:1])
    with pytest.raises(PermissionDenied):
        _request(offices["office-2"], model_id, [good], mine)
    after = owner.predict_ckks(model_id, data[2][:2])
    assert after.output.shape == (2, 10)


def test_refused_models(owner: Cluster) -> None:
    deep = torch.nn.Sequential(
        torch.nn.Linear(8, 8),
        Square(),
        torch.nn.Linear(8, 8),
        Square(),
        torch.nn.Linear(8, 8),
        Square(),
        torch.nn.Linear(8, 2),
    )
    with pytest.raises(InvalidModel, match="7 multiplicative levels"):
        owner.he_register(deep, (8,))
    with pytest.raises(PlanError, match="ReLU"):
        compile_plan(
            torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)), (8,)
        )


def test_a_restart_keeps_contexts_and_models(
    restartable_cluster: LocalCluster, poly: torch.nn.Sequential, data: tuple[np.ndarray, ...]
) -> None:
    with Cluster.from_config(restartable_cluster.config_path) as cluster:
        model = cluster.he_register(poly, (1, 28, 28), name="kept")
        fingerprint = cluster.he_upload_keys()
        before = cluster.predict_ckks(model, data[2][:2]).output
    restartable_cluster.kill("server-0")
    restartable_cluster.start_server(0)
    restartable_cluster.wait_serving(120)
    with Cluster.from_config(restartable_cluster.config_path) as cluster:
        stored = cluster._he_call(
            0,
            lambda s: s.he.GetContext(
                he_pb2.GetContextRequest(param_set="n8192-d5"),
                timeout=30,
                metadata=cluster._metadata,
            ),
        )
        assert stored.fingerprint == fingerprint
        assert [m.model_id for m in cluster.he_models()] == [model]
        after = cluster.predict_ckks(model, data[2][:2])  # no upload needed
        assert np.abs(after.output.numpy() - before.numpy()).max() < LOGIT_BOUND


def test_only_the_owner_deletes_a_model_and_then_it_is_gone(
    owner: Cluster, offices: dict[str, Cluster]
) -> None:
    small = torch.nn.Sequential(torch.nn.Linear(8, 4), Square(), torch.nn.Linear(4, 2))
    doomed = owner.he_register(small, (8,), name="doomed", allow=["office-1"])
    x = np.ones((1, 8))
    assert offices["office-1"].predict_ckks(doomed, x).output.shape == (1, 2)
    with pytest.raises(PermissionDenied, match="only the owner"):
        offices["office-1"].he_delete(doomed)
    owner.he_delete(doomed)
    assert doomed not in [m.model_id for m in owner.he_models()]
    with pytest.raises(ModelNotFound):
        owner.predict_ckks(doomed, x)
    with pytest.raises(ModelNotFound):
        offices["office-1"]._he_call(
            0,
            lambda s: s.he.Predict(
                he_pb2.HePredictRequest(model_id=doomed, layout="single", rows=1),
                timeout=30,
                metadata=offices["office-1"]._metadata,
            ),
        )
