"""Every code block of the documentation runs under ``make test`` (pytest), with sybil.

Which documents: README.md, docs/*.md and proto/README.md (``DOCUMENTS``; the
root ``conftest.py`` hands them to pytest, ``pyproject.toml``'s ``testpaths``
names them). What runs:

* ``python`` blocks, in order, in one namespace per document (a continuing
  story: a later block uses what an earlier one made), in a temporary
  folder. A LocalCluster that a block started and left running is stopped
  when the document ends.
* ``bash`` blocks, each with ``bash -eu -o pipefail`` in one temporary folder
  per document (later blocks see earlier blocks' files), with a ``.venv`` there
  that shows this interpreter's environment so ``.venv/bin/ppml`` works, and
  its ``bin`` first on ``PATH``. Once a block names ``ppml``, that ``ppml`` is
  a shim that runs the command in a fork of one process that imported the CLI
  (``cli_forks.py``: same arguments, streams and exit status, without ~6 s of
  imports per command). A cluster a block started with ``ppml cluster up`` and
  did not stop is stopped when the document ends.
* ``ini`` blocks (systemd units) are parsed.
* ``text`` blocks are pictures or literal protocol text, not code.

A block that cannot run here is preceded by ``<!-- skip: next "reason" -->``
(several hosts, node, a long run); ``test_docs_policy.py`` fails on a block
of any other language and on a skip without a reason.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

from tests.docs.cli_forks import CliForks

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ("README.md", "docs/*.md", "proto/README.md")
RUNNABLE = ("python", "bash")
NOT_CODE = ("text",)
SHELL_TIMEOUT_S = 300.0
_WORKDIR = "_doc_workdir"
_CWD = "_doc_previous_cwd"
_FORKS = "_doc_cli_forks"
_NAMES_PPML = re.compile(r"(^|[\s/;|&(])ppml\s", re.MULTILINE)


def _environment_bin() -> Path:
    return Path(sys.executable).parent


def _environment_view(venv: Path) -> None:
    """``venv``: this environment, entry by entry (links), with a ``bin`` of its own."""
    real = _environment_bin().parent
    venv.mkdir()
    for entry in real.iterdir():
        if entry.name != "bin":
            (venv / entry.name).symlink_to(entry)
    (venv / "bin").mkdir()
    for entry in _environment_bin().iterdir():
        (venv / "bin" / entry.name).symlink_to(entry)


def run_shell(example: Example) -> None:
    """Run one ``bash`` block; a failing command fails the example with its output."""
    folder = Path(example.namespace[_WORKDIR].name)
    venv = folder / ".venv"
    if _NAMES_PPML.search(example.parsed) and _FORKS not in example.namespace:
        forks = CliForks(venv)  # replaces the .venv/bin/ppml link with the shim
        example.namespace[_FORKS] = forks
        forks.wait_ready()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        ["bash", "-eu", "-o", "pipefail", "-c", example.parsed],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT_S,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"shell block at line {example.line} of {example.path} exited with "
            f"{result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )


def parse_ini(example: Example) -> None:
    """A systemd unit (or other ini) block must parse; comments and repeated keys allowed."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(example.parsed)
    if not parser.sections():
        raise AssertionError(f"ini block at line {example.line} of {example.path} has no section")


def _enter(namespace: dict[str, Any]) -> None:
    """Python blocks run in the document's temporary folder."""
    namespace[_CWD] = os.getcwd()
    namespace["__name__"] = "__doc__"
    folder = tempfile.TemporaryDirectory(prefix="ppml-doc-")
    _environment_view(Path(folder.name, ".venv"))
    namespace[_WORKDIR] = folder
    os.chdir(folder.name)


def _leave(namespace: dict[str, Any]) -> None:
    """Stop what the document left running, go back, remove the temporary folder."""
    from ppml.client import Cluster, LocalCluster

    for value in list(namespace.values()):
        if isinstance(value, Cluster):
            value.close()
        if isinstance(value, LocalCluster):
            value.stop()
    forks = namespace.pop(_FORKS, None)
    if forks is not None:
        forks.stop()
    os.chdir(namespace.pop(_CWD))
    folder = namespace.pop(_WORKDIR)
    for pids in Path(folder.name).rglob("pids.json"):  # a `ppml cluster up` left running
        subprocess.run(
            [str(_environment_bin() / "ppml"), "cluster", "down", "--dir", str(pids.parent)],
            capture_output=True,
            timeout=60,
        )
    folder.cleanup()


def make_sybil(path: str = str(ROOT), patterns: tuple[str, ...] = DOCUMENTS) -> Sybil:
    """The documentation tests: the same parsers for the real documents and for the
    harness's own tests (which pass a temporary folder and ``*.md``)."""
    return Sybil(
        parsers=[
            PythonCodeBlockParser(),
            CodeBlockParser("bash", run_shell),
            CodeBlockParser("ini", parse_ini),
            SkipParser(),
        ],
        path=path,
        patterns=list(patterns),
        setup=_enter,
        teardown=_leave,
    )


__all__ = ["DOCUMENTS", "NOT_CODE", "RUNNABLE", "make_sybil"]
