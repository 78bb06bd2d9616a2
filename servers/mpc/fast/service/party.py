"""A compute party's side of fast inference: model setups, bundle pools, online forwards.

Runs on the MPC worker thread, inside the session, in lockstep with the
other party (two compute parties only). Every job starts with a *plan* that
rank 0 sends rank 1 (one small one-way message: whether the model needs a
setup, which pooled bundles to use, by serial), so both parties decide alike
even when their stored models or pools could differ; rank 1 checks the
serials against its own pool.

* Setup (first use of a stored model in a session, or a new upload under
  the same id): rank 0 asks the dealer (``fast_setup``); each party gets its
  shares of the weight masks ``B`` over its own dealer link and the parties
  open ``W^ = W - B`` between themselves (one exchange over the party link).
  ``W^`` stays in this process's memory; it never goes to the dealer.
* Offline (refill jobs, when no prediction waits): rank 0 asks the dealer
  for bundles of one bucket; each party pools its own.
* Online (predict jobs): pop pooled bundles covering the batch (else ask the
  dealer on demand), then :func:`ppml.servers.mpc.fast.engine.forward`, whose
  exchanges go over the party link (``all_gather`` of the CrypTen
  communicator, the same calls in the same order on both parties).
* Refill riding on a prediction: when the model's pool is short, rank 0's
  plan also names a refill. Rank 0 asks the dealer *before* the forward, so
  the dealer's transfer overlaps the online exchanges, and both parties take
  the bundles in :meth:`FastInference.finish`, which the predict kind calls
  after it has answered the job's callers. A client that waits for each
  answer (no idle gap long enough for a refill job) keeps its pool filled
  this way instead of asking the dealer inside every forward. Not for a
  *large* model, one whose single sample needs more than a normal reply
  (:func:`large`): making its material takes far longer than its forward
  (BERT-tiny: about 14 s of dealer time against a few seconds online), so a
  riding refill would hold up the next job; its pool is refilled by refill
  jobs in idle time. A model with more than :data:`EARLY_RIDE_ELEMENTS`
  dealer values per sample (a ResNet-20: about 200,000, 146 MB of keys per
  party) asks for its riding refill in :meth:`FastInference.finish`, after
  the answers, not before the forward: making and sending that much material
  takes CPU the forward needs when the dealer shares the servers' cores (on
  this 2-core machine it made a pool-warm ResNet-20 request 250-300 ms
  slower), so its answer goes out first.

Everything here dies with the session (:meth:`FastInference.session_lost`):
the dealer's keys live for one session too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ppml.proto.domain.architecture import Architecture
from ppml.proto.domain.status import FastPool
from ppml.servers.mpc.fast import engine as fe
from ppml.servers.mpc.fast.bundle import Bundle, ModelSetup
from ppml.servers.mpc.fast.graph import plan_of
from ppml.servers.mpc.fast.prg import Ring
from ppml.servers.mpc.fast.service import dealing as fast_dealing
from ppml.servers.mpc.fast.service import spec as fast_spec
from ppml.servers.mpc.fast.service.pool import BundlePool, Pooled, cover_rows, largest_bucket

REFILL_ROWS = 8  # images one refill job asks the dealer for (at least one bundle)
EARLY_RIDE_ELEMENTS = 1 << 14  # above this per sample, a riding refill is asked after answering


class Channel(Protocol):
    """This party's links, as the fast path uses them (see :class:`CommChannel`)."""

    rank: int

    def send_plan(self, plan: tuple[Any, ...]) -> None: ...  # rank 0 -> rank 1
    def recv_plan(self) -> tuple[Any, ...]: ...
    def ask_dealer(self, function: str, args: tuple[Any, ...]) -> None: ...  # rank 0 only
    def from_dealer(self) -> tuple[int, list[bytes] | list[bytearray]]: ...
    def exchange(self, mine: Ring) -> Ring: ...  # with the other party
    def break_session(self, reason: str) -> None: ...


