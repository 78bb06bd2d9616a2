"""Fuzz test of the RPC boundary: malformed and adversarial messages to every RPC.

One real cluster (2 servers + dealer, TLS, tokens) serves the whole module.
Each Hypothesis test below is one family of RPCs, sent as raw bytes by
:class:`fuzz_calls.Caller`, which checks every reply: no INTERNAL or UNKNOWN,
no call left unanswered, no process gone, the right status for a missing,
unknown or wrong-role token. At the end the cluster still predicts and
evaluates correctly, its MPC session never restarted, nothing is left
queued, and no stored model, data set or job was lost or changed.

Four families aim at what a careless server would take: CKKS encrypted
updates with broken chunks (random, truncated, of the wrong length, out of
order, framing and header broken); share tensors that are off (random bytes,
wrong byte counts, shapes, ranks, dtypes) in SubmitUpdate, Predict and model
and data set uploads; names in every string field of every client RPC
(control characters, bidi overrides, NUL, over-long, empty); and 20 KB in
every string field. A bad name or a long string must get INVALID_ARGUMENT
with a ``ppml-error-code`` (an empty one only the usual checks: it is a valid
optional name). Broken chunks and shares must never crash a server; whether a
server refuses them at submission or drops them when the round closes is
tested with the federations (``test_federation.py``), not asserted here.

Not fuzzed: a Hello the leader would accept on its control link (a peer may
take over its own link, which restarts the MPC session by design), a
training job valid on every server (it would really train), deleting the
records checked at the end, and one new id sent to different servers in
different examples (they would hold different things under one id; see
``fuzz_values.new_ids``).

Budget: ``PPML_FUZZ_EXAMPLES`` examples per family (a short, derandomised
run when unset, for ``make test``); ``make fuzz`` runs the full budget. The
last test prints the calls and messages sent and the status histogram.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from fuzz_calls import RPCS, TOKENS, Caller
from fuzz_messages import (
    UPLOAD_FEATURES,
    Held,
    StringField,
    client_string_fields,
    encrypted_update_garbage,
    evaluate_requests,
    every_string,
    exact_parameters,
    exact_share,
    garbage_shares,
    good_architecture,
    party_messages,
    predict_requests,
    start_training_requests,
    submit_update_requests,
    upload_model_requests,
    upload_streams,
)
from fuzz_values import (
    bad_names,
    deadlines,
    fresh_id,
    ids,
    long_strings,
    lookup_ids,
    raw_bodies,
    texts,
)
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.client.he_compile import Square, compile_plan
from ppml.proto.deploy.channels import client_channel
from ppml.proto.domain import federations as fed
from ppml.proto.he import layout as he_layout
from ppml.proto.wire import serde
from ppml.training import ckks
from ppml.v1 import (
    coordinator_pb2,
    datasets_pb2,
    federation_pb2,
    he_pb2,
    inference_pb2,
    registry_pb2,
    status_pb2,
    training_pb2,
)

# short waits keep held requests cheap; a prediction or evaluation still fits in them
SERVING = {"max_wait_ms": 5, "default_timeout_s": 1.0, "max_timeout_s": 3.0}
FULL = bool(os.environ.get("PPML_FUZZ_EXAMPLES"))
EXAMPLES = int(os.environ.get("PPML_FUZZ_EXAMPLES") or 200)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not FULL,
    suppress_health_check=list(HealthCheck),
)
MODEL, DATASET, JOB, TRAINED = "fuzz-mlp", "fuzz-data", "fuzz-job", "fuzz-job-model"
FED_MPC, FED_CKKS = "fuzz-fed-mpc", "fuzz-fed-ckks"
PARTICIPANTS = ["local-user", "analyst"]  # the client and analyst tokens' identities
FEATURES, CLASSES, ROWS = 8, 3, 16
OWNER_TOKEN = {"local-user": "client", "analyst": "analyst"}


@dataclass(frozen=True, repr=False)
class Fuzz:
    caller: Caller
    held: Held

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("Fuzz(...)")  # Hypothesis prints a failing example's arguments


@dataclass(frozen=True, repr=False)
class Baseline:
    """What the cluster held and answered before fuzzing."""

    files: dict[str, str]
    listings: list[bytes]
    epochs: list[int]
    trained_prediction: np.ndarray

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("Baseline(...)")


def _plaintext_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 6), torch.nn.ReLU(), torch.nn.Linear(6, CLASSES)
    ).eval()


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (ROWS, FEATURES)).astype(np.float32)
    return x, rng.integers(0, CLASSES, ROWS)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    local = LocalCluster(
        parties=2, directory=tmp_path_factory.mktemp("fuzz"), serving=SERVING
    ).start()
    config = local.config
    channels = [client_channel(p.grpc_address, config.ca_cert) for p in config.parties]
    try:
        with Cluster.from_config(local.config_path) as sdk:
            sdk.share_model(_plaintext_model(), torch.zeros(1, FEATURES), model_id=MODEL)
            x, y = _data()
            sdk.share_dataset(x, y, num_classes=CLASSES, dataset_id=DATASET)
            linear = torch.nn.Linear(FEATURES, CLASSES)
            job = sdk.train(
                linear, [DATASET], epochs=1, batch_size=ROWS, lr=0.1, job_id=JOB, model_id=TRAINED
            )
            assert job.result(timeout=120) == TRAINED  # the trained model's id
            held = Held(MODEL, TRAINED, DATASET, JOB, FEATURES, CLASSES, ROWS)
            caller = Caller(local, channels)
            _create_federations(sdk, held, channels[0], caller)
        yield Fuzz(caller, held)
    finally:
        for channel in channels:
            channel.close()
        local.stop()


def _create_federations(sdk: Cluster, held: Held, leader: grpc.Channel, caller: Caller) -> None:
    """An MPC and a CKKS federation whose rounds stay open while fuzzing (a week's deadline)."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 4), torch.nn.ReLU(), torch.nn.Linear(4, CLASSES)
    )
    common: dict[str, Any] = {
        "rounds": 3,
        "round_deadline_s": 7 * 24 * 3600.0,
        "batch_size": ROWS,
        "sample_input": torch.zeros(1, FEATURES),
    }
    sdk.create_federation(model, PARTICIPANTS, federation_id=FED_MPC, **common)
    keys = sdk.create_federation(
        model, PARTICIPANTS, federation_id=FED_CKKS, backend="ckks", **common
    ).keys
    assert keys is not None
    request = federation_pb2.GetFederationRequest(federation_id=FED_MPC).SerializeToString()
    reply = leader.unary_unary("/ppml.v1.Federation/GetFederation")(
        request, timeout=10, metadata=caller.metadata("client")
    )
    architecture = federation_pb2.FederationInfo.FromString(reply).architecture
    count = fed.parameter_count(serde.architecture_from_proto(architecture))
    update = ckks.encrypt_update(ckks.load_context(keys.participant_context), np.zeros(count), 1.0)
    held.federations += [FED_MPC, FED_CKKS]
    held.federation_architecture = architecture
    held.encrypted_update = ckks.serialize(update)


