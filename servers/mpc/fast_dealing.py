"""The dealer's side of fast inference: model setups and per-forward bundles, per session.

Requests come from rank 0 over its authenticated, encrypted dealer link, in
the TTP request format (``{"function", "device", "args", "kwargs"}``); each
reply goes to *each* party over its own dealer link (:meth:`FastDealing.handle`
returns one payload per party). What the dealer learns: public architectures,
batch sizes and counts. What it keeps: one secret model key (256 bits,
``os.urandom``) per setup, in memory for the session only.

* ``fast_setup(wire_spec)``: a fresh model key and setup id; each party gets
  ``(setup_id, ModelSetup bytes)`` (its shares of the weight masks ``B``). A
  new key per setup, never a key per model id: a model re-uploaded under the
  same id is masked afresh, so the parties never see ``W' - W``.
* ``fast_bundles(setup_id, batch, count)``: ``count`` single-use bundles for
  forwards of ``batch`` samples; each party gets ``(serial, [Bundle bytes])``,
  the serial of the first bundle (serials number the session's bundles).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from ppml.servers.mpc import fast_spec
from ppml.servers.mpc.fast import engine as fe
from ppml.servers.mpc.fast.prg import new_key

SETUP = "fast_setup"
BUNDLES = "fast_bundles"
FUNCTIONS = (SETUP, BUNDLES)
MAX_SETUPS = 64  # per session; the oldest is forgotten (its bundles can no longer be made)
MAX_WEIGHTS = 20_000_000  # weights of one model (the servers' own limit)
MAX_ELEMENTS = 1 << 20  # wire values in one reply (about 200 MB of keys)

Payloads = tuple[tuple[int, list[bytes]], tuple[int, list[bytes]]]


class FastDealing:
    """Per-session model keys and bundle generation (dealer thread only)."""

    def __init__(self) -> None:
        self._engine = fe.Dealer()
        self._setups: OrderedDict[int, tuple[fe.ModelSpec, bytes]] = OrderedDict()
        self._next_setup = 0
        self._serial = 0

    def handle(self, function: str, args: tuple[Any, ...]) -> Payloads:
        """Payloads for party 0 and party 1; ValueError for a request the dealer refuses."""
        if function == SETUP and len(args) == 1:
            return self.setup(args[0])
        if function == BUNDLES and len(args) == 3 and all(type(a) is int for a in args):
            return self.bundles(*args)
        raise ValueError(f"bad fast request {function!r}")

    def setup(self, wire: object) -> Payloads:
        spec = fast_spec.from_wire(wire)
        weights = sum(int(np.prod(st.op.weight_shape)) for st in spec.stages)
        if weights > MAX_WEIGHTS:
            raise ValueError(f"{weights} weights; the dealer sets up at most {MAX_WEIGHTS}")
        self._next_setup += 1
        setup_id = self._next_setup
        key = new_key()
        self._setups[setup_id] = (spec, key)
        while len(self._setups) > MAX_SETUPS:
            self._setups.popitem(last=False)
        setups = self._engine.model_setup(spec, key)
        return (setup_id, [setups[0].to_bytes()]), (setup_id, [setups[1].to_bytes()])

    def bundles(self, setup_id: int, batch: int, count: int) -> Payloads:
        found = self._setups.get(setup_id)
        if found is None:
            raise ValueError(f"no fast setup {setup_id} in this session")
        spec, key = found
        per_sample = sum(int(np.prod(st.op.in_shape)) + int(np.prod(st.op.out_shape))
                         for st in spec.stages)  # fmt: skip
        if batch < 1 or count < 1 or per_sample * batch * count > MAX_ELEMENTS:
            raise ValueError(f"{count} bundles of batch {batch}: out of range")
        first = self._serial + 1
        out: tuple[list[bytes], list[bytes]] = ([], [])
        for _ in range(count):
            pair = self._engine.preprocess(spec, key, batch)
            for party in (0, 1):
                out[party].append(pair[party].to_bytes())
        self._serial += count
        return (first, out[0]), (first, out[1])