class CommChannel:
    """:class:`Channel` over the session's CrypTen communicator (ppml's TLS links)."""

    def __init__(self) -> None:
        from ppml.servers.mpc.core.crypten_compat import crypten

        self._comm = crypten.communicator.get()
        self.rank: int = self._comm.get_rank()
        self._dealer: int = self._comm.get_ttp_rank()

    def send_plan(self, plan: tuple[Any, ...]) -> None:
        self._comm.send_obj(plan, 1)

    def recv_plan(self) -> tuple[Any, ...]:
        plan = self._comm.recv_obj(0)
        if not isinstance(plan, tuple):
            raise RuntimeError("rank 0 sent a malformed fast plan")
        return plan

    def ask_dealer(self, function: str, args: tuple[Any, ...]) -> None:
        message: dict[str, Any] = {"function": function, "device": None, "args": args, "kwargs": {}}
        self._comm.send_obj(message, self._dealer)

    def from_dealer(self) -> tuple[int, list[bytearray]]:
        header = self._comm.recv_obj(self._dealer)
        return fast_dealing.read_reply(header, lambda: self._comm.recv_frame(self._dealer))

    def break_session(self, reason: str) -> None:
        self._comm.break_session(reason)

    def exchange(self, mine: Ring) -> Ring:
        import torch

        both = self._comm.all_gather(torch.from_numpy(np.ascontiguousarray(mine)))
        peer: Ring = both[1 - self.rank].numpy()
        return peer


@dataclass(frozen=True)
class ModelState:
    handle: Any  # the stored model (LoadedModel) whose shares were opened
    setup_id: int
    model: fe.PartyModel
    max_rows: int  # rows of material one dealer reply may carry for this model


def _groups(bundles: list[Bundle], limit: int) -> list[list[Bundle]]:
    """``bundles`` in order, in runs of at most ``limit`` rows (one forward each)."""
    groups: list[list[Bundle]] = []
    for bundle in bundles:
        if groups and sum(b.batch for b in groups[-1]) + bundle.batch <= limit:
            groups[-1].append(bundle)
        else:
            groups.append([bundle])
    return groups


def max_rows(spec: fe.ModelSpec) -> int:
    """Rows of a model's bundles one dealer reply may carry (its per-reply element limit).

    At least one for a model up to :data:`~.dealing.MAX_SAMPLE_ELEMENTS` per sample; 0 (the
    model stays on the CrypTen path) beyond.
    """
    per_sample = plan_of(spec).elements_per_sample()
    return fast_dealing.reply_limit(per_sample) // per_sample


def large(spec: fe.ModelSpec) -> bool:
    """One sample's material needs more than a normal dealer reply (it travels alone)."""
    return plan_of(spec).elements_per_sample() > fast_dealing.MAX_ELEMENTS


