"""Bounded pools of single-use fast-engine bundles, per (model, bucket).

A *bucket* is a batch size that is a power of two, at most the leader's
``max_batch_rows``; a job of ``rows`` rows uses the buckets of
:func:`cover_rows`: as many full largest buckets as fit, and for the rest at
most :data:`REST_PIECES` more, the largest powers of two that fit and, last,
the next power of two above what is left, of which only the first rows are
used (:meth:`~ppml.servers.mpc.fast.bundle.Bundle.head`; the unused rows'
masks are never opened and are dropped with the bundle). The dealer's
material for unused rows is wasted work, so the rest is covered closely
(49 rows: 32 + 16 + 1, nothing unused; one bundle of 64 would waste 15 rows'
keys), in few pieces (each one more bundle to join). Both parties fill and pop
their pools in the same order (refill and predict jobs run in the leader's
sequence), so the pools hold the same bundles (checked by serial number) on
both. A bundle is popped once and never put back: reusing one would reveal
the difference of two inputs.

Thread safety: the MPC worker fills and pops; the leader's planner and the
status report read. One lock guards everything.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from ppml.proto.domain.status import FastPool
from ppml.servers.mpc.fast.bundle import Bundle
from ppml.servers.mpc.fast.engine import Prepared

RATE_WINDOW_S = 60.0


REST_PIECES = 3  # buckets at most, after the full largest ones, for the rest of a batch


def cover_rows(rows: int, largest: int) -> list[int]:
    """Powers of two, largest first, each at most ``largest`` (a power of two), covering rows.

    Full ``largest`` buckets, then the largest powers of two that fit in the
    rest, and last (the :data:`REST_PIECES`-th) the smallest power of two that
    holds what is left: the sum exceeds ``rows`` by less than the last bucket,
    and by less than a quarter of the rest.
    """
    if rows < 1 or largest < 1 or largest & (largest - 1):
        raise ValueError("rows must be positive and largest a power of two")
    out = [largest] * (rows // largest)
    rest = rows % largest
    for _ in range(REST_PIECES - 1):
        if rest:
            out.append(1 << (rest.bit_length() - 1))
            rest -= out[-1]
    if rest:
        out.append(1 << (rest - 1).bit_length())
    return out


def largest_bucket(max_batch_rows: int) -> int:
    """The largest power of two not above ``max_batch_rows``."""
    return 1 << (max(1, max_batch_rows).bit_length() - 1)


@dataclass(frozen=True)
class Pooled:
    serial: int  # the dealer's number for this bundle in the session (same on both parties)
    bundle: Bundle
    prepared: Prepared | None = None  # the bundle folded with the model in idle time


class BundlePool:
    """Per model, per bucket: a FIFO of at most ``depth`` bundles, refilled for wanted buckets."""

    def __init__(self, depth: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._depth = depth
        self._clock = clock
        self._lock = threading.Lock()
        self._pools: OrderedDict[str, dict[int, deque[Pooled]]] = OrderedDict()
        self._filled: deque[tuple[float, int]] = deque()  # (when, images) of recent refills
        self._filling: set[tuple[str, int]] = set()  # pools that went short, until full again
        self._depths: dict[tuple[str, int], int] = {}  # per pool, at most self._depth
        self._refilled = self._hits = self._misses = 0

    def want(self, model_id: str, bucket: int, most: int | None = None) -> None:
        """Demand seen for ``bucket``: keep it filled from now on (never with depth 0), with at
        most ``most`` bundles if that is below the pool's depth (a large model's bundles)."""
        if self._depth < 1:
            return
        with self._lock:
            self._pools.setdefault(model_id, {}).setdefault(bucket, deque())
            self._pools.move_to_end(model_id)
            self._depths[(model_id, bucket)] = min(self._depth, most or self._depth)

    def take(self, model_id: str, sizes: list[int]) -> list[Pooled] | None:
        """Pop one bundle per entry of ``sizes``, or nothing (a miss) if any is missing."""
        with self._lock:
            pools = self._pools.get(model_id, {})
            need: dict[int, int] = {}
            for size in sizes:
                need[size] = need.get(size, 0) + 1
            if any(len(pools.get(size, ())) < n for size, n in need.items()):
                return None
            return [pools[size].popleft() for size in sizes]

    def record(self, hit: bool) -> None:
        """A fast forward used pooled bundles (``hit``) or asked the dealer."""
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def put(self, model_id: str, bucket: int, items: list[Pooled]) -> None:
        with self._lock:
            pools = self._pools.get(model_id)
            if pools is None or bucket not in pools:
                return  # dropped meanwhile: the bundles are discarded
            pools[bucket].extend(items)
            self._refilled += len(items)
            now = self._clock()
            self._filled.append((now, bucket * len(items)))

    def deficit(self) -> tuple[str, int, int] | None:
        """``(model_id, bucket, missing)`` of the most recently used model's emptiest pool.

        A pool is short once it is down to half its depth, and stays short
        until it is full again, so refills come in runs rather than after
        every request.
        """
        with self._lock:
            for model_id in reversed(self._pools):
                pools = self._pools[model_id]
                for bucket, queue in pools.items():
                    depth = self._depths.get((model_id, bucket), self._depth)
                    if len(queue) <= depth // 2:
                        self._filling.add((model_id, bucket))
                    elif len(queue) >= depth:
                        self._filling.discard((model_id, bucket))
                short = [(len(q), b) for b, q in pools.items() if (model_id, b) in self._filling]
                if short:
                    have, bucket = min(short)
                    depth = self._depths.get((model_id, bucket), self._depth)
                    return model_id, bucket, depth - have
            return None

    def drop_model(self, model_id: str) -> None:
        with self._lock:
            self._pools.pop(model_id, None)
            self._filling = {f for f in self._filling if f[0] != model_id}
            self._depths = {k: v for k, v in self._depths.items() if k[0] != model_id}

    def clear(self) -> None:
        """The session ended: every bundle is gone (the dealer's keys are too)."""
        with self._lock:
            self._pools.clear()
            self._filling.clear()
            self._depths.clear()

    def stats(self) -> FastPool:
        with self._lock:
            now = self._clock()
            while self._filled and self._filled[0][0] < now - RATE_WINDOW_S:
                self._filled.popleft()
            queues = [q for pools in self._pools.values() for q in pools.values()]
            return FastPool(
                bundles=sum(len(q) for q in queues),
                images=sum(p.bundle.batch for q in queues for p in q),
                bytes=sum(p.bundle.nbytes for q in queues for p in q),
                refilled=self._refilled,
                fill_rate=sum(images for _, images in self._filled) / RATE_WINDOW_S,
                hits=self._hits,
                misses=self._misses,
            )
