"""``ppml`` commands as processes forked from one interpreter that imported the CLI once.

``python -m ppml.client.cli ...`` spends its first ~6 s (2 cores, more under load)
importing torch, CrypTen and gRPC. ``CliRunner`` starts this file once as a
*zygote* (the CLI imported, no channel opened, no thread started) and runs
each command in a fork of it: a process of its own with stdin ``/dev/null``,
its own stdout and stderr, the command's ``sys.exit`` status, and a traceback
with status 1 on an uncaught exception, as a fresh interpreter would give. The
child leaves through the interpreter's ordinary exit (atexit handlers,
non-daemon threads joined). Only the start-up is shared; tests that need the
real entry point (``python -m ppml.client.cli``) run it as a subprocess.

Protocol on the zygote's stdin/stdout, one JSON object a line: ``{"argv",
"cwd", "stdout", "stderr"}`` forks and answers ``{"pid"}``; ``{"wait": pid}``
answers ``{"status"}`` (negative: killed by that signal) once the child ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any


class Command:
    """One ``ppml`` command running in a fork of the zygote."""

    def __init__(self, runner: CliRunner, args: list[str], folder: Path, pid: int) -> None:
        self.runner, self.args, self.folder, self.pid = runner, args, folder, pid

    def wait(self, timeout: float) -> subprocess.CompletedProcess[str]:
        """Its exit status and output; on ``timeout`` it is killed (``TimeoutExpired``)."""
        status = self.runner.reap(self.pid, timeout)
        out = (self.folder / "stdout").read_text(errors="replace")
        err = (self.folder / "stderr").read_text(errors="replace")
        for name in ("stdout", "stderr"):
            (self.folder / name).unlink()
        self.folder.rmdir()
        if status is None:
            raise subprocess.TimeoutExpired(["ppml", *self.args], timeout, out, err)
        return subprocess.CompletedProcess(["ppml", *self.args], status, out, err)


class CliRunner:
    """The zygote process; started on first use, ended by :meth:`close`."""

    def __init__(self) -> None:
        self._zygote: subprocess.Popen[str] | None = None

    def _ask(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any] | None:
        """Send ``request``; the answer, or None if none came within ``timeout``."""
        if self._zygote is None:
            self._zygote = subprocess.Popen(
                [sys.executable, __file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        assert self._zygote.stdin is not None and self._zygote.stdout is not None
        self._zygote.stdin.write(json.dumps(request) + "\n")
        self._zygote.stdin.flush()
        return _read_line(self._zygote.stdout, timeout)

    def start(self, *args: str | Path) -> Command:
        folder = Path(tempfile.mkdtemp(prefix="ppml-cli-"))
        argv = [str(a) for a in args]
        request = {
            "argv": argv,
            "cwd": os.getcwd(),
            "stdout": str(folder / "stdout"),
            "stderr": str(folder / "stderr"),
        }
        answer = self._ask(request, timeout=60)
        assert answer is not None and "pid" in answer, f"the CLI zygote did not fork: {answer}"
        return Command(self, argv, folder, int(answer["pid"]))

    def run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.start(*args).wait(timeout)

    def reap(self, pid: int, timeout: float) -> int | None:
        """The child's exit status; None if it had to be killed after ``timeout``."""
        answer = self._ask({"wait": pid}, timeout)
        if answer is not None:
            return int(answer["status"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        assert self._zygote is not None and self._zygote.stdout is not None
        _read_line(self._zygote.stdout, 30)
        return None

    def close(self) -> None:
        if self._zygote is not None:
            assert self._zygote.stdin is not None
            self._zygote.stdin.close()  # the zygote ends at end of input
            try:
                self._zygote.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._zygote.kill()
                self._zygote.wait()
            self._zygote = None


def _read_line(stream: IO[str], timeout: float | None) -> dict[str, Any] | None:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        deadline = None if timeout is None else time.monotonic() + timeout
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not selector.select(remaining):
            return None
    line = stream.readline()
    assert line, "the CLI zygote exited"
    return dict(json.loads(line))


def _serve() -> None:
    """The zygote: import the CLI once, then fork a child per request."""
    from ppml.client.cli.app import main

    while line := sys.stdin.readline():
        request = json.loads(line)
        if "wait" in request:
            _, status = os.waitpid(int(request["wait"]), 0)
            print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the command: it leaves through SystemExit (or an exception), never back
            os.chdir(request["cwd"])
            for fd, path, flags in (
                (0, os.devnull, os.O_RDONLY),
                (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            ):
                opened = os.open(path, flags, 0o600)
                os.dup2(opened, fd)
                os.close(opened)
            sys.argv = ["ppml", *request["argv"]]
            main(request["argv"])
        print(json.dumps({"pid": pid}), flush=True)


if __name__ == "__main__":
    _serve()
