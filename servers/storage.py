"""Per-server storage of models: public metadata plus this server's shares.

:class:`ModelStore` is the interface; :class:`FileModelStore` keeps each model
in its own folder (``meta.pb``, the public ModelInfo message, and
``shares.npz``), written to a temporary folder and renamed into place so a
crash never leaves a half-written model;
:class:`MemoryModelStore` is for tests. ``tests/unit/test_storage.py`` runs
one contract test against both.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ppml.proto import serde
from ppml.proto.architecture import ModelMeta
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.shares import Ring


class ModelStore(ABC):
    @abstractmethod
    def put(self, meta: ModelMeta, shares: dict[str, Ring]) -> None:
        """Store a new model; MODEL_EXISTS if the id is taken."""

    @abstractmethod
    def get_meta(self, model_id: str) -> ModelMeta:
        """MODEL_NOT_FOUND if absent."""

    @abstractmethod
    def get_shares(self, model_id: str) -> dict[str, Ring]:
        """MODEL_NOT_FOUND if absent."""

    @abstractmethod
    def list(self) -> list[ModelMeta]:
        """All models, oldest first."""

    @abstractmethod
    def delete(self, model_id: str) -> None:
        """MODEL_NOT_FOUND if absent."""

    def count(self) -> int:
        """How many models are stored (cheap: status calls it on every poll)."""
        return len(self.list())


def _not_found(model_id: str) -> PpmlError:
    return PpmlError(ErrorCode.MODEL_NOT_FOUND, f"no model with id {model_id!r} on this server")


def _exists(model_id: str) -> PpmlError:
    return PpmlError(ErrorCode.MODEL_EXISTS, f"a model with id {model_id!r} already exists")


class MemoryModelStore(ModelStore):
    def __init__(self) -> None:
        self._models: dict[str, tuple[ModelMeta, dict[str, Ring]]] = {}
        self._lock = threading.Lock()

    def put(self, meta: ModelMeta, shares: dict[str, Ring]) -> None:
        with self._lock:
            if meta.model_id in self._models:
                raise _exists(meta.model_id)
            self._models[meta.model_id] = (meta, {k: v.copy() for k, v in shares.items()})

    def get_meta(self, model_id: str) -> ModelMeta:
        with self._lock:
            if model_id not in self._models:
                raise _not_found(model_id)
            return self._models[model_id][0]

    def get_shares(self, model_id: str) -> dict[str, Ring]:
        with self._lock:
            if model_id not in self._models:
                raise _not_found(model_id)
            return {k: v.copy() for k, v in self._models[model_id][1].items()}

    def list(self) -> list[ModelMeta]:
        with self._lock:
            return sorted((m for m, _ in self._models.values()), key=lambda m: m.created_unix_ms)

    def delete(self, model_id: str) -> None:
        with self._lock:
            if self._models.pop(model_id, None) is None:
                raise _not_found(model_id)


class FileModelStore(ModelStore):
    """``root/models/<id>/{meta.pb,shares.npz}``; survives restarts."""

    def __init__(self, root: Path) -> None:
        self._dir = root / "models"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for leftover in self._dir.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _folder(self, model_id: str) -> Path:
        """The model's folder; refuses any id that would leave the store."""
        folder = self._dir / model_id
        if model_id in ("", ".", "..") or folder.resolve().parent != self._dir.resolve():
            raise PpmlError(ErrorCode.INVALID_ARGUMENT, f"invalid model id {model_id!r}")
        return folder

    def put(self, meta: ModelMeta, shares: dict[str, Ring]) -> None:
        with self._lock:
            if self._folder(meta.model_id).exists():
                raise _exists(meta.model_id)
            tmp = self._dir / f".tmp-{uuid.uuid4().hex}"
            tmp.mkdir()
            (tmp / "meta.pb").write_bytes(serde.model_meta_to_bytes(meta))
            with open(tmp / "shares.npz", "wb") as handle:
                arrays: dict[str, Any] = {
                    k: np.asarray(v, dtype=np.int64) for k, v in shares.items()
                }
                np.savez(handle, **arrays)
            tmp.rename(self._folder(meta.model_id))

    def get_meta(self, model_id: str) -> ModelMeta:
        path = self._folder(model_id) / "meta.pb"
        if not path.exists():
            raise _not_found(model_id)
        return serde.model_meta_from_bytes(path.read_bytes())

    def get_shares(self, model_id: str) -> dict[str, Ring]:
        path = self._folder(model_id) / "shares.npz"
        if not path.exists():
            raise _not_found(model_id)
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k].astype(np.int64) for k in data.files}

    def list(self) -> list[ModelMeta]:
        metas = []
        for folder in self._dir.iterdir():
            if folder.name.startswith(".tmp-") or not (folder / "meta.pb").exists():
                continue
            metas.append(serde.model_meta_from_bytes((folder / "meta.pb").read_bytes()))
        return sorted(metas, key=lambda m: m.created_unix_ms)

    def count(self) -> int:
        return sum(
            1
            for folder in self._dir.iterdir()
            if not folder.name.startswith(".tmp-") and (folder / "meta.pb").exists()
        )

    def delete(self, model_id: str) -> None:
        with self._lock:
            folder = self._folder(model_id)
            if not folder.exists():
                raise _not_found(model_id)
            trash = self._dir / f".tmp-{uuid.uuid4().hex}"
            folder.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
