"""The dashboard in a real browser, against a real cluster.

Starts a 2-server cluster, shares a model and serves predictions, shares a
small data set and trains on it, creates a federation (cancelled before the
servers are disturbed), runs
``ppml dashboard`` (Streamlit) on a free port, loads it in headless Chromium
driven over the DevTools protocol, checks that both servers and the request
count appear, kills server-1 and checks that the page marks it down, then
restarts it and checks that the page shows it up again.
Screenshots go to ``artifacts/``; with ``PPML_UPDATE_DOCS_SCREENSHOT=1`` the
healthy one also replaces ``docs/dashboard.png``.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import websocket

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster, free_port

ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH = 1400


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bytes(reply.read())
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout}s") from None
            time.sleep(0.2)


class Chromium:
    """Headless Chromium and one page, driven through the DevTools protocol."""

    def __init__(self, profile: Path, log: Path) -> None:
        if not Path(CHROMIUM).exists():
            raise RuntimeError("chromium not found: `make test` installs it (apt-get)")
        port = free_port()
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}",
            f"--window-size={WIDTH},1000",
            "about:blank",
        ]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [CHROMIUM, *flags], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            _wait_http(f"http://127.0.0.1:{port}/json/version", self.proc, log)
            pages = json.loads(_wait_http(f"http://127.0.0.1:{port}/json/list", self.proc, log))
            url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
            self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        except BaseException:
            _stop(self.proc)
            raise
        self._ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are dropped."""
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return reply["result"].get("value")

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def wait_text(self, done: Callable[[str], bool], what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if done(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"page never showed {what} in {timeout}s; it shows:\n{text}")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> None:
        """The whole page: the viewport is stretched to the app's content first."""
        height = self.evaluate(
            "Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))"
        )
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=min(int(height or 1000) + 40, 8000),
            deviceScaleFactor=1,
            mobile=False,
        )
        time.sleep(1.5)  # let charts re-layout at the new size
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        self.send("Emulation.clearDeviceMetricsOverride")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            _stop(self.proc)


@pytest.fixture
def local(restartable_cluster: LocalCluster) -> LocalCluster:
    """The cluster that tests restarting processes share (tests/conftest.py)."""
    return restartable_cluster


@pytest.fixture
def dashboard(local: LocalCluster, tmp_path: Path) -> Iterator[str]:
    """``ppml dashboard`` on a free port; yields its URL."""
    port = free_port()
    log = tmp_path / "dashboard.log"
    command = [sys.executable, "-m", "ppml.client.cli", "dashboard"]
    command += ["--config", str(local.config_path), "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        assert _wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc, log) == b"ok"
        yield f"http://127.0.0.1:{port}/"
    finally:
        _stop(proc)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        yield chromium
    finally:
        chromium.close()


def _traffic(cluster: Cluster, model_id: str, seconds: float) -> None:
    """Single and concurrent predictions (so that some MPC jobs batch several requests)."""
    x = torch.randn(8, 8)
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:
            cluster.predict(model_id, x[:1])
            list(pool.map(lambda i: cluster.predict(model_id, x[i : i + 2]), range(4)))


def _leader_requests(text: str) -> int:
    match = re.search(r"requests \(leader\)\s+(\d+)", text)
    return int(match.group(1)) if match else 0


def test_dashboard_shows_the_cluster_and_a_dead_server(
    local: LocalCluster, dashboard: str, browser: Chromium
) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    browser.send("Page.navigate", url=dashboard)
    with Cluster.from_config(local.config_path) as cluster:
        model_id = cluster.share_model(net, torch.zeros(1, 8), name="e2e-mlp")
        data_id = cluster.share_dataset(
            torch.randn(32, 8), torch.arange(32) % 3, name="e2e-data", num_classes=3
        )
        job = cluster.train(net, [data_id], epochs=1, batch_size=32, lr=0.1, name="e2e-job")
        job.result(timeout=120)
        _traffic(cluster, model_id, seconds=8)
        total = cluster.status()[0].requests_total
        federation = cluster.create_federation(
            net, ["analyst"], rounds=2, name="e2e-fl", sample_input=torch.zeros(1, 8)
        )
    assert total > 0

    text = browser.wait_text(
        lambda t: (
            _leader_requests(t) == total
            and "e2e-mlp" in t
            and "e2e-data" in t
            and federation.federation_id in t
        ),
        f"{total} requests, the shared data set and the federation",
    )
    assert "e2e-fl" in text and "1 of 2" in text  # the monitor token lists federations
    assert "server-0" in text and "server-1" in text and "dealer" in text
    assert "All 2 compute servers and the dealer are up" in text
    assert "Traceback" not in text
    time.sleep(2.5)  # one more refresh: the rate chart gets its last point
    browser.screenshot(ARTIFACTS / "dashboard-healthy.png")
    if os.environ.get("PPML_UPDATE_DOCS_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(ARTIFACTS / "dashboard-healthy.png", ROOT / "docs" / "dashboard.png")

    with Cluster.from_config(local.config_path) as cluster:
        cluster.federation(federation.federation_id).cancel()
    local.kill("server-1")
    text = browser.wait_text(
        lambda t: "server-1 is DOWN" in t and "DOWN (unreachable)" in t,
        "server-1 down",
        timeout=30,
    )
    assert "Connection refused" in text or "UNAVAILABLE" in text
    assert "server-0 is DOWN" not in text
    browser.screenshot(ARTIFACTS / "dashboard-server-down.png")

    local.start_server(1)  # the page notices the restart by itself
    browser.wait_text(
        lambda t: "All 2 compute servers and the dealer are up" in t and "DOWN" not in t,
        "server-1 back",
        timeout=120,
    )