class FastInference:
    """Per server: which models run fast, their setups and bundle pools (see module doc)."""

    def __init__(self, max_batch_rows: int, pool_depth: int, max_models: int = 8) -> None:
        self.pool = BundlePool(pool_depth)
        self._largest = largest_bucket(max_batch_rows)
        self._max_models = max_models
        self._models: OrderedDict[str, ModelState] = OrderedDict()
        # a refill riding on the last prediction, due in finish: (model, bucket, count) and the
        # dealer's setup id when it is still to be asked there (late), else None (asked already)
        self._riding: tuple[str, int, int, int | None] | None = None
        self._owed = 0  # dealer replies asked for and not yet read
        self._specs: dict[Architecture, fast_spec.FastModel | None] = {}
        self._lock = threading.Lock()

    def model_for(self, architecture: Architecture) -> fast_spec.FastModel | None:
        """The engine's view of an architecture, or None: it stays on the CrypTen path."""
        with self._lock:
            if architecture not in self._specs:
                if len(self._specs) >= 256:  # a cache of public facts: start it afresh
                    self._specs.clear()
                fm = fast_spec.fast_model(architecture)
                if fm is not None and max_rows(fm.spec) < 1:
                    fm = None  # one image's material is more than a dealer reply may carry
                self._specs[architecture] = fm
            return self._specs[architecture]

    def stats(self) -> FastPool:
        return self.pool.stats()

    def session_lost(self) -> None:
        self._models.clear()
        self._riding, self._owed = None, 0
        self.pool.clear()

    # ------------------------------------------------------------ jobs (worker thread)

    def predict(
        self, ch: Channel, model_id: str, handle: Any, fm: fast_spec.FastModel, x: Ring
    ) -> Ring:
        """This party's share of the outputs for input share ``x`` (rows, *input_shape)."""
        with self._dealer_in_step(ch):
            return self._predict(ch, model_id, handle, fm, x)

    def _predict(
        self, ch: Channel, model_id: str, handle: Any, fm: fast_spec.FastModel, x: Ring
    ) -> Ring:
        rows = int(x.shape[0])
        sizes = cover_rows(rows, min(self._largest, largest_bucket(max_rows(fm.spec))))
        if ch.rank == 0:
            state = self._models.get(model_id)
            setup = state is None or state.handle is not handle
            if setup:
                self.pool.drop_model(model_id)
            taken = None if setup else self.pool.take(model_id, sizes)
            riding = () if setup or large(fm.spec) else self._riding_refill(model_id, sizes)
            ch.send_plan((setup, tuple(p.serial for p in taken or ()), riding))
        else:
            setup, serials, riding = ch.recv_plan()
            if riding and not (len(riding) == 2 and all(type(v) is int for v in riding)):
                raise RuntimeError("rank 0 sent a malformed fast plan")
            if setup:
                self.pool.drop_model(model_id)
            taken = self.pool.take(model_id, sizes) if serials else None
            if serials and (taken is None or tuple(p.serial for p in taken) != serials):
                raise RuntimeError("fast bundle pools differ between the parties")
        for size in sizes:  # a pool holds at most one reply's material (max_rows) per bucket
            self.pool.want(model_id, size, max(1, max_rows(fm.spec) // size))
        state = self._setup(ch, model_id, handle, fm) if setup else self._models[model_id]
        self._models.move_to_end(model_id)
        self.pool.record(bool(taken))
        xs = np.asarray(x, dtype=np.int64)
        outs: list[Ring] = []
        if taken:
            if riding:
                self._ask_refill(ch, model_id, state, riding)
            start = 0
            prepared = {id(p.bundle): p.prepared for p in taken}
            for group in _groups([p.bundle for p in taken], state.max_rows):
                count = min(sum(b.batch for b in group), rows - start)
                whole = prepared.get(id(group[0])) if len(group) == 1 else None
                material = (
                    whole
                    if whole is not None and group[0].batch == count
                    else (group[0] if len(group) == 1 else Bundle.concat(group)).head(count)
                )
                outs.append(self._forward(ch, state, material, xs[start : start + count]))
                start += count
        else:  # one reply of material per forward, so a job never holds more than one
            for start in range(0, rows, state.max_rows):
                count = min(state.max_rows, rows - start)
                self._ask(ch, fast_dealing.BUNDLES, (state.setup_id, count, 1))
                bundle = Bundle.from_bytes(self._reply(ch)[1][0])
                if riding and start + count == rows:
                    self._ask_refill(ch, model_id, state, riding)
                outs.append(self._forward(ch, state, bundle, xs[start : start + count]))
        y = outs[0] if len(outs) == 1 else np.concatenate(outs)
        return y.reshape(rows, *fm.output_shape)

    def _ask_refill(
        self, ch: Channel, model_id: str, state: ModelState, riding: tuple[int, int]
    ) -> None:
        """Ask for a refill that rides on this prediction (now, or in :meth:`finish` for a
        model above :data:`EARLY_RIDE_ELEMENTS`); :meth:`finish` takes it."""
        if plan_of(state.model.spec).elements_per_sample() > EARLY_RIDE_ELEMENTS:
            self._riding = (model_id, *riding, state.setup_id)
            return
        self._ask(ch, fast_dealing.BUNDLES, (state.setup_id, *riding))
        self._riding = (model_id, *riding, None)

    @staticmethod
    def _forward(ch: Channel, state: ModelState, material: Bundle | fe.Prepared, x: Ring) -> Ring:
        y, _ = fe.forward(state.model, material, x, ch.exchange)
        return y

    def finish(self, ch: Channel) -> None:
        """Take the bundles of a refill that rode on the last prediction, if any."""
        riding, self._riding = self._riding, None
        if riding is not None:
            model_id, bucket, count, late = riding
            with self._dealer_in_step(ch):
                if late is not None:
                    self._ask(ch, fast_dealing.BUNDLES, (late, bucket, count))
                self._take_refill(ch, model_id, bucket, count)

    def _riding_refill(self, model_id: str, sizes: list[int]) -> tuple[int, int] | tuple[()]:
        """``(bucket, count)`` if this model's pool is the one to refill next (rank 0).

        At most as many bundles of the bucket as this job uses (at least one): the transfer,
        read after the answers but before the next job, stays the size of what was used.
        """
        want = self.next_refill()
        if want is None or want[0] != model_id:
            return ()
        _, bucket, count = want
        return bucket, min(count, max(1, sizes.count(bucket)))

    def _refill_count(self, model_id: str, bucket: int, count: int) -> int:
        """``count``, cut to what one dealer reply may carry of this model's bundles."""
        state = self._models.get(model_id)
        return count if state is None else max(1, min(count, state.max_rows // bucket))

    def refill(self, ch: Channel, model_id: str, bucket: int, count: int) -> None:
        """Add ``count`` bundles of ``bucket`` rows to ``model_id``'s pool (both parties)."""
        state = self._models.get(model_id)
        if ch.rank == 0:
            ok = state is not None
            ch.send_plan((ok,))
        else:
            (ok,) = ch.recv_plan()
        if not ok:  # the model's setup is gone: stop wanting its bundles
            self.pool.drop_model(model_id)
            return
        setup_id = state.setup_id if state is not None else -1  # rank 1 sends nothing
        with self._dealer_in_step(ch):
            self._ask(ch, fast_dealing.BUNDLES, (setup_id, bucket, count))
            self._take_refill(ch, model_id, bucket, count)

    def _ask(self, ch: Channel, function: str, args: tuple[Any, ...]) -> None:
        """Rank 0 asks the dealer; both parties now owe the link one reply read."""
        if ch.rank == 0:
            ch.ask_dealer(function, args)
        self._owed += 1

    def _reply(self, ch: Channel) -> tuple[int, list[bytes] | list[bytearray]]:
        reply = ch.from_dealer()
        self._owed -= 1
        return reply

    @contextmanager
    def _dealer_in_step(self, ch: Channel) -> Iterator[None]:
        """On an error with a dealer reply still unread, end the session: the next read of the
        dealer link would take that reply for its own (the other party's link is as unsure)."""
        try:
            yield
        except BaseException:
            if self._owed:
                self._owed, self._riding = 0, None
                ch.break_session("a fast job failed with a dealer reply unread")
            raise

    def _take_refill(self, ch: Channel, model_id: str, bucket: int, count: int) -> None:
        first, blobs = self._reply(ch)
        state = self._models.get(model_id)
        if state is not None:
            bundles = [Bundle.from_bytes(blob) for blob in blobs]
            if any(b.batch != bucket or b.party != ch.rank for b in bundles):
                raise RuntimeError("the dealer sent bundles of the wrong size or party")
            # folded with the model now, in idle time, not inside the request that takes it
            model = state.model
            items = [Pooled(first + i, b, fe.prepare(model, b)) for i, b in enumerate(bundles)]
            self.pool.put(model_id, bucket, items)

    def next_refill(self) -> tuple[str, int, int] | None:
        """``(model_id, bucket, count)`` for the next refill job, if a wanted pool is short."""
        short = self.pool.deficit()
        if short is None:
            return None
        model_id, bucket, missing = short
        count = max(1, min(missing, REFILL_ROWS // bucket))
        return model_id, bucket, self._refill_count(model_id, bucket, count)

    def _setup(
        self, ch: Channel, model_id: str, handle: Any, fm: fast_spec.FastModel
    ) -> ModelState:
        self._ask(ch, fast_dealing.SETUP, (fast_spec.to_wire(fm.spec),))
        setup_id, blobs = self._reply(ch)
        setup = ModelSetup.from_bytes(blobs[0])
        if setup.party != ch.rank:
            raise RuntimeError("the dealer sent the other party's setup")
        shares = handle.shares
        weights = [shares[f"{i}.weight"] for i in fm.layer_index]
        biases = [shares.get(f"{i}.bias") for i in fm.layer_index]
        params = [shares[f"{i}.{name}"] for i, name in fm.params]  # Bias, LayerNorm
        model = fe.PartyModel.open(fm.spec, setup, weights, biases, ch.exchange, params)
        state = ModelState(handle, setup_id, model, max_rows(fm.spec))
        self._models[model_id] = state
        while len(self._models) > self._max_models:
            evicted, _ = self._models.popitem(last=False)
            self.pool.drop_model(evicted)
        return state
