"""The model registry of one server: validation, storage, an in-memory cache."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ppml.proto.domain.architecture import Architecture, ModelMeta, infer_output_shape
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.ids import check_id
from ppml.proto.shares import Ring
from ppml.servers.store.storage import ModelStore


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for MPC on this server: public metadata + this server's shares."""

    meta: ModelMeta
    shares: dict[str, Ring]


class ModelRegistry:
    def __init__(self, store: ModelStore, cache_size: int = 8) -> None:
        self._store = store
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def upload(
        self,
        model_id: str,
        name: str,
        owner: str,
        architecture: Architecture,
        shares: dict[str, Ring],
    ) -> ModelMeta:
        """Validate and store; the shares were checked against the architecture by serde."""
        check_id(model_id, "model_id")
        if len(name) > 200:
            raise PpmlError(ErrorCode.INVALID_ARGUMENT, "model name is longer than 200 characters")
        try:
            output_shape = infer_output_shape(architecture)
        except ValueError as exc:
            raise PpmlError(ErrorCode.INVALID_MODEL, str(exc)) from exc
        if output_shape != architecture.output_shape:
            raise PpmlError(
                ErrorCode.INVALID_MODEL,
                f"layers produce output shape {list(output_shape)}, "
                f"architecture says {list(architecture.output_shape)}",
            )
        meta = ModelMeta(model_id, name or model_id, owner, architecture, int(time.time() * 1000))
        self._store.put(meta, shares)
        return meta

    def get(self, model_id: str) -> LoadedModel:
        """The model with its shares (cached); MODEL_NOT_FOUND if absent."""
        check_id(model_id, "model_id")
        with self._lock:
            cached = self._cache.get(model_id)
            if cached is not None:
                self._cache.move_to_end(model_id)
                return cached
        loaded = LoadedModel(self._store.get_meta(model_id), self._store.get_shares(model_id))
        with self._lock:
            self._cache[model_id] = loaded
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return loaded

    def export(self, model_id: str, caller: str) -> LoadedModel:
        """The model with this server's shares, for its owner only."""
        model = self.get(model_id)
        if caller != model.meta.owner:
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED,
                f"only the owner of model {model_id!r} may export its weights",
            )
        return model

    def exists(self, model_id: str) -> bool:
        return self._store.has(check_id(model_id, "model_id"))

    def meta(self, model_id: str) -> ModelMeta:
        return self._store.get_meta(check_id(model_id, "model_id"))

    def list(self) -> list[ModelMeta]:
        return self._store.list()

    def delete(self, model_id: str) -> None:
        check_id(model_id, "model_id")
        with self._lock:
            self._cache.pop(model_id, None)
        self._store.delete(model_id)

    def __len__(self) -> int:
        return self._store.count()
