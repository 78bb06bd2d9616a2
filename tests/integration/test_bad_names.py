"""Names and client strings at a real cluster: refused before any work, on every server.

Every string field of every client RPC (walked from the proto descriptors, so
a new field is covered without a change here) gets a control character, a
right-to-left override, a NUL, 201 characters and 20 KB; each server answers
INVALID_ARGUMENT with ``ppml-error-code: INVALID_NAME`` and a short message
(a 20 KB string used to come back as RESOURCE_EXHAUSTED "Stream removed").
A training job with a 201-character result name is refused at StartTraining,
and no job is created; the SDK refuses the same before sending.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import torch
from fuzz_messages import StringField, client_string_fields
from google.protobuf.message import Message

from ppml.client import Cluster, InvalidName
from ppml.client.deploy.local import LocalCluster
from ppml.proto.deploy.channels import client_channel
from ppml.proto.errors import ERROR_CODE_KEY
from ppml.proto.names import MAX_NAME_CHARS
from ppml.v1 import training_pb2

BAD = {
    "bel": "model\x07",
    "nul": "a\x00b",
    "rtl-override": "\u202egnp.exe",
    "newline": "line\nbreak",
    "201-chars": "x" * (MAX_NAME_CHARS + 1),
    "20-kb": "x" * 20_000,
    "20-kb-emoji": "🙂" * 5_000,
}


FIELDS = client_string_fields()  # every string field of every client RPC


@pytest.fixture(scope="module")
def channels(local2: LocalCluster) -> Iterator[list[grpc.Channel]]:
    config = local2.config
    opened = [client_channel(p.grpc_address, config.ca_cert) for p in config.parties]
    yield opened
    for channel in opened:
        channel.close()


@pytest.fixture(scope="module")
def metadata(local2: LocalCluster) -> tuple[tuple[str, str], ...]:
    token = (local2.directory / "secrets" / "client.token").read_text().strip()
    return (("authorization", f"Bearer {token}"),)


def _call(
    channel: grpc.Channel, field: StringField, request: Message, metadata: object
) -> grpc.RpcError | None:
    body, path = request.SerializeToString(), f"/ppml.v1.{field.method}"
    try:
        if field.client_streaming:
            channel.stream_unary(path)(iter([body]), timeout=20, metadata=metadata)
        else:
            response = channel.unary_stream if "Watch" in field.method else channel.unary_unary
            reply = response(path)(body, timeout=20, metadata=metadata)
            if "Watch" in field.method:
                next(iter(reply))
    except grpc.RpcError as error:
        return error
    return None


def test_every_client_rpc_with_a_string_is_covered() -> None:
    methods = {f.method.split("/")[1] for f in FIELDS}
    assert {
        "UploadModel", "SetModelAccess", "UploadDataset", "SetDatasetAccess", "StartTraining",
        "Evaluate", "CreateFederation", "SubmitUpdate", "SubmitEncryptedUpdate", "Predict",
        "GetJob", "WatchJob", "GetFederation", "GetRound", "ExportModel",
    } <= methods  # fmt: skip
    paths = {str(f) for f in FIELDS}
    for expected in (
        "Training/StartTraining:name",
        "Training/StartTraining:spec.optimizer",
        "Training/StartTraining:initial_parameters.name",
        "Federation/CreateFederation:spec.strategy",
        "Federation/CreateFederation:spec.backend",
        "Federation/CreateFederation:spec.participants",
        "DatasetRegistry/UploadDataset:header.allowed",
        "ModelRegistry/UploadModel:allowed",
    ):
        assert expected in paths


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_string_in_any_field_is_refused_by_every_server(
    channels: list[grpc.Channel], metadata: object, kind: str
) -> None:
    failures = []
    for field in FIELDS:
        request = field.build(BAD[kind])
        for rank, channel in enumerate(channels):
            error = _call(channel, field, request, metadata)
            code = error.code() if error is not None else grpc.StatusCode.OK
            trailer = dict(error.trailing_metadata() or ()) if error is not None else {}
            details = error.details() or "" if error is not None else ""
            ok = (
                code == grpc.StatusCode.INVALID_ARGUMENT
                and trailer.get(ERROR_CODE_KEY) == "INVALID_NAME"
                and field.path[-1] in details
                and len(details) < 400
            )
            if not ok:
                failures.append(f"server-{rank} {field}: {code.name} {details[:120]!r}")
    assert not failures, "\n".join(failures)


def test_a_long_result_name_is_refused_at_start_and_no_job_is_created(
    channels: list[grpc.Channel], metadata: object, cluster2: Cluster
) -> None:
    x = torch.rand(16, 4)
    y = torch.randint(0, 2, (16,))
    dataset = cluster2.share_dataset(x.numpy(), y.numpy(), num_classes=2)
    model = torch.nn.Linear(4, 2)
    # the SDK refuses before sending anything
    with pytest.raises(InvalidName, match=r"name must be at most 200 characters, got 201"):
        cluster2.train(
            model, [dataset], epochs=1, batch_size=16, lr=0.1, name="x" * 201, job_id="long-name"
        )
    # a client without the SDK's check: every server refuses at StartTraining, before any work
    field = next(f for f in FIELDS if str(f) == "Training/StartTraining:name")
    for bad in ("x" * 201, "trained\u202e", "m\x00"):
        request = field.build(bad)
        assert isinstance(request, training_pb2.StartTrainingRequest)
        request.job_id, request.model_id = "long-name", "long-name-model"
        for channel in channels:
            error = _call(channel, field, request, metadata)
            assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert dict(error.trailing_metadata())[ERROR_CODE_KEY] == "INVALID_NAME"
    for channel in channels:
        get = channel.unary_unary("/ppml.v1.Training/GetJob")
        with pytest.raises(grpc.RpcError) as excinfo:
            get(
                training_pb2.GetJobRequest(job_id="long-name").SerializeToString(),
                timeout=10,
                metadata=metadata,
            )
        assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
    assert "long-name" not in {job.job_id for job in cluster2.list_jobs()}
    # a good name still trains, and keeps its name
    job = cluster2.train(model, [dataset], epochs=1, batch_size=16, lr=0.1, name="n" * 200)
    trained = job.result(timeout=120)
    assert cluster2.get_model(trained).name == "n" * 200


@pytest.mark.parametrize("kind", ["rtl-override", "20-kb"])
def test_the_sdk_refuses_bad_names_before_sending(cluster2: Cluster, kind: str) -> None:
    before = {m.meta.model_id for m in cluster2.list_models()}
    with pytest.raises(InvalidName):
        cluster2.share_model(torch.nn.Linear(4, 2), torch.zeros(1, 4), name=BAD[kind])
    with pytest.raises(InvalidName):
        cluster2.share_model(torch.nn.Linear(4, 2), torch.zeros(1, 4), allow=[BAD[kind]])
    with pytest.raises(InvalidName):
        cluster2.share_dataset(torch.rand(4, 3).numpy(), [0, 1, 0, 1], name=BAD[kind])
    assert {m.meta.model_id for m in cluster2.list_models()} == before
