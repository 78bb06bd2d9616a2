"""All-or-nothing uploads: staged on every server, committed by the leader's decision.

A client sends server i its share of a data set or model under one random
``upload_id``. The protocol (docs/architecture.md, "Life cycle of state"):

1. Each server checks its share and *stages* it: written and fsynced under
   ``.staged-*``, invisible to every reader. Then it tells the leader
   (:class:`~ppml.proto.domain.commands.Staged`) and waits.
2. The leader (:class:`UploadCoordinator`) alone decides. Once every rank
   has staged the same attempt, it commits its own copy first (a rename on
   its disk: that rename *is* the decision, and survives a leader crash),
   then tells every follower to commit. It aborts an attempt when the client
   asks it to resolve one not committed yet (after a failure anywhere), or
   when not every rank has staged it within ``pending_s``.
3. Every server (:class:`UploadGate`) applies the leader's decision to its
   store, and keeps announcing whatever it still holds staged, also after a
   restart, until a decision comes. A follower never commits on its own.

So a staged copy becomes usable only where the leader has committed, and the
leader commits only what every server holds durably: after a crash at any
moment, each server either gets the commit (a restarted one, on its first
re-announcement) or discards the copy. The SDK's ``ResolveUpload`` makes the
outcome definite for the client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from ppml.proto.domain import commands as cmd
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.ids import check_id
from ppml.proto.shares import Ring
from ppml.servers.control.holds import scoped_id
from ppml.servers.store.crash_points import crash_point
from ppml.servers.store.storage import ShareStore

log = logging.getLogger(__name__)

KINDS = ("dataset", "model")
MAX_DECISIONS = 100_000  # remembered; forgetting one is safe (see UploadCoordinator)
_Key = tuple[str, str, str]  # kind, record id, upload


def upload_key(kind: str, owner: str, upload_id: str) -> str:
    """An upload attempt's cluster-wide name: the caller's ``upload_id``, scoped to the caller."""
    if not upload_id:
        raise PpmlError(
            ErrorCode.INVALID_ARGUMENT,
            "upload_id is required: a random id per upload attempt, the same on every server",
        )
    return scoped_id(f"{kind}-upload", owner, check_id(upload_id, "upload_id"))


def _key(message: cmd.Staged | cmd.UploadDecision) -> _Key:
    return message.kind, message.record_id, message.upload


class UploadGate:
    """This server's side: stage, announce, wait for and apply the leader's decision."""

    def __init__(
        self,
        stores: Mapping[str, ShareStore[Any]],
        submit: Callable[[cmd.PartyMessage], bool],
        announce_every_s: float = 1.0,
    ) -> None:
        self._stores = dict(stores)
        self._submit = submit
        self._every = announce_every_s
        self._lock = threading.Lock()
        self._waiters: dict[_Key, Future[cmd.UploadDecision]] = {}
        self._staging: set[_Key] = set()  # not announced yet: the loop leaves them alone
        self._stopped = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._announce_loop, name="uploads", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def stage(
        self, kind: str, meta: Any, shares: dict[str, Ring], upload: str, timeout_s: float
    ) -> None:
        """Stage an upload here, announce it and wait for the decision; raises unless committed.

        ``upload`` is :func:`upload_key`'s name of the attempt; "" (a client that
        sent no upload id) is refused, after every other check of the upload.
        """
        if not upload:
            upload_key(kind, "", "")  # raises: the id is required
        store = self._stores[kind]
        record_id = store.codec.key(meta)
        key = (kind, record_id, upload)
        with self._lock:
            waiter = self._waiters.setdefault(key, Future())
            self._staging.add(key)
        try:
            store.stage(meta, shares, upload)
            crash_point(f"{kind}:late")
            with self._lock:
                self._staging.discard(key)
            self._submit(cmd.Staged(*key))  # the announce loop repeats it until decided
            decision = waiter.result(timeout_s)
        except TimeoutError:
            raise PpmlError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"not every server received {kind} {record_id!r} within {timeout_s:.0f}s; "
                "server 0 decides whether it is kept (on every server or on none)",
            ) from None
        finally:
            with self._lock:
                self._waiters.pop(key, None)
                self._staging.discard(key)
        if not decision.commit:
            raise PpmlError(
                ErrorCode.UPLOAD_ABORTED,
                f"{kind} {record_id!r} was not stored on any server ({decision.reason}); "
                "it is safe to upload it again",
            )
        crash_point(f"{kind}:committed")

    def apply(self, decision: cmd.UploadDecision, replace: bool = True) -> bool:
        """Apply the leader's decision here; True if the record is now committed here.

        A follower's commit replaces a record of another attempt under the id
        (the leader, which had none, is the reference); the leader's own does not.
        """
        store = self._stores.get(decision.kind)
        if store is None:
            return False
        if decision.commit:
            crash_point(f"{decision.kind}:commit")
            done = store.commit(decision.record_id, decision.upload, replace)
        else:
            store.discard(decision.record_id, decision.upload)
            done = False
        if done or not decision.commit:
            with self._lock:
                waiter = self._waiters.get(_key(decision))
            if waiter is not None and not waiter.done():
                waiter.set_result(decision)
        return done

    def committed_upload(self, kind: str, record_id: str) -> str | None:
        return self._stores[kind].committed_upload(record_id)

    def _announce_loop(self) -> None:
        """Re-announce every staged record (also ones left by a crash) until it is decided."""
        while not self._stopped.wait(self._every):
            for kind, store in self._stores.items():
                try:
                    for record_id, upload in store.staged():
                        with self._lock:
                            if (kind, record_id, upload) in self._staging:
                                continue
                        self._submit(cmd.Staged(kind, record_id, upload))
                except Exception:  # keep announcing; a store error shows on the next try too
                    log.exception("announcing staged %s uploads failed", kind)


class UploadCoordinator:
    """The leader's side: decide each upload attempt once, remember the decision.

    Forgetting a decision (after ``remember_s``, or beyond :data:`MAX_DECISIONS`)
    is safe: a commit is still on the leader's disk (the record's ``upload``
    file). An aborted attempt had its staged copies discarded; to be committed
    later, every rank would have to stage it again, the leader included, from
    an upload call still running, and a late re-announcement alone only opens
    an attempt that expires after ``pending_s``.
    """

    def __init__(
        self,
        world_size: int,
        here: UploadGate,
        send: Callable[[int | None, cmd.UploadDecision], None],
        pending_s: float,
        remember_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``send(rank, decision)`` reaches one follower, or every follower for None."""
        self._world = world_size
        self._here = here
        self._send = send
        self._pending_s = pending_s
        self._remember_s = max(remember_s, 2 * pending_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[_Key, tuple[set[int], float]] = {}
        self._decided: dict[_Key, tuple[cmd.UploadDecision, float]] = {}

    def staged(self, rank: int, message: cmd.Staged) -> None:
        """Rank ``rank`` holds the attempt staged: answer with the decision, or record it."""
        key = _key(message)
        with self._lock:
            now = self._clock()
            self._expire(now)
            known = self._decided.get(key)
            if known is not None:
                self._tell(rank, known[0])
                return
            if self._here.committed_upload(message.kind, message.record_id) == message.upload:
                self._decide(key, True, "committed on server 0", now)  # leader restarted
                return
            ranks = self._pending.setdefault(key, (set(), now))[0]
            ranks.add(rank)
            if len(ranks) == self._world:
                self._decide(key, True, "every server holds it", now)

    def resolve(self, kind: str, record_id: str, upload: str) -> cmd.UploadDecision:
        """A client's question after a failure: the decision, aborting if none was made yet."""
        key = (kind, record_id, upload)
        with self._lock:
            now = self._clock()
            self._expire(now)
            known = self._decided.get(key)
            if known is not None:
                return known[0]
            if self._here.committed_upload(kind, record_id) == upload:
                return self._decide(key, True, "committed on server 0", now)
            return self._decide(key, False, "the upload failed on some server", now)

    def _decide(self, key: _Key, commit: bool, reason: str, now: float) -> cmd.UploadDecision:
        self._pending.pop(key, None)
        decision = cmd.UploadDecision(*key, commit, reason)
        if commit and not self._here.apply(decision, replace=False):
            reason = f"another {key[0]} holds the id {key[1]!r} on server 0"
            decision = cmd.UploadDecision(*key, False, reason)
        if not decision.commit:
            self._here.apply(decision)
        log.info("upload of %s %r: %s", key[0], key[1], "committed" if commit else "aborted")
        self._decided[key] = (decision, now)
        self._send(None, decision)
        return decision

    def _tell(self, rank: int, decision: cmd.UploadDecision) -> None:
        if rank == 0:
            self._here.apply(decision, replace=False)
        else:
            self._send(rank, decision)

    def _expire(self, now: float) -> None:
        for key, (_, since) in list(self._pending.items()):
            if now - since > self._pending_s:
                reason = f"not every server had it within {self._pending_s:.0f}s"
                self._decide(key, False, reason, now)
        for key, (_, when) in list(self._decided.items()):
            if now - when > self._remember_s or len(self._decided) > MAX_DECISIONS:
                del self._decided[key]
            else:
                break  # oldest first: the rest are younger
