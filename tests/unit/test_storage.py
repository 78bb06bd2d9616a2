"""One contract test suite for every ppml.servers.storage.ModelStore backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ppml.proto import architecture as arch
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.shares import Ring, random_ring
from ppml.servers.storage import FileModelStore, MemoryModelStore, ModelStore

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
