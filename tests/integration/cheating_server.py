"""A TEST BUILD of ``ppml-server`` that flips one bit in one message it sends (issue 21).

Test only: it lives in the tests folder, is never installed, and the
production entry point (``ppml.servers.main``) has no switch that does this.
It wraps the replicated engine's links (``CommNet.exchange``) before running
the normal server. Before each job it reads the file named by
``PPML_TEST_CHEAT_FILE``: ``exchange peer array bit`` (four integers) makes
it flip ``bit`` of the first word of array ``array`` in the message it sends
to ``peer`` in the job's ``exchange``-th exchange (1-based, counting
exchanges that move data); an empty or missing file: no cheating.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ppml.servers import main as server_main
from ppml.servers.mpc.rep3.service import party

_honest_init = party.CommNet.__init__
_honest_exchange = party.CommNet.exchange


def _plan() -> tuple[int, int, int, int] | None:
    path = os.environ.get("PPML_TEST_CHEAT_FILE")
    text = Path(path).read_text().split() if path and Path(path).exists() else []
    if len(text) != 4:
        return None
    exchange, peer, array, bit = (int(v) for v in text)
    return exchange, peer, array, bit


def _init(self: Any) -> None:
    _honest_init(self)
    self._cheat = _plan()  # one CommNet per job: read once per job
    self._exchanges = 0


def _exchange(self: Any, send: dict[int, list[Any]], expect: dict[int, list[Any]]) -> Any:
    if send or expect:
        self._exchanges += 1
    cheat = self._cheat
    if cheat is not None and self._exchanges == cheat[0] and cheat[1] in send:
        _, peer, array, bit = cheat
        arrays = [a.copy() for a in send[peer]]
        word = arrays[array].reshape(-1).view(np.uint64)
        word[0] ^= np.uint64(1) << np.uint64(bit)
        send = {**send, peer: arrays}
    return _honest_exchange(self, send, expect)


party.CommNet.__init__ = _init  # type: ignore[method-assign]
party.CommNet.exchange = _exchange  # type: ignore[method-assign]

if __name__ == "__main__":
    server_main.main()
