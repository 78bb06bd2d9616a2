"""Each client identity's CKKS evaluation keys, on disk, with quotas.

A stored context is the *public* part of a client's CKKS keys for one
parameter set: relinearisation keys and Galois (rotation) keys. It lets the
server compute on the client's ciphertexts and never decrypt them. A secret
key is refused wherever it appears: a part named for it, or bytes that do not
load as the evaluation key they claim to be (SEAL checks the object type and
its parameters while loading).

Layout: ``<data_dir>/he/contexts/<sha256(identity)[:32]>/<param_set>/`` with
``relin.seal``, ``galois.seal`` and ``meta.json`` (identity, fingerprint,
sizes); written to a temporary folder and renamed, so a crash leaves the old
context or the new one, never half of one. A restart keeps them; keys load
into memory on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tenseal import sealapi

from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.he import seal_io
from ppml.proto.he.params import ParamError, check_security, param_set
from ppml.servers.he.evaluate import EvalKeys

PARTS = {"relin_keys": "relin.seal", "galois_keys": "galois.seal"}
MAX_CONTEXT_BYTES = 192 << 20  # per identity and parameter set (n8192 keys: about 42 MB)
MAX_IDENTITIES = 256
MAX_LOADED = 8  # identities whose keys stay in memory; the rest load from disk


@dataclass(frozen=True)
class ContextInfo:
    param_set: str
    fingerprint: str
    stored_bytes: int
    created_at: float


@dataclass(frozen=True)
class ContextHeader:
    param_set: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]


def _invalid(detail: str) -> PpmlError:
    return PpmlError(ErrorCode.INVALID_CONTEXT, detail)


def required_steps(slots: int) -> list[int]:
    """Rotations by every power of two, both ways: any step decomposes into them."""
    steps = []
    t = 1
    while t < slots:
        steps += [t, -t]
        t *= 2
    return steps


class ContextStore:
    def __init__(
        self,
        data_dir: Path,
        max_bytes: int = MAX_CONTEXT_BYTES,
        max_identities: int = MAX_IDENTITIES,
        max_loaded: int = MAX_LOADED,
    ) -> None:
        self._root = Path(data_dir) / "he" / "contexts"
        self._root.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._max_identities = max_identities
        self._max_loaded = max_loaded
        self._lock = threading.Lock()
        # keys in memory, least recently used first (about 42 MB each at N = 8192)
        self._loaded: OrderedDict[tuple[str, str], tuple[str, EvalKeys]] = OrderedDict()

    def _dir(self, identity: str, name: str) -> Path:
        return self._root / hashlib.sha256(identity.encode()).hexdigest()[:32] / name

    def upload(
        self, identity: str, header: ContextHeader, parts: Iterable[tuple[str, bytes]]
    ) -> ContextInfo:
        """Check and store ``identity``'s evaluation keys (replacing earlier ones)."""
        try:
            params = param_set(header.param_set)
            check_security(header.poly_modulus_degree, header.coeff_mod_bit_sizes)
        except ParamError as e:
            raise _invalid(str(e)) from None
        if (header.poly_modulus_degree, header.coeff_mod_bit_sizes) != (
            params.poly_modulus_degree,
            params.coeff_mod_bit_sizes,
        ):
            raise _invalid(
                f"the context's parameters ({header.poly_modulus_degree}, "
                f"{list(header.coeff_mod_bit_sizes)}) are not those of {params.name} "
                f"({params.poly_modulus_degree}, {list(params.coeff_mod_bit_sizes)})"
            )
        data: dict[str, bytearray] = {}
        total = 0
        for part, chunk in parts:
            if "secret" in part.lower():
                raise _invalid(
                    "the context holds a secret key: upload only the public evaluation keys "
                    "(relinearisation and Galois keys); the secret key must never leave the client"
                )
            if part not in PARTS:
                raise _invalid(
                    f"unknown context part {part[:40]!r}; expected one of {sorted(PARTS)}"
                )
            total += len(chunk)
            if total > self._max_bytes:
                raise PpmlError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"the context exceeds {self._max_bytes >> 20} MiB "
                    "per identity and parameter set",
                )
            data.setdefault(part, bytearray()).extend(chunk)
        missing = sorted(set(PARTS) - set(data))
        if missing:
            raise _invalid(f"the context lacks {missing}")
        keys = self._load_keys(params.name, {k: bytes(v) for k, v in data.items()})
        fingerprint = seal_io.fingerprint({k: bytes(v) for k, v in data.items()})
        with self._lock:
            known = {p.name for p in self._root.iterdir() if p.is_dir()}
            target = self._dir(identity, params.name)
            if target.parent.name not in known and len(known) >= self._max_identities:
                raise PpmlError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"this server stores contexts for at most {self._max_identities} identities",
                )
            info = ContextInfo(params.name, fingerprint, total, time.time())
            self._write(target, identity, info, data)
            self._remember((identity, params.name), (fingerprint, keys))
        return info

    def _load_keys(self, name: str, data: dict[str, bytes]) -> EvalKeys:
        params = param_set(name)
        context = seal_io.seal_context(params)
        try:
            relin = seal_io.load(sealapi.RelinKeys(), context, data["relin_keys"])
        except Exception as e:  # SEAL refuses untrusted bytes with several C++ exception types
            raise _invalid(f"the relinearisation keys do not load under {name}: {e}") from None
        try:
            galois = seal_io.load(sealapi.GaloisKeys(), context, data["galois_keys"])
        except Exception as e:  # SEAL refuses untrusted bytes with several C++ exception types
            raise _invalid(f"the Galois keys do not load under {name}: {e}") from None
        two_n = 2 * params.poly_modulus_degree
        absent = [
            s
            for s in required_steps(params.slots)
            if not galois.has_key(pow(3, s % params.slots, two_n))
        ]
        if absent:
            raise _invalid(
                f"the Galois keys lack rotations by {absent[:6]}: generate all powers of two"
            )
        return EvalKeys(relin, galois)

    def _write(
        self, target: Path, identity: str, info: ContextInfo, data: dict[str, bytearray]
    ) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        for part, name in PARTS.items():
            (staging / name).write_bytes(bytes(data[part]))
        meta = {"identity": identity, **info.__dict__}
        (staging / "meta.json").write_text(json.dumps(meta))
        for f in staging.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = target.with_name(f".old-{target.name}")
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)

    def info(self, identity: str, name: str) -> ContextInfo:
        path = self._dir(identity, name) / "meta.json"
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            raise PpmlError(
                ErrorCode.CONTEXT_NOT_FOUND,
                f"no CKKS evaluation keys of yours for {name[:40]!r} on this server: "
                "upload them first (the SDK does on the first CKKS prediction)",
            ) from None
        return ContextInfo(
            meta["param_set"], meta["fingerprint"], meta["stored_bytes"], meta["created_at"]
        )

    def keys(self, identity: str, name: str) -> tuple[str, EvalKeys]:
        """The fingerprint and loaded keys of ``identity``'s context for set ``name``."""
        with self._lock:
            found = self._loaded.get((identity, name))
            if found is not None:
                self._loaded.move_to_end((identity, name))
        if found is not None:
            return found
        info = self.info(identity, name)
        folder = self._dir(identity, name)
        data = {part: (folder / f).read_bytes() for part, f in PARTS.items()}
        loaded = (info.fingerprint, self._load_keys(name, data))
        with self._lock:
            self._remember((identity, name), loaded)
        return loaded

    def _remember(self, key: tuple[str, str], value: tuple[str, EvalKeys]) -> None:
        """Keep ``value`` in memory (caller holds the lock), evicting the least recent."""
        self._loaded[key] = value
        self._loaded.move_to_end(key)
        while len(self._loaded) > self._max_loaded:
            self._loaded.popitem(last=False)

    def delete(self, identity: str, name: str) -> ContextInfo:
        info = self.info(identity, name)
        with self._lock:
            shutil.rmtree(self._dir(identity, name), ignore_errors=True)
            self._loaded.pop((identity, name), None)
        return info

    def counts(self) -> dict[str, int]:
        """Identity -> number of stored contexts (for the dashboard and Prometheus)."""
        out: dict[str, int] = {}
        for meta in self._metas():
            who = str(meta["identity"])
            out[who] = out.get(who, 0) + 1
        return out

    def _metas(self) -> Iterator[dict[str, object]]:
        for path in self._root.glob("*/*/meta.json"):
            try:
                yield json.loads(path.read_text())
            except (OSError, ValueError):
                continue
