"""Fixtures shared by the integration and the end-to-end tests (tests/integration, tests/e2e)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ppml.client.deploy.local import LocalCluster


class _Restartable:
    """The one cluster that tests kill and restart processes of, lent to one test at a time."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self._local: LocalCluster | None = None

    def lend(self) -> LocalCluster:
        from ppml.client.deploy.local import LocalCluster

        if self._local is None:
            directory = self._factory.mktemp("restartable")
            self._local = LocalCluster(parties=2, directory=directory, serving={"heartbeat_s": 2})
            self._local.start()
        return self._local

    def take_back(self) -> None:
        """Keep it for the next test only if every process is back and serving."""
        local = self._local
        if local is None:
            return
        try:
            assert set(local.processes) == {"server-0", "server-1", "dealer"}, local.processes
            local.wait_serving(60)
        except (AssertionError, RuntimeError, TimeoutError):
            self.close()

    def close(self) -> None:
        if self._local is not None:
            self._local.stop()
            self._local = None


@pytest.fixture(scope="session")
def _restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Restartable]:
    restartable = _Restartable(tmp_path_factory)
    yield restartable
    restartable.close()


@pytest.fixture
def restartable_cluster(_restartable: _Restartable) -> Iterator[LocalCluster]:
    """A 2-server cluster (heartbeat_s 2) for tests that kill and restart its processes.

    One cluster serves them all (a start-up costs ~15 s of both cores), a test at a
    time: each leaves every process serving again, since recovering is what it
    checks; after one that does not, the next test gets a new cluster.
    """
    yield _restartable.lend()
    _restartable.take_back()