def _record_files(local: LocalCluster) -> dict[str, str]:
    """SHA-256 of every file of the records made before fuzzing, on every server."""
    digests = {}
    for party in local.config.parties:
        for kind, record in (("models", MODEL), ("models", TRAINED), ("datasets", DATASET)):
            for path in sorted((party.data_dir / kind / record).iterdir()):
                digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _listings(caller: Caller) -> list[bytes]:
    """Every server's metadata of the records made before fuzzing."""
    lookups = [
        ("/ppml.v1.ModelRegistry/GetModel", registry_pb2.GetModelRequest(model_id=MODEL)),
        ("/ppml.v1.ModelRegistry/GetModel", registry_pb2.GetModelRequest(model_id=TRAINED)),
        ("/ppml.v1.DatasetRegistry/GetDataset", datasets_pb2.GetDatasetRequest(dataset_id=DATASET)),
        ("/ppml.v1.Training/GetJob", training_pb2.GetJobRequest(job_id=JOB)),
    ]
    return [
        bytes(
            channel.unary_unary(path)(
                request.SerializeToString(), timeout=10, metadata=caller.metadata("client")
            )
        )
        for channel in caller.channels
        for path, request in lookups
    ]


def _status(caller: Caller, server: int) -> status_pb2.ServerStatus:
    reply = caller.channels[server].unary_unary("/ppml.v1.Status/GetStatus")(
        b"", timeout=10, metadata=caller.metadata("monitor")
    )
    return status_pb2.ServerStatus.FromString(reply)


@pytest.fixture(scope="module")
def baseline(fuzz: Fuzz) -> Baseline:
    with Cluster.from_config(fuzz.caller.local.config_path) as sdk:
        trained = sdk.predict(TRAINED, torch.from_numpy(_data()[0][:4])).numpy()
    return Baseline(
        _record_files(fuzz.caller.local),
        _listings(fuzz.caller),
        [_status(fuzz.caller, s).mpc_epoch for s in range(len(fuzz.caller.channels))],
        trained,
    )


