"""Per-server storage of records: public metadata plus this server's named shares.

One generic store keeps models, datasets and training jobs alike: a
:class:`RecordCodec` says how a kind of record is named, sorted, encoded and
reported in errors, and :class:`ShareStore` is the interface.
:class:`FileShareStore` keeps each record in ``root/<kind>/<id>/`` (``meta.pb``
and ``shares.npz``: int64 arrays of any shape, no pickles), written to a
temporary folder and renamed into place so a crash never leaves a half-written
record; ``update_meta`` writes ``meta.pb.tmp`` then :func:`os.replace`.
A client upload is first *staged* (``root/<kind>/.staged-<digest>/``, with an
``upload`` file naming the attempt): it is invisible to ``get``/``has``/``list``
until :meth:`ShareStore.commit` renames it into place, or
:meth:`ShareStore.discard` drops it (``ppml.servers.control.uploads`` decides which).
:class:`MemoryShareStore` is for tests. Models use :data:`MODEL_CODEC` through
:data:`ModelStore`, :class:`MemoryModelStore` and :class:`FileModelStore`
(``root/models/<id>/{meta.pb,shares.npz}``). ``tests/unit/test_storage.py``
runs one contract test against every backend.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeAlias, TypeVar

import numpy as np

from ppml.proto.domain.architecture import ModelMeta
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.shares import Ring
from ppml.proto.wire import serde
from ppml.servers.store.crash_points import crash_point

M = TypeVar("M")

_TMP = ".tmp-"
_STAGED = ".staged-"
_UPLOAD = "upload"  # in a record's folder: the upload attempt that made it
StagedIds: TypeAlias = list[tuple[str, str]]  # (record id, upload attempt)


@dataclass(frozen=True)
class RecordCodec(Generic[M]):
    """How one kind of record is named, ordered, encoded and reported."""

    kind: str  # folder under the store root, e.g. "models"
    key: Callable[[M], str]  # the record's id
    created: Callable[[M], int]  # sort key: list() is oldest first
    to_bytes: Callable[[M], bytes]
    from_bytes: Callable[[bytes], M]
    not_found: ErrorCode
    exists: ErrorCode
    noun: str  # e.g. "model", in error details

    def __post_init__(self) -> None:
        if not self.kind or "/" in self.kind or "\\" in self.kind or self.kind.startswith("."):
            raise ValueError(f"record kind must be a plain folder name, got {self.kind!r}")

    def not_found_error(self, record_id: str) -> PpmlError:
        return PpmlError(self.not_found, f"no {self.noun} with id {record_id!r} on this server")

    def exists_error(self, record_id: str) -> PpmlError:
        return PpmlError(self.exists, f"a {self.noun} with id {record_id!r} already exists")


class ShareStore(ABC, Generic[M]):
    """Records of one kind: metadata ``M`` plus this server's named int64 share arrays."""

    def __init__(self, codec: RecordCodec[M]) -> None:
        self.codec = codec
        self._lock = threading.Lock()

    @abstractmethod
    def put(self, meta: M, shares: dict[str, Ring]) -> None:
        """Store a new record; ``codec.exists`` if the id is taken."""

    @abstractmethod
    def get_meta(self, record_id: str) -> M:
        """``codec.not_found`` if absent."""

    @abstractmethod
    def get_shares(self, record_id: str) -> dict[str, Ring]:
        """``codec.not_found`` if absent."""

    @abstractmethod
    def update_meta(self, meta: M) -> None:
        """Atomically replace a stored record's metadata, not its shares; else not_found."""

    @abstractmethod
    def has(self, record_id: str) -> bool:
        """Whether a record with this id is stored."""

    @abstractmethod
    def list(self) -> list[M]:
        """All records, oldest first (by ``codec.created``)."""

    @abstractmethod
    def delete(self, record_id: str) -> None:
        """``codec.not_found`` if absent."""

    def count(self) -> int:
        """How many records are stored (cheap: status calls it on every poll)."""
        return len(self.list())

    # A staged record: durable, not usable until committed (all-or-nothing uploads).

    @abstractmethod
    def stage(self, meta: M, shares: dict[str, Ring], upload: str) -> None:
        """Store a record of attempt ``upload`` durably but invisibly (no-op if staged)."""

    @abstractmethod
    def commit(self, record_id: str, upload: str, replace: bool = False) -> bool:
        """Make the staged record usable; True if the record is now ``upload``'s.

        False if nothing of ``upload`` is staged or stored, or another record
        holds the id and ``replace`` is False (then the staged one stays).
        """

    @abstractmethod
    def discard(self, record_id: str, upload: str) -> None:
        """Drop the staged record of ``upload``, if any (never a committed one)."""

    @abstractmethod
    def staged(self) -> StagedIds:
        """``(record_id, upload)`` of every staged record."""

    @abstractmethod
    def committed_upload(self, record_id: str) -> str | None:
        """The upload attempt that made the stored record (None: absent or not uploaded)."""


