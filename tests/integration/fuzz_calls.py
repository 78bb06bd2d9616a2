"""The RPC fuzz test's caller: raw-byte calls to any RPC, their statuses checked and counted.

Every call goes through a generic channel call without serializers, so the
bytes a test built (valid or not) reach the server as they are. A reply is
checked as it comes: never INTERNAL or UNKNOWN, the status a missing, unknown
or wrong-role token must get, and every server process still running. A call
a server holds (a prediction waiting for the other servers' shares) is not
waited for: it is checked when it ends, and :meth:`Caller.finish` fails on
any such call that went wrong or never ended. A server stream is read for a
few messages; one the server keeps open (a job still queued, a health
watch) is left by the caller and counts as OK. A call may also name the
status it must get (``expect``): then it must come with a ``ppml-error-code``
trailer too (bad names and long strings: INVALID_ARGUMENT).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from ppml.client.deploy.local import LocalCluster
from ppml.proto.errors import ERROR_CODE_KEY
from ppml.servers.api.auth import required_roles
from ppml.v1 import (
    coordinator_pb2,
    datasets_pb2,
    federation_pb2,
    he_pb2,
    inference_pb2,
    registry_pb2,
    status_pb2,
    training_pb2,
)

QUICK_S = 0.1  # a reply later than this is checked in the background
STREAM_IDLE_S = 0.1  # a server stream quiet this long after a message is left (a queued job)
STREAM_READ = 3  # responses read from a server stream before leaving it
HANG_S = 45.0  # a call unanswered this long hangs (CancelJob may wait 30 s for every party)
CRASHES = ("INTERNAL", "UNKNOWN", "HANG")
ROLE = {"client": "client", "analyst": "client", "monitor": "monitor", "peer": "peer"}
# a client token half the time, so that most calls reach the servers' own checks
TOKENS = ("client",) * 6 + ("analyst", "monitor", "peer", "none", "unknown", "bad")


@dataclass(frozen=True)
class Rpc:
    path: str
    client_streaming: bool
    server_streaming: bool


def _rpcs() -> dict[str, Rpc]:
    modules = (
        registry_pb2, inference_pb2, datasets_pb2, training_pb2, federation_pb2, status_pb2,
        he_pb2,
    )  # fmt: skip
    found = {}
    for module in (*modules, coordinator_pb2, health_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"{service.name}/{method.name}"] = Rpc(
                    f"/{service.full_name}/{method.name}",
                    method.client_streaming,
                    method.server_streaming,
                )
    return found


RPCS = _rpcs()  # "Service/Method" -> Rpc, every RPC a compute server offers


def _error_code(call: Any) -> str | None:
    """The ``ppml-error-code`` trailer of a finished call, if any."""
    try:
        trailing = call.trailing_metadata() or ()
    except Exception:  # a call cancelled here has none
        return None
    value = dict(trailing).get(ERROR_CODE_KEY)
    return str(value) if value is not None else None


class Caller:
    """Sends fuzzed calls to a cluster and keeps the tally."""

    def __init__(self, local: LocalCluster, channels: list[grpc.Channel]) -> None:
        self.local = local
        self.channels = channels
        secrets = local.directory / "secrets"
        files = {name: f"{name}.token" for name in ROLE} | {"peer": "server-1.peer.token"}
        self._tokens = {name: (secrets / files[name]).read_text().strip() for name in ROLE}
        self.started = time.monotonic()
        self.statuses: Counter[str] = Counter()
        self.per_rpc: Counter[tuple[str, str]] = Counter()
        self.calls = 0
        self.messages = 0
        self.family = ""  # the family now sending (set by each fuzz test)
        self.per_family: Counter[str] = Counter()
        self._lock = threading.Condition()
        self._pending: list[tuple[grpc.Future, str]] = []
        self._unchecked = 0  # calls in the background not checked yet
        self._late_failures: list[str] = []

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("Caller(...)")  # Hypothesis prints a failing example's arguments

    def metadata(self, token: str) -> tuple[tuple[str, str], ...]:
        """``token``: a role's name (its token), or ``none``, ``unknown`` or ``bad``."""
        if token == "none":
            return ()
        if token == "unknown":
            return (("authorization", "Bearer " + "A" * 43),)
        if token == "bad":
            return (("authorization", "bearer " + self._tokens["client"]),)
        return (("authorization", f"Bearer {self._tokens[token]}"),)

    def send(
        self,
        name: str,
        server: int,
        body: Any,
        token: str = "client",
        timeout: float | None = 5.0,
        expect: str | None = None,
    ) -> str | None:
        """One call of RPC ``name``: raw bytes, or a list of them for a request stream.

        Returns the status's name, or None for a call still running after
        :data:`QUICK_S` (checked when it ends). ``expect``: the status the call
        must end with, with a ``ppml-error-code`` trailer.
        """
        rpc = RPCS[name]
        requests: list[bytes] = list(body) if rpc.client_streaming else [body]
        request: Any = iter(requests) if rpc.client_streaming else body
        channel = self.channels[server]
        metadata = self.metadata(token)
        where = f"{name} on server-{server} with token {token!r}, deadline {timeout}"
        with self._lock:
            self.calls += 1
            self.messages += len(requests)
            self.per_family[self.family] += 1
        if rpc.server_streaming:
            code, details, trailer = self._read_stream(channel, rpc, request, metadata, timeout)
            self._check(name, server, token, code, details, where, expect, trailer)
            return code
        make = channel.stream_unary if rpc.client_streaming else channel.unary_unary
        future = make(rpc.path).future(request, timeout=timeout, metadata=metadata)
        try:
            future.result(timeout=QUICK_S)
        except grpc.FutureTimeoutError:
            with self._lock:
                self._pending.append((future, where))
                self._unchecked += 1
            future.add_done_callback(self._checker(name, server, token, where, expect))
            return None
        except grpc.RpcError:
            pass
        code = future.code().name
        details, trailer = future.details() or "", _error_code(future)
        self._check(name, server, token, code, details, where, expect, trailer)
        return code

    def both(
        self,
        name: str,
        body: Any,
        token: str,
        timeout: float | None,
        expect: str | None = None,
    ) -> list[str | None]:
        """The same call to every server at once (valid work then runs in MPC)."""
        with ThreadPoolExecutor(len(self.channels)) as pool:
            calls = [
                pool.submit(self.send, name, server, body, token, timeout, expect)
                for server in range(len(self.channels))
            ]
            return [call.result() for call in calls]

    def _read_stream(
        self, channel: grpc.Channel, rpc: Rpc, request: Any, metadata: Any, timeout: float | None
    ) -> tuple[str, str, str | None]:
        make = channel.stream_stream if rpc.client_streaming else channel.unary_stream
        call = make(rpc.path)(request, timeout=timeout, metadata=metadata)
        hung, left = threading.Event(), threading.Event()

        def stop(why: threading.Event) -> None:
            why.set()
            call.cancel()

        timer = threading.Timer(HANG_S, stop, (hung,))
        timer.start()
        try:
            for received, _ in enumerate(call, start=1):
                timer.cancel()
                if received >= STREAM_READ:
                    stop(left)
                    break
                timer = threading.Timer(STREAM_IDLE_S, stop, (left,))
                timer.start()
            return "OK", "", None
        except grpc.RpcError as err:
            if left.is_set():  # the server kept the stream open, as it may
                return "OK", "", None
            code = "HANG" if hung.is_set() else err.code().name
            return code, err.details() or "", _error_code(err)
        finally:
            timer.cancel()

    def _checker(
        self, name: str, server: int, token: str, where: str, expect: str | None
    ) -> Callable[[Any], None]:
        def check(future: grpc.Future) -> None:
            try:
                code, details = future.code().name, future.details() or ""
                self._check(name, server, token, code, details, where, expect, _error_code(future))
            except AssertionError as failure:
                with self._lock:
                    self._late_failures.append(str(failure))
            finally:
                with self._lock:
                    self._unchecked -= 1
                    self._lock.notify_all()

        return check

    def _check(
        self,
        name: str,
        server: int,
        token: str,
        code: str,
        details: str,
        where: str,
        expect: str | None = None,
        trailer: str | None = None,
    ) -> None:
        with self._lock:
            self.statuses[code] += 1
            self.per_rpc[(name, code)] += 1
        assert code not in CRASHES, f"{where}: {code} {details}"
        self.check_alive()
        if expect is not None:
            assert code == expect, f"{where}: {code} {details[:200]}, expected {expect}"
            assert trailer, f"{where}: {code} without a {ERROR_CODE_KEY} trailer"
        expected = self.expected(name, server, token)
        if expected is None:
            assert code != "UNAUTHENTICATED", f"{where}: {code} {details}"
        elif code != "DEADLINE_EXCEEDED":
            assert code == expected, f"{where}: {code} {details}, expected {expected}"

    def expected(self, name: str, server: int, token: str) -> str | None:
        """The status a call must get for its token alone, if that decides it."""
        if name.startswith("Coordinator/") and server != 0:
            return "UNIMPLEMENTED"  # only the leader has control links
        roles = required_roles(RPCS[name].path)
        if roles is None:
            return None
        if token not in ROLE:
            return "UNAUTHENTICATED"
        return None if ROLE[token] in roles else "PERMISSION_DENIED"

    def check_alive(self) -> None:
        for process, proc in self.local.processes.items():
            assert proc.poll() is None, f"{process} exited with {proc.returncode}"

    def finish(self) -> None:
        """Wait for every call still running; fail on any that went wrong or never ended."""
        with self._lock:
            pending = list(self._pending)
        for future, where in pending:
            try:
                future.result(timeout=HANG_S)
            except grpc.FutureTimeoutError:
                with self._lock:
                    self._late_failures.append(f"{where}: HANG, no reply within {HANG_S} s")
                future.cancel()
            except grpc.RpcError:
                pass
        with self._lock:
            self._lock.wait_for(lambda: self._unchecked == 0, timeout=10)
            failures = list(self._late_failures)
        assert not failures, "\n".join(failures)