def _wait_until_nothing_is_queued(caller: Caller, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        depths = [_status(caller, s).queue_depth for s in range(len(caller.channels))]
        if not any(depths):
            return
        assert time.monotonic() < deadline, f"still queued after {within}s: {depths}"
        time.sleep(0.2)


# ---------------------------------------------------------------- deadlines (before fuzzing)


@pytest.mark.parametrize("timeout", [None, 3600.0], ids=["no-deadline", "deadline-past-the-max"])
def test_a_prediction_held_by_one_server_ends_by_the_servers_bound(
    fuzz: Fuzz, baseline: Baseline, timeout: float | None
) -> None:
    # without a deadline this was INTERNAL (OverflowError) and left the request queued;
    # with one past the maximum the server held the shares until it
    request = inference_pb2.PredictRequest(
        request_id=fresh_id(), model_id=MODEL, input=exact_share((1, FEATURES))
    )
    call = fuzz.caller.channels[1].unary_unary("/ppml.v1.Inference/Predict")
    future = call.future(
        request.SerializeToString(), timeout=timeout, metadata=fuzz.caller.metadata("client")
    )
    with pytest.raises(grpc.RpcError) as excinfo:
        future.result(timeout=SERVING["max_timeout_s"] + 15)  # not grpc.FutureTimeoutError
    error: grpc.RpcError = excinfo.value
    assert error.code() == grpc.StatusCode.ABORTED, error.details()
    assert "server-0 had not reported holding its share" in (error.details() or "")
    _wait_until_nothing_is_queued(fuzz.caller)


# ---------------------------------------------------------------- the families


def _server(data: st.DataObject) -> int:
    return data.draw(st.integers(0, 1), label="server")


def _token(data: st.DataObject) -> str:
    return data.draw(st.sampled_from(TOKENS), label="token")


def _deadline(data: st.DataObject) -> float | None:
    return data.draw(deadlines(), label="deadline")


def _one_or_all(fuzz: Fuzz, data: st.DataObject, name: str, body: Any) -> list[str | None]:
    """To one server, or the same call to every server (valid work then really runs)."""
    token, deadline = _token(data), _deadline(data)
    if data.draw(st.booleans(), label="to every server"):
        return fuzz.caller.both(name, body, token, deadline)
    return [fuzz.caller.send(name, _server(data), body, token, deadline)]


def _lookup(fuzz: Fuzz, data: st.DataObject, name: str, body: bytes, token: str) -> None:
    fuzz.caller.send(name, _server(data), body, token, _deadline(data))


@FUZZ
@given(data=st.data())
def test_raw_bytes_to_every_rpc(fuzz: Fuzz, baseline: Baseline, data: st.DataObject) -> None:
    fuzz.caller.family = "raw bytes"
    name = data.draw(st.sampled_from(sorted(RPCS)), label="rpc")
    good = _good_body(name)
    if RPCS[name].client_streaming:
        body: Any = data.draw(st.lists(raw_bodies(good), max_size=3), label="body")
    else:
        body = data.draw(raw_bodies(good), label="body")
    fuzz.caller.send(name, _server(data), body, _token(data), _deadline(data))


def _good_body(name: str) -> bytes:
    """A valid request of ``name`` (some raw-byte mutations start from it)."""
    good: dict[str, Any] = {
        "Inference/Predict": inference_pb2.PredictRequest(
            request_id="r", model_id=MODEL, input=exact_share((1, FEATURES))
        ),
        "ModelRegistry/GetModel": registry_pb2.GetModelRequest(model_id=MODEL),
        "Training/Evaluate": training_pb2.EvaluateRequest(
            request_id="e", model_id=MODEL, dataset_id=DATASET
        ),
        "Coordinator/Link": coordinator_pb2.PartyMessage(
            hello=coordinator_pb2.Hello(rank=0, role="party")
        ),
        "Health/Check": health_pb2.HealthCheckRequest(service="ppml.v1.Inference"),
    }
    message = good.get(name)
    return message.SerializeToString() if message is not None else b""


@FUZZ
@given(data=st.data())
def test_model_registry(fuzz: Fuzz, baseline: Baseline, data: st.DataObject) -> None:
    fuzz.caller.family = "model registry"
    held = fuzz.held
    name = data.draw(
        st.sampled_from(["UploadModel", "ListModels", "GetModel", "DeleteModel", "ExportModel"])
    )
    if name == "UploadModel":
        upload = data.draw(upload_model_requests(held), label="request")
        body = upload.SerializeToString()
        if "OK" in _one_or_all(fuzz, data, f"ModelRegistry/{name}", body):
            held.models.append(upload.model_id)
        return
    token = _token(data)
    if name == "ListModels":
        request: Any = registry_pb2.ListModelsRequest()
    else:
        model_id = data.draw(lookup_ids(held.models), label="model_id")
        protected = model_id in (MODEL, TRAINED) and token in ("client", "analyst")
        if name == "DeleteModel" and protected:
            model_id = fresh_id()  # a client may delete a model; keep the ones checked at the end
        request = getattr(registry_pb2, f"{name}Request")(model_id=model_id)
    _lookup(fuzz, data, f"ModelRegistry/{name}", request.SerializeToString(), token)


@FUZZ
@given(data=st.data())
def test_inference(fuzz: Fuzz, baseline: Baseline, data: st.DataObject) -> None:
    fuzz.caller.family = "inference"
    request = data.draw(predict_requests(fuzz.held), label="request")
    fuzz.held.requests.append(request.request_id)
    _one_or_all(fuzz, data, "Inference/Predict", request.SerializeToString())


@FUZZ
@given(data=st.data())
def test_dataset_registry(fuzz: Fuzz, baseline: Baseline, data: st.DataObject) -> None:
    fuzz.caller.family = "dataset registry"
    held = fuzz.held
    name = data.draw(
        st.sampled_from(["UploadDataset", "ListDatasets", "GetDataset", "DeleteDataset"])
    )
    if name == "UploadDataset":
        chunks = data.draw(upload_streams(held), label="chunks")
        body = [chunk.SerializeToString() for chunk in chunks]
        if "OK" in _one_or_all(fuzz, data, f"DatasetRegistry/{name}", body):
            held.datasets.append(chunks[0].header.dataset_id)
        return
    token = _token(data)
    if name == "ListDatasets":
        request: Any = datasets_pb2.ListDatasetsRequest()
    else:
        dataset_id = data.draw(lookup_ids(held.datasets), label="dataset_id")
        if name == "DeleteDataset" and dataset_id == DATASET and token == "client":
            dataset_id = fresh_id()  # its owner may delete it; keep the one checked at the end
        request = getattr(datasets_pb2, f"{name}Request")(dataset_id=dataset_id)
    _lookup(fuzz, data, f"DatasetRegistry/{name}", request.SerializeToString(), token)


@FUZZ
@given(data=st.data())
def test_training(fuzz: Fuzz, baseline: Baseline, data: st.DataObject) -> None:
    fuzz.caller.family = "training"
    held = fuzz.held
    name = data.draw(
        st.sampled_from(
            ["StartTraining", "GetJob", "ListJobs", "WatchJob", "CancelJob", "Evaluate"]
        )
    )
    if name == "StartTraining":  # to one server only: valid on every server, it would train
        start = data.draw(start_training_requests(held), label="request")
        body = start.SerializeToString()
        token, deadline = _token(data), _deadline(data)
        if fuzz.caller.send(f"Training/{name}", _server(data), body, token, deadline) == "OK":
            held.jobs.append(start.job_id)
        return
    if name == "Evaluate":
        evaluate = data.draw(evaluate_requests(held), label="request")
        _one_or_all(fuzz, data, f"Training/{name}", evaluate.SerializeToString())
        return
    if name == "ListJobs":
        request: Any = training_pb2.ListJobsRequest()
    else:
        job_id = data.draw(lookup_ids(held.jobs), label="job_id")
        request = getattr(training_pb2, f"{name}Request")(job_id=job_id)
    _lookup(fuzz, data, f"Training/{name}", request.SerializeToString(), _token(data))


@FUZZ
@given(data=st.data())
def test_status_and_health(fuzz: Fuzz, baseline: Baseline, data: st.DataObject) -> None:
    fuzz.caller.family = "status and health"
    name = data.draw(
        st.sampled_from(["Status/GetStatus", "Health/Check", "Health/Watch", "Health/List"])
    )
    if name in ("Health/Check", "Health/Watch"):
        service = data.draw(
            st.one_of(st.sampled_from(["", "ppml.v1.Inference", "ppml.v1.Nope"]), texts()),
            label="service",
        )
        body = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    else:
        body = data.draw(st.one_of(st.just(b""), st.binary(max_size=40)), label="body")
    _lookup(fuzz, data, name, body, _token(data))


@FUZZ
@given(data=st.data())
def test_coordinator_link(fuzz: Fuzz, baseline: Baseline, data: st.DataObject) -> None:
    fuzz.caller.family = "coordinator link"
    messages = data.draw(st.lists(party_messages(world_size=2), max_size=4), label="messages")
    body = [m.SerializeToString() for m in messages]
    token = data.draw(st.sampled_from(["peer"] * 3 + list(TOKENS)), label="token")
    server = data.draw(st.sampled_from([0, 0, 0, 1]), label="server")  # only rank 0 leads
    fuzz.caller.send("Coordinator/Link", server, body, token, _deadline(data))


# ---------------------------------------------------------------- garbage and names

STRING_FIELDS = client_string_fields()
CLIENT_TOKENS = ("client", "analyst")  # the federations' participants; names reach the checks
NAME_DEADLINE_S = 30.0  # a refusal is quick; a long deadline keeps DEADLINE_EXCEEDED out


def _upload_chunks(held: Held) -> list[Message]:
    header = datasets_pb2.DatasetHeader(
        dataset_id=fresh_id(), name="fuzzed", rows=4, feature_shape=UPLOAD_FEATURES, num_classes=2
    )
    first = datasets_pb2.UploadDatasetChunk(
        header=header, features=exact_share((2, *UPLOAD_FEATURES)), labels=exact_share((2, 2))
    )
    second = datasets_pb2.UploadDatasetChunk(
        features=exact_share((2, *UPLOAD_FEATURES)), labels=exact_share((2, 2))
    )
    return [first, second]


def _good_request(field: StringField, held: Held) -> Message:
    """A request of ``field``'s RPC the servers would accept, where one is easy to make
    (a bad string in it must still be refused before any work); a bare one otherwise."""
    architecture = good_architecture(held)
    good: dict[str, Any] = {
        "ModelRegistry/UploadModel": lambda: registry_pb2.UploadModelRequest(
            model_id=fresh_id(),
            name="fuzzed",
            architecture=architecture,
            parameters=exact_parameters(architecture),
        ),
        "Inference/Predict": lambda: inference_pb2.PredictRequest(
            request_id=fresh_id(), model_id=MODEL, input=exact_share((1, FEATURES))
        ),
        "Training/Evaluate": lambda: training_pb2.EvaluateRequest(
            request_id=fresh_id(), model_id=MODEL, dataset_id=DATASET
        ),
        "Training/StartTraining": lambda: training_pb2.StartTrainingRequest(
            job_id=fresh_id(),
            model_id=fresh_id(),
            architecture=architecture,
            initial_parameters=exact_parameters(architecture),
            spec=training_pb2.TrainingSpec(
                dataset_ids=[DATASET],
                epochs=1,
                batch_size=ROWS,
                lr=0.1,
                loss="cross_entropy",
                optimizer="sgd",
                seed=1,
            ),
        ),
        "Federation/SubmitUpdate": lambda: federation_pb2.SubmitUpdateRequest(
            federation_id=FED_MPC,
            round=1,
            update=exact_parameters(held.federation_architecture or architecture),
            weight=exact_share((1,)),
        ),
        "DatasetRegistry/UploadDataset": lambda: _upload_chunks(held)[0],
    }
    make = good.get(field.method)
    return make() if make is not None else field.request()


def _body(field: StringField, request: Message, held: Held) -> Any:
    if field.client_streaming:  # the header chunk (with the string), then a data chunk
        return [request.SerializeToString(), _upload_chunks(held)[1].SerializeToString()]
    return request.SerializeToString()


def _send_string(
    fuzz: Fuzz, data: st.DataObject, field: StringField, request: Message, expect: str | None
) -> None:
    body = _body(field, request, fuzz.held)
    token = data.draw(st.sampled_from(CLIENT_TOKENS), label="token")
    # an empty name may make a valid request: it goes to one server only (no MPC work)
    if expect is not None and data.draw(st.booleans(), label="to every server"):
        fuzz.caller.both(field.method, body, token, NAME_DEADLINE_S, expect)
    else:
        fuzz.caller.send(field.method, _server(data), body, token, NAME_DEADLINE_S, expect)


@FUZZ
@given(data=st.data())
def test_chunk_garbage(fuzz: Fuzz, baseline: Baseline, data: st.DataObject) -> None:
    """CKKS updates with broken chunks to the CKKS federation (its leader, mostly)."""
    fuzz.caller.family = "chunk garbage"
    held = fuzz.held
    request = federation_pb2.SubmitEncryptedUpdateRequest(
        federation_id=data.draw(st.one_of(st.just(FED_CKKS), ids(held.federations))),
        round=data.draw(st.sampled_from([1, 1, 1, 0, 2, 2**32 - 1]), label="round"),
        update=data.draw(encrypted_update_garbage(held), label="update"),
    )
    token = data.draw(st.sampled_from([*CLIENT_TOKENS * 3, "monitor", "none"]), label="token")
    server = data.draw(st.sampled_from([0, 0, 0, 1]), label="server")
    fuzz.caller.send(
        "Federation/SubmitEncryptedUpdate", server, request.SerializeToString(), token,
        _deadline(data),
    )  # fmt: skip


@FUZZ
@given(data=st.data())
def test_share_garbage(fuzz: Fuzz, baseline: Baseline, data: st.DataObject) -> None:
    """Share tensors that are off, in federation updates, predictions and uploads."""
    fuzz.caller.family = "share garbage"
    held = fuzz.held
    where = data.draw(
        st.sampled_from(["SubmitUpdate", "Predict", "UploadModel", "UploadDataset"]), label="rpc"
    )
    if where == "SubmitUpdate":
        submit = data.draw(submit_update_requests(held), label="request")
        token = data.draw(st.sampled_from(CLIENT_TOKENS), label="token")
        deadline = _deadline(data)
        if data.draw(st.booleans(), label="to every server"):
            fuzz.caller.both("Federation/SubmitUpdate", submit.SerializeToString(), token, deadline)
        else:
            body = submit.SerializeToString()
            fuzz.caller.send("Federation/SubmitUpdate", _server(data), body, token, deadline)
    elif where == "Predict":
        rows = data.draw(st.sampled_from([1, 2, 4]), label="rows")
        predict = inference_pb2.PredictRequest(
            request_id=fresh_id(),
            model_id=data.draw(st.sampled_from([MODEL, TRAINED]), label="model"),
            input=data.draw(garbage_shares((rows, FEATURES)), label="input"),
        )
        held.requests.append(predict.request_id)
        _one_or_all(fuzz, data, "Inference/Predict", predict.SerializeToString())
    elif where == "UploadModel":
        architecture = good_architecture(held)
        parameters = exact_parameters(architecture)
        index = data.draw(st.integers(0, len(parameters) - 1), label="parameter")
        shape = serde.architecture_from_proto(architecture).parameter_shapes()[
            parameters[index].name
        ]
        parameters[index].share.CopyFrom(data.draw(garbage_shares(shape), label="share"))
        upload = registry_pb2.UploadModelRequest(
            model_id=fresh_id(), name="fuzzed", architecture=architecture, parameters=parameters
        )
        if "OK" in _one_or_all(fuzz, data, "ModelRegistry/UploadModel", upload.SerializeToString()):
            held.models.append(upload.model_id)
    else:
        chunks = _upload_chunks(held)
        index = data.draw(st.integers(0, 1), label="chunk")
        part = data.draw(st.sampled_from(["features", "labels"]), label="part")
        good = (2, *UPLOAD_FEATURES) if part == "features" else (2, 2)
        getattr(chunks[index], part).CopyFrom(data.draw(garbage_shares(good), label="share"))
        body = [chunk.SerializeToString() for chunk in chunks]
        if "OK" in _one_or_all(fuzz, data, "DatasetRegistry/UploadDataset", body):
            held.datasets.append(chunks[0].header.dataset_id)


@FUZZ
@given(data=st.data())
def test_names(fuzz: Fuzz, baseline: Baseline, data: st.DataObject) -> None:
    """A bad name in any string field of any client RPC: INVALID_ARGUMENT with a code."""
    fuzz.caller.family = "names"
    field = data.draw(st.sampled_from(STRING_FIELDS), label="field")
    value = data.draw(st.one_of(bad_names(), st.just("")), label="name")
    if value:
        base = _good_request(field, fuzz.held) if data.draw(st.booleans()) else field.request()
    else:  # an empty name in a valid request could start work: a bare request only
        base = field.request()
    _send_string(fuzz, data, field, field.set(base, value), "INVALID_ARGUMENT" if value else None)


@FUZZ
@given(data=st.data())
def test_long_strings(fuzz: Fuzz, baseline: Baseline, data: st.DataObject) -> None:
    """20 KB in one string field, or in every one: INVALID_ARGUMENT with a code."""
    fuzz.caller.family = "long strings"
    field = data.draw(st.sampled_from(STRING_FIELDS), label="field")
    value = data.draw(long_strings(), label="value")
    base = _good_request(field, fuzz.held) if data.draw(st.booleans()) else field.request()
    if data.draw(st.booleans(), label="every string field"):
        request = every_string(field.set(base, value), value)
    else:
        request = field.set(base, value)
    _send_string(fuzz, data, field, request, "INVALID_ARGUMENT")


# ---------------------------------------------------------------- afterwards


def _cancel_leftover_jobs(caller: Caller) -> None:
    """Jobs started on one server only wait 60 s for the other; their owners cancel them."""
    for channel in caller.channels:
        reply = channel.unary_unary("/ppml.v1.Training/ListJobs")(
            b"", timeout=10, metadata=caller.metadata("client")
        )
        for job in training_pb2.ListJobsResponse.FromString(reply).jobs:
            if job.state in (training_pb2.JOB_STATE_QUEUED, training_pb2.JOB_STATE_RUNNING):
                request = training_pb2.CancelJobRequest(job_id=job.job_id).SerializeToString()
                metadata = caller.metadata(OWNER_TOKEN[job.owner])
                channel.unary_unary("/ppml.v1.Training/CancelJob")(
                    request, timeout=60, metadata=metadata
                )


@dataclass(frozen=True, repr=False)
class CkksMaterial:
    """A CKKS model of the client's, its stored keys, and good bytes to mutate."""

    model_id: str
    fingerprint: str
    ciphertext: bytes  # one image, single layout, under the client's keys
    relin: bytes  # the head of the client's relinearisation keys
    plan: bytes
    expected: np.ndarray

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("CkksMaterial(...)")


HE_MODEL = "fuzz-he"


@pytest.fixture(scope="module")
def he_material(fuzz: Fuzz) -> Iterator[CkksMaterial]:
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 4), Square(), torch.nn.Linear(4, 2))
    x = np.linspace(-1, 1, FEATURES)[None, :]
    with Cluster.from_config(fuzz.caller.local.config_path) as sdk:
        sdk.he_register(model, (FEATURES,), model_id=HE_MODEL)
        fingerprint = sdk.he_upload_keys()
        keys = sdk._he_keys("n8192-d5")
        plan = compile_plan(model, (FEATURES,))
        where = he_layout.input_layout(plan, "single", keys.params.slots)
        feats = he_layout.input_features(plan, x)
        blob = keys.encrypt(he_layout.pack(where, feats, keys.params.slots)[0])
        yield CkksMaterial(
            HE_MODEL,
            fingerprint,
            blob,
            keys.public_parts()["relin_keys"][:200_000],
            plan.to_bytes(),
            plan.forward(x),
        )


