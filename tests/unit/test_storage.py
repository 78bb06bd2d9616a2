"""Contract tests for every ppml.servers.store.storage backend: models, then any record kind."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest

from ppml.proto.domain import architecture as arch
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.shares import Ring, random_ring
from ppml.servers.store.storage import (
    MODEL_CODEC,
    FileModelStore,
    FileShareStore,
    MemoryModelStore,
    MemoryShareStore,
    ModelStore,
    RecordCodec,
    ShareStore,
)

INT64_MIN = np.iinfo(np.int64).min
INT64_MAX = np.iinfo(np.int64).max


def _architecture() -> arch.Architecture:
    return arch.Architecture(
        (arch.Linear(4, 3), arch.ReLU(), arch.Linear(3, 2, bias=False)), (4,), (2,)
    )


def _meta(model_id: str, created: int = 1_000) -> arch.ModelMeta:
    return arch.ModelMeta(model_id, f"name of {model_id}", "owner-a", _architecture(), created)


def _shares() -> dict[str, Ring]:
    shares = {k: random_ring(v) for k, v in _architecture().parameter_shapes().items()}
    shares["0.bias"][:] = [INT64_MIN, INT64_MAX, -1]
    return shares


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ModelStore:
    """Every backend; the contract tests below run once per backend."""
    if request.param == "memory":
        return MemoryModelStore()
    return FileModelStore(tmp_path)


def _assert_shares_equal(a: dict[str, Ring], b: dict[str, Ring]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == np.int64
        assert a[name].shape == b[name].shape
        np.testing.assert_array_equal(a[name], b[name])


# ---------------------------------------------------------------- contract


def test_empty_store(store: ModelStore) -> None:
    assert store.list() == []


def test_put_then_get(store: ModelStore) -> None:
    meta, shares = _meta("m1"), _shares()
    store.put(meta, shares)
    assert store.get_meta("m1") == meta
    assert store.get_meta("m1").parameter_count == meta.parameter_count
    _assert_shares_equal(store.get_shares("m1"), shares)
    assert store.list() == [meta]


def test_list_is_oldest_first(store: ModelStore) -> None:
    for model_id, created in [("b", 3_000), ("a", 1_000), ("c", 2_000)]:
        store.put(_meta(model_id, created), _shares())
    assert [m.model_id for m in store.list()] == ["a", "c", "b"]
    assert store.count() == 3
    store.delete("c")
    assert store.count() == 2


def test_put_existing_id_is_model_exists(store: ModelStore) -> None:
    original = _shares()
    store.put(_meta("m1"), original)
    with pytest.raises(PpmlError) as excinfo:
        store.put(_meta("m1", created=5), _shares())
    assert excinfo.value.code == ErrorCode.MODEL_EXISTS
    # the first model is untouched
    assert store.get_meta("m1").created_unix_ms == 1_000
    _assert_shares_equal(store.get_shares("m1"), original)


@pytest.mark.parametrize("operation", ["get_meta", "get_shares", "delete"])
def test_unknown_id_is_model_not_found(store: ModelStore, operation: str) -> None:
    store.put(_meta("m1"), _shares())
    with pytest.raises(PpmlError) as excinfo:
        getattr(store, operation)("other")
    assert excinfo.value.code == ErrorCode.MODEL_NOT_FOUND
    assert "other" in str(excinfo.value)


def test_delete(store: ModelStore) -> None:
    store.put(_meta("m1"), _shares())
    store.put(_meta("m2"), _shares())
    store.delete("m1")
    assert [m.model_id for m in store.list()] == ["m2"]
    for operation in ("get_meta", "get_shares", "delete"):
        with pytest.raises(PpmlError) as excinfo:
            getattr(store, operation)("m1")
        assert excinfo.value.code == ErrorCode.MODEL_NOT_FOUND
    # the id can be reused after deletion
    store.put(_meta("m1", created=9), _shares())
    assert store.get_meta("m1").created_unix_ms == 9


def test_shares_are_not_aliased(store: ModelStore) -> None:
    shares = _shares()
    kept = {k: v.copy() for k, v in shares.items()}
    store.put(_meta("m1"), shares)
    # the caller mutating its arrays after put does not change the stored model
    for value in shares.values():
        value[...] = 0
    first = store.get_shares("m1")
    _assert_shares_equal(first, kept)
    # mutating what get_shares returned does not change the stored model either
    for value in first.values():
        value[...] = 7
    second = store.get_shares("m1")
    _assert_shares_equal(second, kept)
    for name in second:
        assert not np.shares_memory(second[name], first[name])


def test_models_are_independent(store: ModelStore) -> None:
    a, b = _shares(), _shares()
    store.put(_meta("a"), a)
    store.put(_meta("b"), b)
    _assert_shares_equal(store.get_shares("a"), a)
    _assert_shares_equal(store.get_shares("b"), b)


# ---------------------------------------------------------------- files only


def test_file_store_survives_a_restart(tmp_path: Path) -> None:
    shares = _shares()
    FileModelStore(tmp_path).put(_meta("m1"), shares)
    FileModelStore(tmp_path).put(_meta("m2", created=2_000), _shares())
    restarted = FileModelStore(tmp_path)
    assert [m.model_id for m in restarted.list()] == ["m1", "m2"]
    assert restarted.get_meta("m1") == _meta("m1")
    _assert_shares_equal(restarted.get_shares("m1"), shares)
    restarted.delete("m2")
    assert [m.model_id for m in FileModelStore(tmp_path).list()] == ["m1"]


def test_file_store_cleans_leftover_temporary_folders(tmp_path: Path) -> None:
    FileModelStore(tmp_path).put(_meta("m1"), _shares())
    models = tmp_path / "models"
    leftover = models / ".tmp-crashed"
    leftover.mkdir()
    (leftover / "meta.pb").write_bytes(b"half-written")
    (leftover / "shares.npz").write_bytes(b"")
    restarted = FileModelStore(tmp_path)
    assert not leftover.exists()
    assert [m.model_id for m in restarted.list()] == ["m1"]


def test_file_store_list_ignores_temporary_and_incomplete_folders(tmp_path: Path) -> None:
    store = FileModelStore(tmp_path)
    store.put(_meta("m1"), _shares())
    (tmp_path / "models" / ".tmp-in-progress").mkdir()
    (tmp_path / "models" / "no-meta").mkdir()
    assert [m.model_id for m in store.list()] == ["m1"]
    assert store.count() == 1


def test_file_store_writes_no_pickles(tmp_path: Path) -> None:
    FileModelStore(tmp_path).put(_meta("m1"), _shares())
    with np.load(tmp_path / "models" / "m1" / "shares.npz", allow_pickle=False) as data:
        assert sorted(data.files) == sorted(_architecture().parameter_shapes())
        assert all(data[k].dtype == np.int64 for k in data.files)


def test_file_store_refuses_path_traversal(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("not a model")
    store = FileModelStore(tmp_path / "server")
    with pytest.raises(PpmlError) as excinfo:
        store.delete("../../victim")
    assert excinfo.value.code in (ErrorCode.MODEL_NOT_FOUND, ErrorCode.INVALID_ARGUMENT)
    assert (victim / "keep.txt").exists()


def test_model_store_layout_is_unchanged(tmp_path: Path) -> None:
    FileModelStore(tmp_path).put(_meta("m1"), _shares())
    folder = tmp_path / "models" / "m1"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.pb", "shares.npz"]
    assert MODEL_CODEC.from_bytes((folder / "meta.pb").read_bytes()) == _meta("m1")


def test_model_update_meta(store: ModelStore) -> None:
    shares = _shares()
    store.put(_meta("m1"), shares)
    renamed = arch.ModelMeta("m1", "renamed", "owner-b", _architecture(), 1_000)
    store.update_meta(renamed)
    assert store.get_meta("m1") == renamed
    assert store.has("m1") and not store.has("m2")
    _assert_shares_equal(store.get_shares("m1"), shares)


# ---------------------------------------------------------------- any record kind


@dataclass(frozen=True)
class Job:
    """A tiny record type; its codec stores it as JSON."""

    job_id: str
    state: str
    created: int


def _codec(kind: str = "jobs") -> RecordCodec[Job]:
    return RecordCodec[Job](
        kind=kind,
        key=lambda job: job.job_id,
        created=lambda job: job.created,
        to_bytes=lambda job: json.dumps(asdict(job)).encode(),
        from_bytes=lambda data: Job(**json.loads(data)),
        not_found=ErrorCode.NOT_READY,  # any codes: the store only passes them on
        exists=ErrorCode.DUPLICATE_REQUEST,
        noun="job",
    )


def _job_shares() -> dict[str, Ring]:
    return {
        "scalar": np.array(INT64_MIN, dtype=np.int64),
        "vector": random_ring((5,)),
        "cube": random_ring((2, 3, 4)),
        "four_d": random_ring((1, 2, 1, 3)),
        "empty": random_ring((0, 3)),
    }


@pytest.fixture(params=["memory", "file"])
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> ShareStore[Job]:
    if request.param == "memory":
        return MemoryShareStore(_codec())
    return FileShareStore(tmp_path, _codec())


def test_generic_put_get_list(jobs: ShareStore[Job]) -> None:
    shares = _job_shares()
    jobs.put(Job("j2", "queued", 20), shares)
    jobs.put(Job("j1", "queued", 10), _job_shares())
    assert jobs.get_meta("j2") == Job("j2", "queued", 20)
    _assert_shares_equal(jobs.get_shares("j2"), shares)
    assert [j.job_id for j in jobs.list()] == ["j1", "j2"]
    assert jobs.count() == 2


def test_generic_errors_use_the_codec(jobs: ShareStore[Job]) -> None:
    jobs.put(Job("j1", "queued", 10), {})
    with pytest.raises(PpmlError) as excinfo:
        jobs.put(Job("j1", "running", 11), {})
    assert excinfo.value.code == ErrorCode.DUPLICATE_REQUEST
    assert excinfo.value.detail == "a job with id 'j1' already exists"
    for operation in ("get_meta", "get_shares", "delete"):
        with pytest.raises(PpmlError) as excinfo:
            getattr(jobs, operation)("nope")
        assert excinfo.value.code == ErrorCode.NOT_READY
        assert excinfo.value.detail == "no job with id 'nope' on this server"


def test_generic_has(jobs: ShareStore[Job]) -> None:
    assert not jobs.has("j1")
    jobs.put(Job("j1", "queued", 10), _job_shares())
    assert jobs.has("j1") and not jobs.has("j2")
    jobs.delete("j1")
    assert not jobs.has("j1")


def test_generic_update_meta_keeps_shares(jobs: ShareStore[Job]) -> None:
    shares = _job_shares()
    jobs.put(Job("j1", "queued", 10), shares)
    jobs.put(Job("j2", "queued", 20), _job_shares())
    jobs.update_meta(Job("j1", "done", 30))
    assert jobs.get_meta("j1") == Job("j1", "done", 30)
    _assert_shares_equal(jobs.get_shares("j1"), shares)
    assert [j.job_id for j in jobs.list()] == ["j2", "j1"]  # ordered by the new metadata
    assert jobs.count() == 2


def test_generic_update_meta_of_unknown_id_is_not_found(jobs: ShareStore[Job]) -> None:
    jobs.put(Job("j1", "queued", 10), {})
    with pytest.raises(PpmlError) as excinfo:
        jobs.update_meta(Job("other", "done", 30))
    assert excinfo.value.code == ErrorCode.NOT_READY
    assert "other" in excinfo.value.detail
    assert not jobs.has("other")
    assert jobs.list() == [Job("j1", "queued", 10)]


def test_generic_multidimensional_shares_are_copies(jobs: ShareStore[Job]) -> None:
    shares = _job_shares()
    kept = {k: v.copy() for k, v in shares.items()}
    jobs.put(Job("j1", "queued", 10), shares)
    for value in shares.values():
        value[...] = 0
    first = jobs.get_shares("j1")
    _assert_shares_equal(first, kept)
    for value in first.values():
        value[...] = 7
    _assert_shares_equal(jobs.get_shares("j1"), kept)


def test_file_update_meta_survives_reopen(tmp_path: Path) -> None:
    shares = _job_shares()
    FileShareStore(tmp_path, _codec()).put(Job("j1", "queued", 10), shares)
    FileShareStore(tmp_path, _codec()).update_meta(Job("j1", "done", 30))
    folder = tmp_path / "jobs" / "j1"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.pb", "shares.npz"]
    reopened = FileShareStore(tmp_path, _codec())
    assert reopened.get_meta("j1") == Job("j1", "done", 30)
    _assert_shares_equal(reopened.get_shares("j1"), shares)


def test_file_removes_leftover_meta_tmp(tmp_path: Path) -> None:
    FileShareStore(tmp_path, _codec()).put(Job("j1", "queued", 10), {})
    leftover = tmp_path / "jobs" / "j1" / "meta.pb.tmp"
    leftover.write_bytes(b"half-written")
    reopened = FileShareStore(tmp_path, _codec())
    assert not leftover.exists()
    assert reopened.get_meta("j1") == Job("j1", "queued", 10)


def test_kinds_in_one_root_are_separate(tmp_path: Path) -> None:
    jobs = FileShareStore(tmp_path, _codec("jobs"))
    datasets = FileShareStore(tmp_path, _codec("datasets"))
    models = FileModelStore(tmp_path)
    jobs.put(Job("same", "queued", 10), _job_shares())
    datasets.put(Job("other", "ready", 20), {})
    models.put(_meta("same"), _shares())
    assert jobs.list() == [Job("same", "queued", 10)]
    assert datasets.list() == [Job("other", "ready", 20)]
    assert [m.model_id for m in models.list()] == ["same"]
    assert not datasets.has("same") and not jobs.has("other")
    with pytest.raises(PpmlError) as excinfo:
        datasets.get_meta("same")
    assert excinfo.value.code == ErrorCode.NOT_READY
    # deleting one kind's record leaves the same id of another kind alone
    jobs.delete("same")
    assert models.get_meta("same") == _meta("same")
    assert (jobs.count(), datasets.count(), models.count()) == (0, 1, 1)


@pytest.mark.parametrize("bad_id", ["", ".", "..", "../x", "a/b", ".tmp-1"])
def test_file_generic_refuses_ids_outside_the_store(tmp_path: Path, bad_id: str) -> None:
    store = FileShareStore(tmp_path, _codec())
    for call in (
        lambda: store.get_meta(bad_id),
        lambda: store.get_shares(bad_id),
        lambda: store.has(bad_id),
        lambda: store.delete(bad_id),
        lambda: store.put(Job(bad_id, "queued", 1), {}),
        lambda: store.update_meta(Job(bad_id, "done", 1)),
    ):
        with pytest.raises(PpmlError) as excinfo:
            call()
        assert excinfo.value.code == ErrorCode.INVALID_ARGUMENT
        assert "invalid job id" in excinfo.value.detail


@pytest.mark.parametrize("kind", ["", ".", "..", ".hidden", "a/b", "../x"])
def test_codec_kind_must_be_a_plain_folder_name(kind: str) -> None:
    with pytest.raises(ValueError):
        _codec(kind)
