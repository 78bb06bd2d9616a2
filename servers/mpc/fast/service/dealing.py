"""The dealer's side of fast inference: model setups and per-forward bundles, per session.

Requests come from rank 0 over its authenticated, encrypted dealer link, in
the TTP request format (``{"function", "device", "args", "kwargs"}``); each
reply goes to *each* party over its own dealer link (:meth:`FastDealing.handle`
returns one payload per party), as a small pickled header and the blobs as
raw frames (:func:`frames`, :func:`read_reply`), to both parties at once.
What the dealer learns: public architectures, batch sizes and counts. What
it keeps: one secret model key (256 bits, ``os.urandom``) per setup, in
memory for the session only.

* ``fast_setup(wire_spec)``: a fresh model key and setup id; each party gets
  ``(setup_id, ModelSetup bytes)`` (its shares of the weight masks ``B``). A
  new key per setup, never a key per model id: a model re-uploaded under the
  same id is masked afresh, so the parties never see ``W' - W``.
* ``fast_bundles(setup_id, batch, count)``: ``count`` single-use bundles for
  forwards of ``batch`` samples; each party gets ``(serial, [Bundle bytes])``,
  the serial of the first bundle (serials number the session's bundles).

Ahead of time: once a (setup, batch) has been asked for, with ``batch`` a
power of two (the parties' pool buckets), a background thread
keeps ``stock`` bundles of it made, or ``STOCK_ROWS`` samples' worth of small
ones (at most ``MAX_STOCK_BYTES`` in all, the most recently asked pairs
first), so a request is mostly a transfer. It restocks a pair once it is down
to half, many bundles in one pass (:meth:`Dealer.preprocess_many
<ppml.servers.mpc.fast.engine.Dealer.preprocess_many>`): key generation has a
per-level cost that one small bundle at a time would pay again and again. A
pass makes at most one reply's worth (``MAX_ELEMENTS``), and a large model's
bundles (one sample over ``MAX_ELEMENTS``: a BERT-tiny-shaped encoder's are
1.16 GB per party) are never stocked, only made when asked for. Each bundle
is handed out once, then forgotten.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ppml.servers.mpc.fast import engine as fe
from ppml.servers.mpc.fast.graph import plan_of
from ppml.servers.mpc.fast.prg import new_key
from ppml.servers.mpc.fast.service import spec as fast_spec

SETUP = "fast_setup"
BUNDLES = "fast_bundles"
FUNCTIONS = (SETUP, BUNDLES)
MAX_SETUPS = 64  # per session; the oldest is forgotten (its bundles can no longer be made)
MAX_WEIGHTS = 20_000_000  # weights of one model (the servers' own limit)
MAX_ELEMENTS = 1 << 20  # wire values in one reply (about 370 MB of keys per party at depth 47)
# A model whose one sample needs more than MAX_ELEMENTS gets one sample per reply, up to this
# many values (a BERT-tiny-shaped encoder: 2.2 M, about 1.3 GB per party); beyond, none.
MAX_SAMPLE_ELEMENTS = 3 << 20

MAX_STOCK_BYTES = 256 << 20  # bundles made ahead, both parties' parts
MAX_STOCKED_PAIRS = 16  # (setup, batch) pairs kept in stock, most recently asked
MAKE_ROWS = 64  # samples one pass of the stock maker generates at most (several small bundles)
STOCK_ROWS = 16  # small buckets keep at least this many samples in stock, made in few passes

Payloads = tuple[tuple[int, list[bytes]], tuple[int, list[bytes]]]
Pair = tuple[bytes, bytes]  # party 0's and party 1's serialised bundle


class FastDealing:
    """Per-session model keys and bundle generation; :meth:`close` at the session's end.

    :meth:`handle` runs on the dealer's thread; one background thread makes
    bundles ahead. Each thread draws from its own AES-CTR stream.
    """

    def __init__(self, stock: int = 4) -> None:
        self._engine = fe.Dealer()
        self._setups: OrderedDict[int, tuple[fe.ModelSpec, bytes]] = OrderedDict()
        self._next_setup = 0
        self._serial = 0
        self._target = stock
        self._stock: OrderedDict[tuple[int, int], deque[Pair]] = OrderedDict()
        self._stock_bytes = 0
        self._filling: set[tuple[int, int]] = set()  # pairs that went short, until full again
        self._cond = threading.Condition()
        self._closed = False
        self._maker: threading.Thread | None = None

    def close(self) -> None:
        """Stop making bundles ahead and forget the stock (the keys go with this object)."""
        with self._cond:
            self._closed = True
            self._stock.clear()
            self._cond.notify_all()

    def handle(self, function: str, args: tuple[Any, ...]) -> Payloads:
        """Payloads for party 0 and party 1; ValueError for a request the dealer refuses."""
        if function == SETUP and len(args) == 1:
            return self.setup(args[0])
        if function == BUNDLES and len(args) == 3 and all(type(a) is int for a in args):
            return self.bundles(*args)
        raise ValueError(f"bad fast request {function!r}")

    def setup(self, wire: object) -> Payloads:
        spec = fast_spec.from_wire(wire)
        weights = sum(int(np.prod(op.weight_shape)) for op in spec.weighted)
        if weights > MAX_WEIGHTS:
            raise ValueError(f"{weights} weights; the dealer sets up at most {MAX_WEIGHTS}")
        self._next_setup += 1
        setup_id = self._next_setup
        key = new_key()
        with self._cond:
            self._setups[setup_id] = (spec, key)
            while len(self._setups) > MAX_SETUPS:
                self._setups.popitem(last=False)
        setups = self._engine.model_setup(spec, key)
        return (setup_id, [setups[0].to_bytes()]), (setup_id, [setups[1].to_bytes()])

    def bundles(self, setup_id: int, batch: int, count: int) -> Payloads:
        with self._cond:
            found = self._setups.get(setup_id)
        if found is None:
            raise ValueError(f"no fast setup {setup_id} in this session")
        spec, key = found
        per_sample = plan_of(spec).elements_per_sample()
        if batch < 1 or count < 1 or per_sample * batch * count > reply_limit(per_sample):
            raise ValueError(f"{count} bundles of batch {batch}: out of range")
        # pools use powers of two (other sizes are one-offs); a large model's bundles (one
        # sample over MAX_ELEMENTS) are made on demand only, never stocked
        bucket = batch & (batch - 1) == 0 and per_sample * batch <= MAX_ELEMENTS
        pairs = self._from_stock((setup_id, batch), count) if bucket else []
        if len(pairs) < count:
            pairs += _make(self._engine, spec, key, batch, count - len(pairs))
        first = self._serial + 1
        self._serial += count
        return (first, [p[0] for p in pairs]), (first, [p[1] for p in pairs])

    def stocked(self, setup_id: int, batch: int) -> int:
        """Bundles of (setup, batch) made ahead and not yet handed out."""
        with self._cond:
            return len(self._stock.get((setup_id, batch), ()))

    def _from_stock(self, pair: tuple[int, int], count: int) -> list[Pair]:
        """Up to ``count`` bundles made ahead; from now on keep ``pair`` stocked."""
        with self._cond:
            queue = self._stock.setdefault(pair, deque())
            self._stock.move_to_end(pair)
            while len(self._stock) > MAX_STOCKED_PAIRS:
                gone, dropped = self._stock.popitem(last=False)
                self._filling.discard(gone)
                self._stock_bytes -= sum(len(a) + len(b) for a, b in dropped)
            taken = [queue.popleft() for _ in range(min(count, len(queue)))]
            self._stock_bytes -= sum(len(a) + len(b) for a, b in taken)
            if self._maker is None and self._target > 0:
                self._maker = threading.Thread(target=self._make_ahead, daemon=True)
                self._maker.start()
            self._cond.notify_all()
            return taken

    def _stock_target(self, batch: int) -> int:
        """Bundles of ``batch`` samples to keep: ``stock``, or ``STOCK_ROWS`` samples' worth."""
        return max(self._target, STOCK_ROWS // batch) if self._target > 0 else 0

    def _short(self) -> tuple[tuple[int, int], fe.ModelSpec, bytes, int] | None:
        """The most recently asked pair to restock and how many it lacks, if there is room
        (lock held). A pair is short once down to half its target and stays short until
        full, and a pass makes at least half a target, so small bundles are made many to a
        pass even while requests keep taking them, not one or two after each request."""
        if self._stock_bytes >= MAX_STOCK_BYTES:
            return None
        for pair in reversed(self._stock):
            found = self._setups.get(pair[0])
            have, target = len(self._stock[pair]), self._stock_target(pair[1])
            if have <= target // 2:
                self._filling.add(pair)
            elif have >= target:
                self._filling.discard(pair)
            if found is not None and pair in self._filling:
                return pair, found[0], found[1], max(target - have, target // 2)
        return None

    def _make_ahead(self) -> None:
        engine = fe.Dealer()  # its own keyed stream: one generator per thread
        while True:
            job = None
            with self._cond:
                while not self._closed and (job := self._short()) is None:
                    self._cond.wait()
                if self._closed or job is None:
                    return
            pair, spec, key, missing = job
            most = min(MAKE_ROWS // pair[1], MAX_ELEMENTS // _elements(spec, pair[1]))
            made = _make(engine, spec, key, pair[1], max(1, min(missing, most)))
            with self._cond:
                if pair in self._stock and not self._closed:
                    self._stock[pair].extend(made)
                    self._stock_bytes += sum(len(a) + len(b) for a, b in made)


def _elements(spec: fe.ModelSpec, batch: int) -> int:
    """Wire values of one bundle of ``batch`` samples."""
    return plan_of(spec).elements_per_sample() * batch


def reply_limit(per_sample: int) -> int:
    """Wire values one reply may carry for a model of ``per_sample`` values per sample."""
    return max(MAX_ELEMENTS, per_sample) if per_sample <= MAX_SAMPLE_ELEMENTS else MAX_ELEMENTS


def frames(payload: tuple[int, list[bytes]]) -> list[bytes]:
    """A reply on the wire: a pickled ``(number, [blob sizes])`` header, then each blob raw.

    The party reads it with :func:`read_reply`; blobs travel without pickling.
    """
    number, blobs = payload
    return [pickle.dumps((number, [len(b) for b in blobs])), *blobs]


MAX_BLOBS = 4096  # blobs in one reply


def read_reply(header: object, read_frame: Callable[[], bytearray]) -> tuple[int, list[bytearray]]:
    """The party's side of :func:`frames`: checks the header, then reads each blob."""
    match header:
        case (int(number), list(sizes)) if len(sizes) <= MAX_BLOBS and all(
            type(n) is int and n >= 0 for n in sizes
        ):
            blobs = [read_frame() for _ in sizes]
        case _:
            raise RuntimeError("the dealer sent a malformed fast reply")
    if [len(b) for b in blobs] != sizes:
        raise RuntimeError("the dealer's fast reply does not match its header")
    return number, blobs


def _make(engine: fe.Dealer, spec: fe.ModelSpec, key: bytes, batch: int, count: int) -> list[Pair]:
    """``count`` serialised bundle pairs, generated in one pass (:meth:`Dealer.preprocess_many`)."""
    return [
        (a.to_bytes(), b.to_bytes()) for a, b in engine.preprocess_many(spec, key, batch, count)
    ]
