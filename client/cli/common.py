"""Pieces shared by the ``ppml`` command modules (:mod:`.app`, :mod:`.data`, :mod:`.training`, ...).

They import nothing else of the CLI, so every command module can use them and
the entry point (:mod:`.app`) catches the one :class:`CliError`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ppml.client.cluster import Cluster


class CliError(Exception):
    """A user-facing error of the command line itself (bad input file, busy directory)."""


def existing_file(path: str, what: str) -> Path:
    """``path`` as a Path; CliError naming ``what`` if there is no such file."""
    file = Path(path)
    if not file.is_file():
        raise CliError(f"{what} {file} does not exist")
    return file


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned plain-text table."""
    cells = [list(map(str, header)), *[list(map(str, row)) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def connect(args: argparse.Namespace, monitor: bool = False, token: str | None = None) -> Cluster:
    """A client of the cluster named by ``--config`` / ``--insecure``.

    ``token``: act as another identity than the topology file's client token.
    """
    return Cluster.from_config(args.config, token=token, insecure=args.insecure, monitor=monitor)


def read_token(path: str) -> str:
    """The bearer token stored in ``path`` (as ``ppml cluster up`` writes them)."""
    try:
        token = existing_file(path, "token file").read_text().strip()
    except OSError as exc:
        raise CliError(f"cannot read token file {path}: {exc}") from None
    if not token:
        raise CliError(f"token file {path} is empty")
    return token
