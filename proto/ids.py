"""Ids of models, data sets, jobs and requests: what a caller may choose."""

from __future__ import annotations

import hashlib
import re

from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.names import MAX_ID_CHARS, quote

_ID_PATTERN = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_ID_CHARS}}}")


def check_id(value: str, what: str) -> str:
    """Ids are 1-64 characters of ``[A-Za-z0-9_.-]``."""
    if not _ID_PATTERN.fullmatch(value) or value in (".", ".."):
        raise PpmlError(
            ErrorCode.INVALID_ARGUMENT,
            f"{what} must be 1-{MAX_ID_CHARS} characters of letters, digits, '_', '.', '-' "
            f"(got {quote(value)})",
        )
    return value


def fingerprint(*parts: object) -> str:
    """A short digest of public values every server must agree on (e.g. a model's
    architecture under one id); the leader compares servers' fingerprints."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
