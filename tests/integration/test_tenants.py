"""Several identities on one cluster: ownership, grants, consent, quotas and limits.

Two client identities of a real cluster (``local-user``, the default token,
and ``analyst``) try each thing a shared service must stop one tenant doing
to another. Every rule is enforced by every server on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from ppml.client import Cluster, PermissionDenied
from ppml.client.deploy.local import LocalCluster
from ppml.client.errors import InvalidModel, ModelExists, PpmlClientError, ResourceExhausted
from ppml.proto.deploy.channels import client_channel
from ppml.proto.domain import commands as cmd
from ppml.proto.wire import serde
from ppml.v1 import coordinator_pb2_grpc

LIMITS = {
    "max_models_per_identity": 11,
    "max_evaluations": 2,
    "min_batch_size": 8,
    "max_activations": 200_000,  # at 64 rows per batch: at most 3,125 values per row
    "upload_max_mb": 1,
}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    directory = tmp_path_factory.mktemp("tenants")
    with LocalCluster(parties=2, directory=directory, limits=LIMITS) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def owner(local: LocalCluster) -> Iterator[Cluster]:
    with Cluster.from_config(local.config_path) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def analyst(local: LocalCluster) -> Iterator[Cluster]:
    token = (local.directory / "secrets" / "analyst.token").read_text().strip()
    with Cluster.from_config(local.config_path, token=token) as cluster:
        yield cluster


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)  # test data, not secret
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)


X1 = torch.full((1, 4), 0.25)


def test_only_the_owner_deletes_and_nobody_else_can_take_the_id(
    owner: Cluster, analyst: Cluster
) -> None:
    model = _mlp(1)
    model_id = owner.share_model(model, X1, model_id="victim-model")
    with pytest.raises(PermissionDenied):
        analyst.delete_model(model_id)
    # the analyst's upload under the same id fails everywhere and must not remove the
    # owner's model on its way out (the SDK only undoes its own uploads)
    with pytest.raises(PpmlClientError):
        analyst.share_model(_mlp(2), X1, model_id="victim-model")
    with torch.no_grad():
        assert (owner.predict(model_id, X1) - model(X1)).abs().max().item() < 1e-3
    assert {m.meta.owner for m in owner.list_models() if m.meta.model_id == model_id} == {
        "local-user"
    }


def test_predictions_need_the_owners_grant_which_can_be_revoked(
    owner: Cluster, analyst: Cluster
) -> None:
    model = _mlp(3)
    model_id = owner.share_model(model, X1)
    with pytest.raises(PermissionDenied, match="not granted"):
        analyst.predict(model_id, X1)
    assert owner.grant_model(model_id, "analyst").allowed == ("analyst",)
    with torch.no_grad():
        assert (analyst.predict(model_id, X1) - model(X1)).abs().max().item() < 1e-3
    owner.revoke_model(model_id, "analyst")
    with pytest.raises(PermissionDenied):
        analyst.predict(model_id, X1)
    with pytest.raises(PermissionDenied):  # only the owner grants
        analyst.grant_model(model_id, "analyst")


def test_request_ids_are_per_identity(owner: Cluster, analyst: Cluster) -> None:
    model = _mlp(4)
    model_id = owner.share_model(model, X1, allow=("analyst",))
    inputs = {"owner": torch.full((1, 4), 0.5), "analyst": torch.full((1, 4), -0.5)}
    results: dict[str, Any] = {}

    def send(name: str, client: Cluster) -> None:
        try:  # both use the same request id at the same time
            results[name] = client.predict_detailed(model_id, inputs[name], request_id="same-id")
        except Exception as exc:  # asserted below
            results[name] = exc

    threads = [
        threading.Thread(target=send, args=("owner", owner)),
        threading.Thread(target=send, args=("analyst", analyst)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with torch.no_grad():
        for name, x in inputs.items():
            assert not isinstance(results[name], Exception), results[name]
            assert (results[name].output - model(x)).abs().max().item() < 1e-3


def test_data_sets_are_private_until_granted_and_exports_need_every_release(
    owner: Cluster, analyst: Cluster
) -> None:
    x, y = _rows(64, seed=1)
    private = analyst.share_dataset(x, y, name="analyst-rows")  # default: owner only
    with pytest.raises(PermissionDenied):
        owner.train(_mlp(5), [private], epochs=1, batch_size=16, lr=0.1)
    analyst.set_dataset_access(private, allow=["local-user"])  # may train, not release
    mine = owner.share_dataset(*_rows(64, seed=2), name="owner-rows")
    job = owner.train(_mlp(5), [mine, private], epochs=1, batch_size=16, lr=0.1)
    model_id = job.result(timeout=300)
    status = job.status().info
    assert [(s.dataset_id, s.owner) for s in status.sources] == [
        (mine, "local-user"),
        (private, "analyst"),
    ]
    with pytest.raises(PermissionDenied, match="analyst"):
        owner.export_model(model_id)  # the analyst has not released it
    third = owner.share_dataset(*_rows(32, seed=3), name="other-rows")
    with pytest.raises(PermissionDenied, match="released"):
        owner.evaluate(model_id, third)  # other data: needs the release too
    assert owner.evaluate(model_id, mine).rows == 64  # its own training data: fine
    # a release granted after training does not change the model's recorded consent ...
    analyst.set_dataset_access(private, allow=["local-user"], release=["local-user"])
    with pytest.raises(PermissionDenied):
        owner.export_model(model_id)
    # ... but a model trained under it can be exported
    job = owner.train(_mlp(6), [mine, private], epochs=1, batch_size=16, lr=0.1)
    assert set(owner.export_model(job.result(timeout=300)).weights) == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    }


def test_evaluations_of_a_model_on_a_data_set_are_capped(owner: Cluster) -> None:
    data = owner.share_dataset(*_rows(32, seed=4), name="capped")
    model_id = owner.share_model(_mlp(7), X1)
    for _ in range(int(LIMITS["max_evaluations"])):
        owner.evaluate(model_id, data)
    with pytest.raises(ResourceExhausted, match="evaluated"):
        owner.evaluate(model_id, data)


def test_tiny_batches_are_refused(owner: Cluster) -> None:
    data = owner.share_dataset(*_rows(32, seed=5), name="tiny-batches")
    with pytest.raises(PpmlClientError, match="at least 8"):
        owner.train(_mlp(8), [data], epochs=1, batch_size=1, lr=0.1)


def test_model_size_and_count_are_bounded(owner: Cluster, analyst: Cluster) -> None:
    wide = torch.nn.Sequential(torch.nn.Linear(4, 4000), torch.nn.ReLU(), torch.nn.Linear(4000, 3))
    with pytest.raises(InvalidModel, match="too large"):
        owner.share_model(wide, X1)
    # the analyst fills its own quota; the owner's models are untouched by it
    theirs = [
        analyst.share_model(_mlp(index), X1)
        for index in range(int(LIMITS["max_models_per_identity"]))
    ]
    with pytest.raises(ResourceExhausted, match="models"):
        analyst.share_model(_mlp(99), X1)
    owner.share_model(_mlp(9), X1)
    analyst.delete_model(theirs[0])  # deleting frees the quota
    theirs[0] = analyst.share_model(_mlp(98), X1)
    for model_id in theirs:
        analyst.delete_model(model_id)


def test_an_upload_over_the_byte_budget_is_refused_before_any_row(owner: Cluster) -> None:
    x, y = _rows(20_000, seed=6)  # 20,000 x (4 + 3) x 8 bytes > 1 MB
    with pytest.raises(ResourceExhausted, match="MB"):
        owner.share_dataset(x, y, name="too-big")


def _link(local: LocalCluster, token_file: Path, hello: cmd.Hello) -> grpc.RpcError:
    channel = client_channel(local.config.leader.grpc_address, local.config.ca_cert)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    token = token_file.read_text().strip()
    try:
        stream = stub.Link(
            iter([serde.party_message_to_proto(hello)]),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as excinfo:
            for _ in stream:
                pass
        return excinfo.value
    finally:
        channel.close()


def test_a_link_rank_is_bound_to_its_peer_identity(local: LocalCluster, owner: Cluster) -> None:
    secrets = local.directory / "secrets"
    impostor = _link(local, secrets / "server-1.peer.token", cmd.Hello(2, "dealer", "x"))
    assert impostor.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "server-1" in (impostor.details() or "")
    client = _link(local, secrets / "client.token", cmd.Hello(1, "party", "x"))
    assert client.code() == grpc.StatusCode.PERMISSION_DENIED
    # the real links were not disturbed
    assert owner.health() == {"server-0": True, "server-1": True}


def test_another_tenants_request_cannot_touch_a_training_job(
    owner: Cluster, analyst: Cluster
) -> None:
    data = owner.share_dataset(*_rows(64, seed=7), name="long-job")
    job = owner.train(_mlp(10), [data], epochs=3, batch_size=16, lr=0.1)
    # an evaluation (or prediction) under the victim's job id is the analyst's own request
    theirs = analyst.share_dataset(*_rows(32, seed=8), name="theirs")
    their_model = analyst.share_model(_mlp(11), X1)
    assert analyst.evaluate(their_model, theirs, request_id=job.job_id).rows == 32
    with pytest.raises(PermissionDenied):
        analyst.job(job.job_id).cancel()
    assert job.result(timeout=300)  # the owner's job ran to the end


def test_nobody_can_squat_the_model_id_of_a_running_job(owner: Cluster, analyst: Cluster) -> None:
    data = owner.share_dataset(*_rows(64, seed=9), name="squatted-job")
    model = _mlp(13)
    job = owner.train(model, [data], epochs=2, batch_size=16, lr=0.1)
    model_id = analyst.job(job.job_id).status().info.model_id  # public to any tenant
    with pytest.raises(ModelExists, match=f"reserved by training job '{job.job_id}'"):
        analyst.share_model(_mlp(14), X1, model_id=model_id)
    assert job.result(timeout=300) == model_id  # the victim's job registered its model
    assert {m.meta.owner for m in owner.list_models() if m.meta.model_id == model_id} == {
        "local-user"
    }
    owner.predict(model_id, X1)


def test_nobody_can_squat_the_model_id_of_a_running_federation(
    owner: Cluster, analyst: Cluster
) -> None:
    handle = owner.create_federation(
        _mlp(15), ["analyst"], rounds=1, round_deadline_s=60, sample_input=X1
    )
    model_id = analyst.federation(handle.federation_id).info().model_id
    with pytest.raises(ModelExists, match=f"reserved by federation '{handle.federation_id}'"):
        analyst.share_model(_mlp(16), X1, model_id=model_id)
    report = analyst.join_federation(handle.federation_id, _rows(32, seed=10), timeout=120)
    assert report.submitted == (1,)
    assert handle.result(timeout=120) == model_id
    assert {m.meta.owner for m in owner.list_models() if m.meta.model_id == model_id} == {
        "local-user"
    }
    owner.predict(model_id, X1)


def test_servers_holding_different_models_under_one_id_refuse_to_run_them(
    local: LocalCluster, owner: Cluster
) -> None:
    """A client that uploads a different model to each server gets an error, and the cluster
    stays up (the fuzzer found that mismatched MPC steps used to take the leader down)."""
    from ppml.client.model_export import export_model
    from ppml.proto import shares
    from ppml.v1 import registry_pb2

    uploads = []
    for rank, hidden in enumerate((8, 5)):
        torch.manual_seed(rank)
        model = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3)
        )
        architecture, weights = export_model(model, X1)
        part = shares.share_named(weights, 2)[rank]
        uploads.append(  # one upload attempt: kept once both servers hold their part
            owner._servers[rank].registry.UploadModel.future(
                registry_pb2.UploadModelRequest(
                    model_id="two-faced",
                    architecture=serde.architecture_to_proto(architecture),
                    parameters=serde.named_shares_to_proto(part),
                    upload_id="two-faced-upload",
                ),
                timeout=30,
                metadata=owner._metadata,
            )
        )
    for upload in uploads:
        upload.result()
    with pytest.raises(PpmlClientError, match="different models"):
        owner.predict("two-faced", X1)
    owner.delete_model("two-faced")  # the owner is at its model quota by now
    model = _mlp(12)
    model_id = owner.share_model(model, X1)
    with torch.no_grad():
        assert (owner.predict(model_id, X1) - model(X1)).abs().max().item() < 1e-3
