"""Bearer tokens and the auth files that list them (shared by servers and provisioning).

Each server reads an auth file listing the tokens it accepts, by SHA-256 hash
only (a stolen auth file does not reveal tokens)::

    [[tokens]]
    identity = "hospital-a"   # who; becomes the owner of what it uploads
    role = "client"           # client | monitor | peer
    sha256 = "9f86d0…"

Roles: ``client`` may use every public service; ``monitor`` only reads status
and public metadata (the dashboard); ``peer`` is for the servers' and the
dealer's links to the leader. Tokens and key files are written mode 0600.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROLES = ("client", "monitor", "peer")


@dataclass(frozen=True)
class Identity:
    name: str
    role: str


def new_token() -> str:
    """A fresh random bearer token (256 bits from the OS CSPRNG)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_secret(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file already existed
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def write_auth_file(path: Path, entries: list[tuple[str, str, str]]) -> None:
    """Write an auth file from ``(identity, role, token)`` triples."""
    lines = []
    for identity, role, token in entries:
        lines += [
            "[[tokens]]",
            f'identity = "{identity}"',
            f'role = "{role}"',
            f'sha256 = "{token_hash(token)}"',
            "",
        ]
    write_secret(path, "\n".join(lines))


def load_auth_file(path: Path) -> dict[str, Identity]:
    """Token hash -> identity; raises ValueError naming a malformed entry."""
    raw = tomllib.loads(path.read_text())
    table: dict[str, Identity] = {}
    for i, entry in enumerate(raw.get("tokens", [])):
        role = entry.get("role")
        digest = entry.get("sha256", "")
        if role not in ROLES or len(digest) != 64 or not entry.get("identity"):
            raise ValueError(f"{path}: tokens[{i}] needs identity, role in {ROLES}, sha256")
        table[digest] = Identity(entry["identity"], role)
    return table