def _mutated(good: bytes) -> st.SearchStrategy[bytes]:
    def flip(args: tuple[int, list[tuple[int, int]]]) -> bytes:
        cut, flips = args
        out = bytearray(good[: max(1, len(good) - cut)])
        for pos, value in flips:
            out[pos % len(out)] = value
        return bytes(out)

    flips = st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), max_size=6)
    return st.one_of(
        st.just(good),
        st.tuples(st.sampled_from([0, 0, 0, 1, 17, len(good) // 2]), flips).map(flip),
        st.binary(max_size=2048),
        st.just(good + bytes(64)),
    )


@FUZZ
@given(data=st.data())
def test_ckks_garbage(
    fuzz: Fuzz, baseline: Baseline, he_material: CkksMaterial, data: st.DataObject
) -> None:
    """CKKS inference with mutated ciphertexts, keys and plans, and odd headers."""
    fuzz.caller.family = "ckks garbage"
    rpc = data.draw(st.sampled_from(["Predict"] * 4 + ["UploadContext", "RegisterModel"]))
    token = data.draw(st.sampled_from(["client"] * 4 + ["analyst", "monitor", "none"]))
    server = data.draw(st.sampled_from([0, 0, 0, 1]), label="server")
    if rpc == "Predict":
        request = he_pb2.HePredictRequest(
            model_id=data.draw(
                st.sampled_from([he_material.model_id, he_material.model_id, fresh_id()])
            ),
            layout=data.draw(st.sampled_from(["single", "single", "batch", "", "x" * 30])),
            context_fingerprint=data.draw(
                st.sampled_from([he_material.fingerprint] * 3 + ["", "0" * 64])
            ),
            rows=data.draw(st.sampled_from([1, 1, 1, 0, 4, 5, 2**32 - 1])),
            ciphertexts=data.draw(st.lists(_mutated(he_material.ciphertext), max_size=3)),
        )
        body: Any = request.SerializeToString()
    elif rpc == "UploadContext":
        header = he_pb2.ContextChunk(
            param_set=data.draw(st.sampled_from(["n8192-d5", "n8192-d5", "n16384-d8", "zz"])),
            poly_modulus_degree=data.draw(st.sampled_from([8192, 8192, 4096, 0])),
            coeff_mod_bit_sizes=data.draw(
                st.sampled_from([[38, 28, 28, 28, 28, 28, 40], [60] * 5, []])
            ),
        )
        parts = data.draw(
            st.lists(
                st.builds(
                    lambda part, blob: he_pb2.ContextChunk(part=part, data=blob),
                    st.sampled_from(["relin_keys", "galois_keys", "secret_key", "x"]),
                    _mutated(he_material.relin),
                ),
                max_size=3,
            )
        )
        body = [m.SerializeToString() for m in [header, *parts]]
    else:
        body = he_pb2.RegisterHeModelRequest(
            model_id=fresh_id(),
            param_set=data.draw(st.sampled_from(["n8192-d5", "n16384-d8", ""])),
            plan=data.draw(_mutated(he_material.plan)),
        ).SerializeToString()
    fuzz.caller.send(f"HeInference/{rpc}", server, body, token, _deadline(data))


def test_ckks_still_serves_after_fuzzing(fuzz: Fuzz, he_material: CkksMaterial) -> None:
    with Cluster.from_config(fuzz.caller.local.config_path) as sdk:
        x = np.linspace(-1, 1, FEATURES)[None, :]
        got = sdk.predict_ckks(he_material.model_id, x).output.double().numpy()
        assert np.abs(got - he_material.expected).max() < 1e-2
        assert (
            sdk._he_call(
                0,
                lambda s: s.he.GetContext(
                    he_pb2.GetContextRequest(param_set="n8192-d5"),
                    timeout=30,
                    metadata=sdk._metadata,
                ),
            ).fingerprint
            == he_material.fingerprint
        )  # no fuzzed upload replaced the stored keys


def test_the_cluster_is_intact_after_fuzzing(
    fuzz: Fuzz, baseline: Baseline, capsys: pytest.CaptureFixture[str]
) -> None:
    caller = fuzz.caller
    caller.finish()
    elapsed = time.monotonic() - caller.started
    caller.check_alive()
    caller.local.wait_serving(30)
    _cancel_leftover_jobs(caller)
    _wait_until_nothing_is_queued(caller)
    epochs = [_status(caller, s).mpc_epoch for s in range(len(caller.channels))]
    assert epochs == baseline.epochs, "the MPC session restarted"
    assert _listings(caller) == baseline.listings
    assert _record_files(caller.local) == baseline.files
    x, y = _data()
    with torch.no_grad():
        expected = _plaintext_model()(torch.from_numpy(x))
    with Cluster.from_config(caller.local.config_path) as sdk:
        predicted = sdk.predict(MODEL, torch.from_numpy(x))
        assert (predicted - expected).abs().max().item() < 1e-2
        trained = sdk.predict(TRAINED, torch.from_numpy(x[:4])).numpy()
        np.testing.assert_allclose(trained, baseline.trained_prediction, atol=1e-3)
        correct = int((expected.argmax(1).numpy() == y).sum())
        assert sdk.evaluate(MODEL, DATASET).correct == correct
    with capsys.disabled():
        _print_summary(caller, elapsed)


def _print_summary(caller: Caller, elapsed: float) -> None:
    print(
        f"\nRPC fuzz: {caller.calls} calls, {caller.messages} request messages, "
        f"{EXAMPLES} examples per family, {elapsed:.0f} s (cluster start excluded)"
    )
    for family, count in sorted(caller.per_family.items()):
        print(f"  family {family:<20} {count} calls")
    for code, count in caller.statuses.most_common():
        print(f"  {code:<20} {count}")
    covered = {name for name, _ in caller.per_rpc}
    print(f"  RPCs called: {len(covered)} of {len(RPCS)}")
    if FULL:
        for name in sorted(RPCS):
            codes = {c: n for (rpc, c), n in sorted(caller.per_rpc.items()) if rpc == name}
            print(f"  {name:<32} {codes}")
    assert covered == set(RPCS), f"never called: {sorted(set(RPCS) - covered)}"
