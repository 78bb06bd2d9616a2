"""Model ids reserved for the results of jobs and federations (servers/store/model_ids.py)."""

from __future__ import annotations

import pytest

from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.store.model_ids import Claim, ModelIds

JOB = Claim("training job 'j1'", "alice")
CKKS = Claim("federation 'f1'", "alice", open_to_owner=True)


def _refused(call: object, *args: object) -> PpmlError:
    with pytest.raises(PpmlError) as excinfo:
        call(*args)  # type: ignore[operator]
    assert excinfo.value.code is ErrorCode.MODEL_EXISTS
    return excinfo.value


def test_a_reserved_id_is_refused_to_everyone_but_its_holder() -> None:
    ids = ModelIds(lambda _: False)
    ids.reserve("m", JOB)
    assert "training job 'j1'" in str(_refused(ids.reserve, "m", CKKS))
    for owner in ("mallory", "alice"):
        _refused(ids.for_upload, "m", owner, "")
    _refused(ids.for_upload, "m", "alice", "training job 'j2'")  # another holder
    assert ids.for_upload("m", "alice", JOB.holder) == (JOB.holder, False)
    ids.release("m", "training job 'j2'")  # not the holder: no effect
    assert ids.holder("m") == JOB
    ids.release("m", JOB.holder)
    assert ids.holder("m") is None


def test_an_existing_model_cannot_be_reserved() -> None:
    ids = ModelIds(lambda model_id: model_id == "taken")
    _refused(ids.reserve, "taken", JOB)
    assert ids.holder("taken") is None


def test_a_client_upload_holds_its_id_while_it_is_written() -> None:
    ids = ModelIds(lambda _: False)
    holder, transient = ids.for_upload("m", "mallory", "")
    assert transient
    assert "an upload in progress" in str(_refused(ids.reserve, "m", JOB))
    ids.release("m", holder)
    ids.reserve("m", JOB)


def test_a_reservation_open_to_its_owner_takes_only_the_owners_upload() -> None:
    ids = ModelIds(lambda _: False)
    ids.reserve("m", CKKS)
    _refused(ids.for_upload, "m", "mallory", "")
    assert ids.for_upload("m", "alice", "") == (CKKS.holder, False)