def _int64_copies(shares: dict[str, Ring]) -> dict[str, Ring]:
    return {k: np.array(v, dtype=np.int64, copy=True) for k, v in shares.items()}


class MemoryShareStore(ShareStore[M]):
    """In-process records; hands out copies so callers never alias stored arrays."""

    def __init__(self, codec: RecordCodec[M]) -> None:
        super().__init__(codec)
        self._records: dict[str, tuple[M, dict[str, Ring]]] = {}
        self._staged: dict[tuple[str, str], tuple[M, dict[str, Ring]]] = {}
        self._uploads: dict[str, str] = {}

    def put(self, meta: M, shares: dict[str, Ring]) -> None:
        record_id = self.codec.key(meta)
        with self._lock:
            if record_id in self._records:
                raise self.codec.exists_error(record_id)
            self._records[record_id] = (meta, _int64_copies(shares))

    def _get(self, record_id: str) -> tuple[M, dict[str, Ring]]:
        record = self._records.get(record_id)
        if record is None:
            raise self.codec.not_found_error(record_id)
        return record

    def get_meta(self, record_id: str) -> M:
        with self._lock:
            return self._get(record_id)[0]

    def get_shares(self, record_id: str) -> dict[str, Ring]:
        with self._lock:
            return _int64_copies(self._get(record_id)[1])

    def update_meta(self, meta: M) -> None:
        record_id = self.codec.key(meta)
        with self._lock:
            self._records[record_id] = (meta, self._get(record_id)[1])

    def has(self, record_id: str) -> bool:
        with self._lock:
            return record_id in self._records

    def list(self) -> list[M]:
        with self._lock:
            return sorted((m for m, _ in self._records.values()), key=self.codec.created)

    def delete(self, record_id: str) -> None:
        with self._lock:
            if self._records.pop(record_id, None) is None:
                raise self.codec.not_found_error(record_id)
            self._uploads.pop(record_id, None)

    def stage(self, meta: M, shares: dict[str, Ring], upload: str) -> None:
        with self._lock:
            self._staged.setdefault((self.codec.key(meta), upload), (meta, _int64_copies(shares)))

    def commit(self, record_id: str, upload: str, replace: bool = False) -> bool:
        with self._lock:
            if (record_id, upload) not in self._staged:
                return self._uploads.get(record_id) == upload
            if record_id in self._records and not replace:
                return False
            self._records[record_id] = self._staged.pop((record_id, upload))
            self._uploads[record_id] = upload
            return True

    def discard(self, record_id: str, upload: str) -> None:
        with self._lock:
            self._staged.pop((record_id, upload), None)

    def staged(self) -> StagedIds:
        with self._lock:
            return list(self._staged)

    def committed_upload(self, record_id: str) -> str | None:
        with self._lock:
            return self._uploads.get(record_id) if record_id in self._records else None


