"""SEAL objects to and from bytes, and the SEAL context of a parameter set.

TenSEAL 0.3.18 ships SEAL's own Python bindings (``tenseal.sealapi``), which
ppml uses directly: TenSEAL's vector API has no rotation by a chosen step and
no control over levels or plaintext caching. Those bindings save and load
only through file paths, so :func:`to_bytes` and :func:`load` pass through a
private temporary directory (mode 0700, removed at once). SEAL compresses
what it saves with zstd; seeded objects (a symmetric encryption, evaluation
keys) save half their polynomials as a seed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from typing import Any, Protocol

from tenseal import sealapi

from ppml.proto.he.params import CkksParamSet


class _Saveable(Protocol):
    def save(self, path: str) -> None: ...


def to_bytes(obj: _Saveable) -> bytes:
    """What SEAL's ``save`` writes for ``obj`` (a ciphertext, keys, a serializable)."""
    with tempfile.TemporaryDirectory(prefix="ppml-seal-") as folder:
        path = os.path.join(folder, "obj")
        obj.save(path)
        with open(path, "rb") as f:
            return f.read()


def load(target: Any, context: sealapi.SEALContext, data: bytes) -> Any:
    """Load ``data`` into ``target`` (an empty SEAL object) under ``context``.

    SEAL validates the object against the context while loading (its
    parameters, its sizes); a mismatch raises ``ValueError`` or
    ``RuntimeError`` from the bindings, which callers turn into their own
    errors.
    """
    with tempfile.TemporaryDirectory(prefix="ppml-seal-") as folder:
        path = os.path.join(folder, "obj")
        with open(path, "wb") as f:
            f.write(data)
        target.load(context, path)
    return target


@functools.lru_cache(maxsize=8)
def seal_context(params: CkksParamSet) -> sealapi.SEALContext:
    """The SEAL context for ``params``; SEAL itself enforces 128-bit security too."""
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(
        sealapi.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
    )
    context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise ValueError(f"SEAL refuses {params.name}: {context.parameters_error_message()}")
    return context


def fingerprint(parts: dict[str, bytes]) -> str:
    """SHA-256 (hex) naming a set of evaluation keys: client and server compute it alike."""
    return hashlib.sha256(
        b"".join(hashlib.sha256(parts[name]).digest() for name in sorted(parts))
    ).hexdigest()
