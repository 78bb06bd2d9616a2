"""Model ids spoken for before their model exists.

A training job or federation names the model it will register, and that
``model_id`` is in every public view of it. Were the id free until the job
ended, another tenant could upload any model under it first and the job would
fail after all its MPC work. So the id is *reserved* when the job or
federation is created, on each server as it accepts it, and:

* nobody may upload under a reserved id, nor reserve it again (MODEL_EXISTS),
  except its holder registering the result (or, where the reservation is open
  to its owner, that owner: a CKKS federation's result is registered by the
  owner's SDK, which alone can decrypt it);
* the holder's upload turns the reservation into the model;
* a job or federation that ends without a model (failed, cancelled) releases it.

A client's own upload also holds its id while it is written, so that a job
cannot reserve an id an upload is about to take. Reservations live in memory:
a restarted server fails every unfinished job and federation, so the only ones
that outlive a restart are those a manager takes again at start-up.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ppml.proto.errors import ErrorCode, PpmlError


@dataclass(frozen=True)
class Claim:
    """Who holds a model id: e.g. ``"training job 'j1'"``, for ``owner``."""

    holder: str
    owner: str
    open_to_owner: bool = False  # the owner may upload under it (CKKS federation results)


class ModelIds:
    """The reserved model ids of one server (thread-safe)."""

    def __init__(self, exists: Callable[[str], bool]) -> None:
        self._exists = exists
        self._lock = threading.Lock()
        self._claims: dict[str, Claim] = {}
        self._uploads = itertools.count()

    def reserve(self, model_id: str, claim: Claim) -> None:
        """Hold ``model_id`` for ``claim``; MODEL_EXISTS if a model or another claim has it."""
        with self._lock:
            current = self._claims.get(model_id)
            if current is not None:
                raise _taken(model_id, current)
            if self._exists(model_id):
                raise PpmlError(ErrorCode.MODEL_EXISTS, f"a model with id {model_id!r} exists")
            self._claims[model_id] = claim

    def release(self, model_id: str, holder: str) -> None:
        """Free ``model_id`` if ``holder`` holds it (no-op otherwise)."""
        with self._lock:
            current = self._claims.get(model_id)
            if current is not None and current.holder == holder:
                del self._claims[model_id]

    def for_upload(self, model_id: str, owner: str, holder: str) -> tuple[str, bool]:
        """The claim an upload writes under: ``(holder, transient)``.

        ``holder`` given (a job registering its result): it must hold the id.
        Otherwise a client upload: into a reservation open to ``owner``, or
        under a transient claim taken here (the caller releases a transient
        claim whatever happens, and a held one once the model is stored).
        """
        with self._lock:
            current = self._claims.get(model_id)
            if holder:
                if current is None or current.holder != holder:
                    raise _taken(model_id, current) if current else PpmlError(
                        ErrorCode.MODEL_EXISTS, f"model id {model_id!r} is not reserved"
                    )
                return holder, False
            if current is not None:
                if current.open_to_owner and current.owner == owner:
                    return current.holder, False
                raise _taken(model_id, current)
            transient = f"an upload in progress (#{next(self._uploads)})"
            self._claims[model_id] = Claim(transient, owner)
            return transient, True

    def holder(self, model_id: str) -> Claim | None:
        with self._lock:
            return self._claims.get(model_id)


def _taken(model_id: str, claim: Claim) -> PpmlError:
    return PpmlError(ErrorCode.MODEL_EXISTS, f"model id {model_id!r} is reserved by {claim.holder}")