def _private_dir(path: Path) -> None:
    """A folder only this server's user may enter (0700), created if missing."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file readable by this server's user only (0600) and flush it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileShareStore(ShareStore[M]):
    """``root/<kind>/<id>/{meta.pb,shares.npz}``; survives restarts.

    Folders are 0700 and files 0600 (other local users read nothing). A record
    is written, fsynced, renamed into place and its folder fsynced, so a crash
    leaves either the old state or the new one.
    """

    def __init__(self, root: Path, codec: RecordCodec[M]) -> None:
        super().__init__(codec)
        self._dir = root / codec.kind
        _private_dir(root)
        _private_dir(self._dir)
        for leftover in self._dir.glob(f"{_TMP}*"):  # staged records stay: the leader decides
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self._dir.glob("*/meta.pb.tmp"):
            leftover.unlink(missing_ok=True)

    def _folder(self, record_id: str) -> Path:
        """The record's folder; refuses any id that would leave the store."""
        folder = self._dir / record_id
        if (
            record_id in ("", ".", "..")
            or record_id.startswith((_TMP, _STAGED))
            or folder.resolve().parent != self._dir.resolve()
        ):
            raise PpmlError(
                ErrorCode.INVALID_ARGUMENT, f"invalid {self.codec.noun} id {record_id!r}"
            )
        return folder

    def _read_meta(self, folder: Path) -> M | None:
        try:
            return self.codec.from_bytes((folder / "meta.pb").read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _records(self) -> list[Path]:
        return [
            folder
            for folder in self._dir.iterdir()
            if not folder.name.startswith((_TMP, _STAGED)) and (folder / "meta.pb").is_file()
        ]

    def put(self, meta: M, shares: dict[str, Ring]) -> None:
        record_id = self.codec.key(meta)
        with self._lock:
            folder = self._folder(record_id)
            if folder.exists():
                raise self.codec.exists_error(record_id)
            self._write(meta, shares, None).rename(folder)
            _sync_dir(self._dir)

    def _write(self, meta: M, shares: dict[str, Ring], upload: str | None) -> Path:
        """A complete, fsynced record in a fresh temporary folder, ready to rename."""
        tmp = self._dir / f"{_TMP}{uuid.uuid4().hex}"
        tmp.mkdir(mode=0o700)
        data = self.codec.to_bytes(meta)
        _write_private(tmp / "meta.pb", lambda handle: handle.write(data))
        crash_point(f"{self.codec.noun}:staging")
        arrays: dict[str, Any] = {k: np.asarray(v, dtype=np.int64) for k, v in shares.items()}
        _write_private(tmp / "shares.npz", lambda handle: np.savez(handle, **arrays))
        if upload is not None:
            _write_private(tmp / _UPLOAD, lambda handle: handle.write(upload.encode()))
        _sync_dir(tmp)
        return tmp

    def _staged_folder(self, record_id: str, upload: str) -> Path:
        self._folder(record_id)  # refuses ids that would leave the store
        digest = hashlib.sha256(f"{record_id}\0{upload}".encode()).hexdigest()[:32]
        return self._dir / f"{_STAGED}{digest}"

    def stage(self, meta: M, shares: dict[str, Ring], upload: str) -> None:
        with self._lock:
            staged = self._staged_folder(self.codec.key(meta), upload)
            if not staged.exists():
                self._write(meta, shares, upload).rename(staged)
                _sync_dir(self._dir)

    def commit(self, record_id: str, upload: str, replace: bool = False) -> bool:
        with self._lock:
            staged, folder = self._staged_folder(record_id, upload), self._folder(record_id)
            if not staged.exists():
                return self._upload_of(folder) == upload
            if folder.exists():
                if self._upload_of(folder) == upload or not replace:
                    return self._upload_of(folder) == upload
                self._trash(folder)
            staged.rename(folder)
            _sync_dir(self._dir)
            return True

    def discard(self, record_id: str, upload: str) -> None:
        with self._lock:
            staged = self._staged_folder(record_id, upload)
            if staged.exists():
                self._trash(staged)

    def staged(self) -> StagedIds:
        found = []
        for folder in self._dir.glob(f"{_STAGED}*"):
            meta, upload = self._read_meta(folder), self._upload_of(folder)
            if meta is not None and upload is not None:
                found.append((self.codec.key(meta), upload))
        return found

    def committed_upload(self, record_id: str) -> str | None:
        return self._upload_of(self._folder(record_id))

    @staticmethod
    def _upload_of(folder: Path) -> str | None:
        try:
            return (folder / _UPLOAD).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _trash(self, folder: Path) -> None:
        """Remove a folder: renamed away first (atomic), then deleted."""
        trash = self._dir / f"{_TMP}{uuid.uuid4().hex}"
        folder.rename(trash)
        _sync_dir(self._dir)
        shutil.rmtree(trash, ignore_errors=True)

    def get_meta(self, record_id: str) -> M:
        meta = self._read_meta(self._folder(record_id))
        if meta is None:
            raise self.codec.not_found_error(record_id)
        return meta

    def get_shares(self, record_id: str) -> dict[str, Ring]:
        folder = self._folder(record_id)
        try:
            with np.load(folder / "shares.npz", allow_pickle=False) as data:
                return {k: data[k].astype(np.int64) for k in data.files}
        except (FileNotFoundError, NotADirectoryError):
            raise self.codec.not_found_error(record_id) from None

    def update_meta(self, meta: M) -> None:
        record_id = self.codec.key(meta)
        with self._lock:
            folder = self._folder(record_id)
            if not (folder / "meta.pb").is_file():
                raise self.codec.not_found_error(record_id)
            tmp = folder / "meta.pb.tmp"
            data = self.codec.to_bytes(meta)
            _write_private(tmp, lambda handle: handle.write(data))
            os.replace(tmp, folder / "meta.pb")
            _sync_dir(folder)

    def has(self, record_id: str) -> bool:
        return (self._folder(record_id) / "meta.pb").is_file()

    def list(self) -> list[M]:
        metas = [m for m in map(self._read_meta, self._records()) if m is not None]
        return sorted(metas, key=lambda m: (self.codec.created(m), self.codec.key(m)))

    def count(self) -> int:
        return len(self._records())

    def delete(self, record_id: str) -> None:
        with self._lock:
            folder = self._folder(record_id)
            if not folder.exists():
                raise self.codec.not_found_error(record_id)
            self._trash(folder)


# ---------------------------------------------------------------- models

MODEL_CODEC = RecordCodec[ModelMeta](
    kind="models",
    key=lambda meta: meta.model_id,
    created=lambda meta: meta.created_unix_ms,
    to_bytes=serde.model_meta_to_bytes,
    from_bytes=serde.model_meta_from_bytes,
    not_found=ErrorCode.MODEL_NOT_FOUND,
    exists=ErrorCode.MODEL_EXISTS,
    noun="model",
)

ModelStore: TypeAlias = ShareStore[ModelMeta]


class MemoryModelStore(MemoryShareStore[ModelMeta]):
    def __init__(self) -> None:
        super().__init__(MODEL_CODEC)


class FileModelStore(FileShareStore[ModelMeta]):
    def __init__(self, root: Path) -> None:
        super().__init__(root, MODEL_CODEC)
