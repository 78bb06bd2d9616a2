"""A federation's result model id is reserved on the server from its creation to its end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ppml.proto.domain import federations as fed
from ppml.proto.domain.architecture import Architecture, Linear
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.store.federations import FEDERATION_CODEC, FederationManager
from ppml.servers.store.models import ModelRegistry
from ppml.servers.store.storage import MemoryModelStore, MemoryShareStore

ARCH = Architecture((Linear(3, 2, True),), (3,), (2,))
SPEC = fed.FederationSpec(participants=("a", "b"), rounds=1, min_participants=1)


def _zeros() -> dict[str, np.ndarray]:
    return {n: np.zeros(s, dtype=np.int64) for n, s in ARCH.parameter_shapes().items()}


def _manager(
    models: ModelRegistry, store: MemoryShareStore[fed.FederationInfo] | None = None
) -> FederationManager:
    store = store or MemoryShareStore(FEDERATION_CODEC)
    return FederationManager("leader", 0, store, models, lambda _: True)


def _squat(models: ModelRegistry, who: str = "mallory") -> PpmlError:
    with pytest.raises(PpmlError) as excinfo:
        models.upload("f1-model", "", who, ARCH, _zeros())
    assert excinfo.value.code is ErrorCode.MODEL_EXISTS
    return excinfo.value


def test_the_result_id_is_reserved_until_the_model_is_registered() -> None:
    models = ModelRegistry(MemoryModelStore())
    manager = _manager(models)
    manager.create("f1", "f1-model", "", "owner", ARCH, SPEC, _zeros())
    assert "reserved by federation 'f1'" in str(_squat(models))
    _squat(models, "owner")  # the owner's own upload too: only the federation registers it
    manager.close_round("f1", fed.RoundResult(1, ("a",), (), applied=True), _zeros())
    assert manager.get("f1", "owner").state is fed.FederationState.SUCCEEDED
    assert models.meta("f1-model").owner == "owner"
    assert models.ids.holder("f1-model") is None


def test_a_federation_that_ends_without_a_model_frees_its_id() -> None:
    models = ModelRegistry(MemoryModelStore())
    manager = _manager(models)
    manager.create("f1", "f1-model", "", "owner", ARCH, SPEC, _zeros())
    manager.end("f1", "cancelled", "cancelled by owner")
    assert models.upload("f1-model", "", "mallory", ARCH, _zeros()).owner == "mallory"


def test_a_ckks_result_stays_reserved_for_its_owner_across_a_restart() -> None:
    store: MemoryShareStore[fed.FederationInfo] = MemoryShareStore(FEDERATION_CODEC)
    spec = dataclasses.replace(SPEC, backend="ckks", ckks_fingerprint="0" * 64)
    info = fed.FederationInfo(
        federation_id="f1",
        model_id="f1-model",
        name="",
        owner="owner",
        architecture=ARCH,
        spec=spec,
        round_deadline_unix_s=0.0,
        noise_multiplier=0.0,
        created_unix_ms=1,
    )
    store.put(dataclasses.replace(info, state=fed.FederationState.SUCCEEDED), {})
    models = ModelRegistry(MemoryModelStore())  # a restarted server: nothing in memory
    _manager(models, store)
    _squat(models)
    assert models.upload("f1-model", "", "owner", ARCH, _zeros()).owner == "owner"
    assert models.ids.holder("f1-model") is None
