"""``ppml`` for the documentation's shell blocks, forked from one process that imported it.

Every ``ppml ...`` line of a shell block would start an interpreter that spends
~6 s (2 cores) importing torch, CrypTen and gRPC before it reads its
arguments. The harness puts a *shim* named ``ppml`` first on the block's
``PATH`` and in its ``.venv/bin``: a Python program run without ``site`` (no
third-party import, milliseconds) that connects to a *server* on a Unix
socket and hands over its argv, working folder, environment and its stdin,
stdout and stderr themselves (``SCM_RIGHTS``). The server imported the CLI
once; per command it forks a *waiter*, which forks the command: the command
runs ``ppml.client.cli``'s ``main`` on the shim's own file descriptors and
ends through the interpreter's ordinary exit, and the waiter sends its exit
status back, which the shim exits with (128 + the signal if it was killed,
as a shell reports). What the command prints, reads and returns is what the
``ppml`` console script would; only the start-up is shared.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

_MAX_REQUEST = 1 << 20
SOCKET_ENV = "PPML_DOC_CLI_SOCKET"

# ``-S``: no site-packages, so the shim starts in milliseconds; it needs only the stdlib
_SHIM = """#!{python} -S
import array, json, os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect({path!r})
request = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}})
fds = array.array("i", [0, 1, 2])
sock.sendmsg([request.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
sock.shutdown(socket.SHUT_WR)
answer = b""
while chunk := sock.recv(64):
    answer += chunk
sys.exit(int(answer) if answer else 1)
"""


class CliForks:
    """The server process and the ``bin`` folder holding the shim (``stop`` ends it)."""

    def __init__(self, folder: Path) -> None:
        self.socket_path = folder / "ppml-cli.sock"
        self.bin = folder / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        shim = self.bin / "ppml"
        shim.unlink(missing_ok=True)  # a link to the real console script: never write through
        shim.write_text(_SHIM.format(python=sys.executable, path=str(self.socket_path)))
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self._server = subprocess.Popen(
            [sys.executable, __file__, str(self.socket_path)], stdin=subprocess.DEVNULL
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ppml fork server did not start ({self._server.poll()})")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.terminate()
        try:
            self._server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    fds = array.array("i")
    data = b""
    while True:
        chunk, ancillary, _, _ = conn.recvmsg(_MAX_REQUEST, socket.CMSG_SPACE(3 * fds.itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if not chunk:
            break
        data += chunk
    return json.loads(data), list(fds)


def _run_command(request: dict, fds: list[int]) -> None:
    """In the command's process: become the shim's ``ppml`` and run it (never returns)."""
    from ppml.client.cli.app import main

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["ppml", *request["argv"]]
    main(request["argv"])


def _wait_and_answer(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the waiter: fork the command, wait for it, send its status; then exit."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_command(request, fds)  # leaves through SystemExit, like a fresh `ppml`
    for fd in fds:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    conn.sendall(str(code if code >= 0 else 128 - code).encode())
    conn.close()
    os._exit(0)


def _serve(path: str) -> None:
    import ppml.client.cli.app  # noqa: F401  (the import every command shares)

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # waiters are reaped without waiting
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".part")
    listener.listen(16)
    os.replace(path + ".part", path)  # ready once it exists
    while True:
        conn, _ = listener.accept()
        request, fds = _receive(conn)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            _wait_and_answer(conn, request, fds)
        conn.close()
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    _serve(sys.argv[1])
