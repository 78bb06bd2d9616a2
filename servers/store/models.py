"""The model registry of one server: validation, storage, access rules, an in-memory cache.

A model belongs to the identity that uploaded it (or started the job that
trained it). Only the owner deletes it or changes who may use it; predictions
and evaluations need the owner's grant (``allowed``, default: the owner
only); exporting the weights is for the owner, and only once every other
owner of data it was trained on has released it to them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from ppml.proto.domain.architecture import Architecture, ModelMeta, infer_output_shape
from ppml.proto.domain.datasets import DataSource
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.ids import check_id
from ppml.proto.names import check_name
from ppml.proto.shares import Ring
from ppml.servers.store.crash_points import crash_point
from ppml.servers.store.limits import Limits, check_identities, require_owner
from ppml.servers.store.model_ids import ModelIds
from ppml.servers.store.storage import ModelStore
from ppml.servers.store.upload_gate import UploadGate


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for MPC on this server: public metadata + this server's shares."""

    meta: ModelMeta
    shares: dict[str, Ring]


class ModelRegistry:
    def __init__(
        self,
        store: ModelStore,
        limits: Limits | None = None,
        cache_size: int = 8,
        gate: UploadGate | None = None,
        refuse: Callable[[Architecture], str | None] | None = None,
    ) -> None:
        """``refuse``: why this cluster's engine cannot run an architecture (None: it can)."""
        self._store = store
        self._gate = gate
        self._refuse = refuse
        self._limits = limits or Limits()
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.ids = ModelIds(store.has)  # ids reserved for the results of jobs and federations

    def upload(
        self,
        model_id: str,
        name: str,
        owner: str,
        architecture: Architecture,
        shares: dict[str, Ring],
        allowed: tuple[str, ...] = (),
        trained_on: tuple[DataSource, ...] = (),
        upload: str | None = None,
        holder: str = "",
        wait_s: float | None = None,
    ) -> ModelMeta:
        """Validate and store; the shares were checked against the architecture by serde.

        A client's upload (attempt ``upload``; None for a server's own results) is
        staged and kept only once every server holds it, waiting at most ``wait_s``
        (``ppml.servers.control.uploads``).
        ``holder``: the job or federation that reserved ``model_id`` registers its
        result (:mod:`.model_ids`); nobody else may upload under a reserved id.
        """
        crash_point("model:early")
        check_id(model_id, "model_id")
        check_name(name, "model name")
        check_identities(allowed, "allowed")
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
        why = self._refuse(architecture) if self._refuse is not None else None
        if why is not None:
            raise PpmlError(ErrorCode.INVALID_MODEL, why)
        self._limits.check_model(owner, architecture)
        meta = ModelMeta(
            model_id,
            name or model_id,
            owner,
            architecture,
            int(time.time() * 1000),
            allowed,
            trained_on,
        )
        claim, transient = self.ids.for_upload(model_id, owner, holder)
        stored = False
        try:
            if upload is not None and self._gate is not None:
                wait = min(self._limits.config.upload_max_s, wait_s or float("inf"))
                self._gate.stage("model", meta, shares, upload, wait)
            else:
                self._store.put(meta, shares)
            stored = True
        finally:
            if stored or transient:
                self.ids.release(model_id, claim)
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

    def usable(self, model_id: str, caller: str) -> LoadedModel:
        """The model if ``caller`` may predict with it or evaluate it; PERMISSION_DENIED if not."""
        model = self.get(model_id)
        if not model.meta.may_query(caller):
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED,
                f"model {model_id!r} belongs to {model.meta.owner!r}, who has not granted "
                f"{caller!r} its use",
            )
        return model

    def export(self, model_id: str, caller: str) -> LoadedModel:
        """The model with this server's shares, for its owner once every data owner released it."""
        model = self.get(model_id)
        if caller != model.meta.owner:
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED,
                f"only the owner of model {model_id!r} may export its weights",
            )
        withheld = model.meta.withheld_by(caller)
        if withheld:
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED,
                f"model {model_id!r} was trained on data of {', '.join(withheld)}, who have not "
                f"released models trained on it to {caller!r} (the data set's 'release' list)",
            )
        return model

    def set_access(self, model_id: str, caller: str, allowed: tuple[str, ...]) -> ModelMeta:
        """The owner replaces who may predict with the model and evaluate it."""
        check_identities(allowed, "allowed")
        meta = self._owned(model_id, caller, "change who may use")
        updated = replace(meta, allowed=allowed)
        self._store.update_meta(updated)
        self._forget(model_id)
        return updated

    def _owned(self, model_id: str, caller: str, action: str) -> ModelMeta:
        meta = self.meta(model_id)
        require_owner(meta.owner, caller, f"{action} model {model_id!r}")
        return meta

    def _forget(self, model_id: str) -> None:
        with self._lock:
            self._cache.pop(model_id, None)

    def exists(self, model_id: str) -> bool:
        return self._store.has(check_id(model_id, "model_id"))

    def meta(self, model_id: str) -> ModelMeta:
        return self._store.get_meta(check_id(model_id, "model_id"))

    def list(self) -> list[ModelMeta]:
        return self._store.list()

    def delete(self, model_id: str, caller: str) -> None:
        """The owner deletes the model (nobody else can free its id)."""
        self._owned(model_id, caller, "delete")
        self._forget(model_id)
        self._store.delete(model_id)

    def __len__(self) -> int:
        return self._store.count()
