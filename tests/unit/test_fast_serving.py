"""Fast inference as the servers run it: spec mapping, dealer requests, pools, plans.

Two parties run in two threads of this process, each with a channel that
mimics the session's links (plan messages, the dealer's replies per party, the
party exchange); the dealer is :class:`FastDealing` answering rank 0's
requests synchronously, as the dealer process does between them.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from ppml.proto.domain import layers as dl
from ppml.proto.domain.architecture import Architecture
from ppml.proto.shares import FRACTIONAL_BITS, decode, encode, share
from ppml.servers.kinds.refill import RefillJob, RefillPlanner
from ppml.servers.mpc.fast import engine as engine_module
from ppml.servers.mpc.fast.bundle import Bundle
from ppml.servers.mpc.fast.engine import Prepared
from ppml.servers.mpc.fast.graph import plan_of
from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
from ppml.servers.mpc.fast.service import dealing as dealing_module
from ppml.servers.mpc.fast.service import party as party_module
from ppml.servers.mpc.fast.service import spec as fast_spec
from ppml.servers.mpc.fast.service.dealing import FastDealing
from ppml.servers.mpc.fast.service.party import FastInference, max_rows
from ppml.servers.mpc.fast.service.pool import BundlePool, Pooled, cover_rows, largest_bucket

ARCH = Architecture((dl.Linear(6, 5), dl.ReLU(), dl.Linear(5, 3, bias=False)), (6,), (3,))


class Links:
    """Both parties' queues: plans (0 -> 1), dealer replies per party, and exchanges."""

    def __init__(self) -> None:
        self.dealer = FastDealing()
        self.plans: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.replies: tuple[queue.Queue[Any], queue.Queue[Any]] = (queue.Queue(), queue.Queue())
        self.exchanges = queue_exchanges(timeout_s=10)
        self.requests: list[str] = []
        self.broken: list[tuple[int, str]] = []


@dataclass
class FakeChannel:
    links: Links
    rank: int

    def __post_init__(self) -> None:
        self.exchange = self.links.exchanges[self.rank]

    def send_plan(self, plan: tuple[Any, ...]) -> None:
        self.links.plans.put(plan)

    def recv_plan(self) -> tuple[Any, ...]:
        return self.links.plans.get(timeout=10)

    def ask_dealer(self, function: str, args: tuple[Any, ...]) -> None:
        assert self.rank == 0
        self.links.requests.append(function)
        for party, payload in enumerate(self.links.dealer.handle(function, args)):
            self.links.replies[party].put(payload)

    def from_dealer(self) -> tuple[int, list[bytes]]:
        reply: tuple[int, list[bytes]] = self.links.replies[self.rank].get(timeout=10)
        return reply

    def break_session(self, reason: str) -> None:
        self.links.broken.append((self.rank, reason))


@dataclass
class Handle:
    shares: dict[str, np.ndarray]


def _plain_model() -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3, bias=False)
    )
    params = {
        "0.weight": model[0].weight, "0.bias": model[0].bias, "2.weight": model[2].weight
    }  # fmt: skip
    return model, {k: encode(v.detach().numpy()) for k, v in params.items()}


def _split(values: dict[str, np.ndarray]) -> tuple[Handle, Handle]:
    parts = {k: share(v, 2) for k, v in values.items()}
    return Handle({k: p[0] for k, p in parts.items()}), Handle({k: p[1] for k, p in parts.items()})


def _predict(links: Links, parties: tuple[FastInference, FastInference],
             handles: tuple[Handle, Handle], x: np.ndarray) -> np.ndarray:  # fmt: skip
    fm = fast_spec.fast_model(ARCH)
    assert fm is not None
    xs = share(encode(x), 2)

    def party(rank: int) -> np.ndarray:
        ch = FakeChannel(links, rank)
        y = parties[rank].predict(ch, "m", handles[rank], fm, xs[rank])
        parties[rank].finish(ch)  # as the predict kind does once the callers are answered
        return y

    y0, y1 = run_pair(lambda: party(0), lambda: party(1))
    with np.errstate(over="ignore"):
        return decode(y0 + y1)


def _close(got: np.ndarray, expected: np.ndarray) -> bool:
    """Within fixed-point error: a few ulp, plus weights rounded to 2^-16 times large inputs."""
    return bool((np.abs(got - expected) <= 1e-3 + 1e-4 * np.abs(expected)).all())


def _refill(links: Links, parties: tuple[FastInference, FastInference]) -> None:
    want = parties[0].next_refill()
    assert want is not None

    def party(rank: int) -> None:
        ch = FakeChannel(links, rank)
        parties[rank].refill(ch, *want)

    run_pair(lambda: party(0), lambda: party(1))


def test_cover_rows_covers_every_batch_with_few_powers_of_two() -> None:
    for largest in (1, 8, 64):
        for rows in range(1, 200):
            sizes = cover_rows(rows, largest)
            assert all(s <= largest and s & (s - 1) == 0 for s in sizes)
            assert rows <= sum(sizes) < rows + sizes[-1] and sizes == sorted(sizes, reverse=True)
            rest = rows % largest
            assert len(sizes) - rows // largest <= 3 and 4 * (sum(sizes) - rows) < max(rest, 1)
    assert cover_rows(37, 64) == [32, 4, 1] and cover_rows(100, 64) == [64, 32, 4]
    assert cover_rows(3, 64) == [2, 1] and cover_rows(128, 64) == [64, 64]
    assert cover_rows(57, 64) == [32, 16, 16] and cover_rows(63, 64) == [32, 16, 16]
    assert largest_bucket(64) == 64 and largest_bucket(100) == 64 and largest_bucket(1) == 1


def test_spec_mapping_and_wire_round_trip() -> None:
    cnn = Architecture(
        (dl.Conv2d(1, 4, (3, 3), padding=(1, 1)), dl.ReLU(), dl.Flatten(), dl.Linear(256, 10)),
        (1, 8, 8),
        (10,),
    )
    pooled = Architecture(
        (dl.Conv2d(1, 4, (3, 3)), dl.MaxPool2d((2, 2), (2, 2))), (1, 8, 8), (4, 3, 3)
    )
    for architecture in (ARCH, cnn, pooled):
        fm = fast_spec.fast_model(architecture)
        assert fm is not None
        assert fast_spec.from_wire(fast_spec.to_wire(fm.spec)) == fm.spec
    padded = Architecture(
        (dl.Conv2d(1, 4, (3, 3)), dl.MaxPool2d((2, 2), (2, 2), (1, 1))), (1, 8, 8), (4, 4, 4)
    )
    odd = Architecture((dl.Conv2d(1, 4, (3, 1)),), (1, 8, 8), (4, 6, 8))
    assert fast_spec.fast_model(padded) is None and fast_spec.fast_model(odd) is None
    for bad in (
        (),
        ((6,), (("linear", 6, -1, True),)),
        ((6,), (("pickle",),)),
        ((6,), (("relu",),)),
    ):
        with pytest.raises(ValueError):
            fast_spec.from_wire(bad)


def test_fast_predictions_match_plaintext_with_setup_pool_and_fallback() -> None:
    links = Links()
    parties = (FastInference(64, 2), FastInference(64, 2))
    plain, values = _plain_model()
    handles = _split(values)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    x[0] = 0.0
    x[1, :3] = (2.0**-FRACTIONAL_BITS, -(2.0**-FRACTIONAL_BITS), 1000.0)
    expected = plain(torch.from_numpy(x)).detach().numpy()

    got = _predict(links, parties, handles, x)  # first use: setup, then on demand
    assert _close(got, expected)
    assert links.requests == ["fast_setup", "fast_bundles"]
    assert parties[0].stats().misses == 1

    while parties[0].next_refill() is not None:  # 3 rows: buckets 2 and 1 were wanted
        _refill(links, parties)
    assert parties[0].stats().bundles == parties[1].stats().bundles == 4
    assert parties[0].stats().images == 6
    links.requests.clear()
    got = _predict(links, parties, handles, x)  # 3 rows on pooled bundles of 2 and 1...
    assert _close(got, expected)
    assert parties[0].stats().hits == parties[1].stats().hits == 1
    # ...and no on-demand request, but the pools fell to half their depth: a refill rode along
    assert links.requests == ["fast_bundles"]
    assert parties[0].stats().bundles == parties[1].stats().bundles == 3
    links.requests.clear()
    got = _predict(links, parties, handles, x)
    assert _close(got, expected) and links.requests == ["fast_bundles"]
    assert parties[0].stats().hits == 2 and parties[0].stats().misses == 1

    new_handles = _split(values)  # a re-upload under the same id: set up afresh
    links.requests.clear()
    got = _predict(links, parties, new_handles, x)
    assert links.requests == ["fast_setup", "fast_bundles"]
    assert _close(got, expected)


def test_a_residual_model_is_served_through_dealer_setup_and_bundles() -> None:
    """A DAG travels to the dealer as a wire spec (with its inputs) and serves like a chain."""
    residual = Architecture(
        (dl.Linear(6, 6), dl.ReLU(), dl.Linear(6, 6), dl.Add(), dl.ReLU(), dl.Linear(6, 3)),
        (6,),
        (3,),
        inputs=((-1,), (0,), (1,), (2, -1), (3,), (4,)),
    )
    fm = fast_spec.fast_model(residual)
    assert fm is not None and fm.layer_index == (0, 2, 5) and len(fast_spec.to_wire(fm.spec)) == 3
    torch.manual_seed(2)
    lins = [torch.nn.Linear(6, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 3)]
    values = {
        f"{i}.{name}": encode(getattr(lin, name).detach().numpy())
        for i, lin in zip(fm.layer_index, lins, strict=True)
        for name in ("weight", "bias")
    }
    handles = _split(values)
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    xt = torch.from_numpy(x)
    expected = lins[2](torch.relu(lins[1](torch.relu(lins[0](xt))) + xt)).detach().numpy()
    links, xs = Links(), share(encode(x), 2)
    parties = (FastInference(64, 2), FastInference(64, 2))

    def party(rank: int) -> np.ndarray:
        return parties[rank].predict(FakeChannel(links, rank), "r", handles[rank], fm, xs[rank])

    y0, y1 = run_pair(lambda: party(0), lambda: party(1))
    with np.errstate(over="ignore"):
        assert _close(decode(y0 + y1), expected)
    assert links.requests == ["fast_setup", "fast_bundles"]


def _serve_plain(
    rows: int, depth: int
) -> tuple[Links, tuple[FastInference, FastInference], Callable[[int], Any], np.ndarray]:
    """Both parties over one queue pair, the plain model's shares and ``rows`` shared rows:
    ``forward(k)`` serves the first ``k`` rows on both parties and returns the decoded
    outputs; ``expected`` is the plaintext model's."""
    model, values = _plain_model()
    fm = fast_spec.fast_model(ARCH)
    assert fm is not None
    handles = _split(values)
    x = np.random.default_rng(rows).normal(size=(rows, 6)).astype(np.float32)
    expected = model(torch.from_numpy(x)).detach().numpy()
    links, xs = Links(), share(encode(x), 2)
    parties = (FastInference(64, depth), FastInference(64, depth))

    def forward(k: int) -> np.ndarray:
        def party(rank: int) -> np.ndarray:
            channel = FakeChannel(links, rank)
            return parties[rank].predict(channel, "m", handles[rank], fm, xs[rank][:k])

        y0, y1 = run_pair(lambda: party(0), lambda: party(1))
        with np.errstate(over="ignore"):
            return decode(y0 + y1)

    return links, parties, forward, expected


def _per_image() -> int:
    fm = fast_spec.fast_model(ARCH)
    assert fm is not None
    return plan_of(fm.spec).elements_per_sample()


def test_a_job_larger_than_one_dealer_reply_runs_as_several_forwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room for 2 rows of material per reply, 5 rows take 3 replies and 3 forwards."""
    monkeypatch.setattr(dealing_module, "MAX_ELEMENTS", 2 * _per_image())
    links, _, forward, expected = _serve_plain(5, 0)
    assert _close(forward(5), expected)
    assert links.requests == ["fast_setup"] + ["fast_bundles"] * 3


def test_a_model_whose_one_sample_fills_a_reply_gets_one_sample_per_reply_and_a_pool_of_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sample over the per-reply limit (BERT-tiny's case) travels alone in a reply; its pool
    holds one bundle; a sample over ``MAX_SAMPLE_ELEMENTS`` keeps the model off the engine."""
    per_image = _per_image()
    monkeypatch.setattr(dealing_module, "MAX_ELEMENTS", per_image - 1)
    monkeypatch.setattr(dealing_module, "MAX_SAMPLE_ELEMENTS", per_image)
    fm = fast_spec.fast_model(ARCH)
    assert fm is not None and max_rows(fm.spec) == 1
    links, parties, forward, expected = _serve_plain(3, 4)
    assert _close(forward(3), expected)
    assert links.requests == ["fast_setup"] + ["fast_bundles"] * 3
    assert parties[0].next_refill() == ("m", 1, 1)  # a pool of one bundle, not of 4
    links.requests.clear()
    run_pair(*(lambda rank=rank: parties[rank].refill(FakeChannel(links, rank), "m", 1, 1)
               for rank in (0, 1)))  # fmt: skip
    assert _close(forward(1), expected[:1])  # pooled, and no refill rides on it
    assert links.requests == ["fast_bundles"] and parties[0].stats().hits == 1
    dealer = FastDealing(stock=4)
    setup_id = dealer.setup(fast_spec.to_wire(fm.spec))[0][0]
    assert len(dealer.bundles(setup_id, 1, 1)[0][1]) == 1
    time.sleep(0.2)
    assert dealer.stocked(setup_id, 1) == 0  # made on demand only: never stocked ahead
    with pytest.raises(ValueError, match="out of range"):
        dealer.bundles(setup_id, 2, 1)  # two such samples never share a reply
    dealer.close()
    monkeypatch.setattr(dealing_module, "MAX_SAMPLE_ELEMENTS", per_image - 1)
    assert max_rows(fm.spec) == 0


@pytest.mark.parametrize("late", [False, True])
def test_a_riding_refill_is_asked_before_the_forward_or_after_the_answers(
    monkeypatch: pytest.MonkeyPatch, late: bool
) -> None:
    """A small model asks the dealer for its riding refill before the forward (overlapping
    it); one above EARLY_RIDE_ELEMENTS per sample only in finish, once the callers have
    their answers. Either way both pools are refilled alike and predictions stay right."""
    if late:
        monkeypatch.setattr(party_module, "EARLY_RIDE_ELEMENTS", _per_image() - 1)
    links = Links()
    parties = (FastInference(64, 2), FastInference(64, 2))
    plain, values = _plain_model()
    handles = _split(values)
    x = np.random.default_rng(3).normal(size=(1, 6)).astype(np.float32)
    expected = plain(torch.from_numpy(x)).detach().numpy()
    _predict(links, parties, handles, x)  # setup and on demand
    while parties[0].next_refill() is not None:
        _refill(links, parties)
    fm = fast_spec.fast_model(ARCH)
    assert fm is not None
    xs = share(encode(x), 2)
    links.requests.clear()
    channels = (FakeChannel(links, 0), FakeChannel(links, 1))
    y0, y1 = run_pair(
        *(lambda r=r: parties[r].predict(channels[r], "m", handles[r], fm, xs[r]) for r in (0, 1))
    )
    with np.errstate(over="ignore"):
        assert _close(decode(y0 + y1), expected)
    assert links.requests == ([] if late else ["fast_bundles"])  # pooled; the refill is due
    run_pair(*(lambda r=r: parties[r].finish(channels[r]) for r in (0, 1)))
    assert links.requests == ["fast_bundles"]
    assert parties[0].stats().bundles == parties[1].stats().bundles == 2  # full again
    assert _close(_predict(links, parties, handles, x), expected)


def test_pooled_bundles_are_prepared_when_they_land_and_forwards_start_from_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refill folds each bundle with the model as it lands (idle time); a pool-warm
    prediction whose forward takes one pooled bundle gets that prepared material, an
    on-demand one a plain bundle (as does a forward over several pooled bundles joined)."""
    links, parties, forward_rows, expected = _serve_plain(1, 2)
    seen: list[type] = []
    forward = engine_module.forward

    def spy(model: Any, material: Any, *args: Any) -> Any:
        seen.append(type(material))
        return forward(model, material, *args)

    monkeypatch.setattr(engine_module, "forward", spy)
    assert _close(forward_rows(1), expected)  # setup, then on demand
    assert seen == [Bundle, Bundle]
    while parties[0].next_refill() is not None:
        _refill(links, parties)
    seen.clear()
    assert _close(forward_rows(1), expected)  # one pooled bundle
    assert parties[0].stats().hits == 1
    assert seen == [Prepared, Prepared]  # one forward per party, no preparing in the request


def test_pools_pop_all_or_nothing_and_drop_unwanted_puts() -> None:
    pool = BundlePool(depth=2)
    assert pool.take("m", [1]) is None
    pool.put("m", 1, [Pooled(1, object())])  # type: ignore[arg-type]
    assert pool.stats().bundles == 0  # not wanted: discarded
    pool.want("m", 1)
    assert pool.deficit() == ("m", 1, 2)
    pool.put("m", 1, [Pooled(1, object())])  # type: ignore[arg-type]
    assert pool.take("m", [1, 1]) is None
    taken = pool.take("m", [1])
    assert taken is not None and taken[0].serial == 1
    pool.clear()
    assert pool.deficit() is None


def test_depth_zero_keeps_no_pool() -> None:
    pool = BundlePool(depth=0)
    pool.want("m", 1)
    pool.put("m", 1, [Pooled(1, object())])  # type: ignore[arg-type]
    assert pool.deficit() is None and pool.take("m", [1]) is None and pool.stats().bundles == 0


def test_a_short_pool_is_refilled_until_full() -> None:
    pool = BundlePool(depth=6)
    pool.want("m", 8)
    assert pool.deficit() == ("m", 8, 6)
    pool.put("m", 8, [Pooled(i, object()) for i in range(4)])  # type: ignore[arg-type]
    assert pool.deficit() == ("m", 8, 2)  # above half, but the run goes on until full
    pool.put("m", 8, [Pooled(i, object()) for i in range(2)])  # type: ignore[arg-type]
    assert pool.deficit() is None
    assert pool.take("m", [8]) is not None
    assert pool.deficit() is None  # 5 of 6: not short yet
    assert pool.take("m", [8, 8]) is not None
    assert pool.deficit() == ("m", 8, 3)


def test_the_dealer_makes_bundles_ahead_once_asked_and_stops_when_closed() -> None:
    dealing = FastDealing(stock=2)
    fm = fast_spec.fast_model(ARCH)
    assert fm is not None
    (setup_id, _), _ = dealing.setup(fast_spec.to_wire(fm.spec))
    assert dealing.stocked(setup_id, 1) == 0
    (first, mine), (first_1, theirs) = dealing.bundles(setup_id, 1, 1)
    assert first == first_1 == 1 and len(mine) == len(theirs) == 1
    deadline = time.monotonic() + 30
    while dealing.stocked(setup_id, 1) < 2:
        assert time.monotonic() < deadline, "no bundles made ahead"
        time.sleep(0.01)
    (second, made), _ = dealing.bundles(setup_id, 1, 3)  # from stock, the rest made now
    assert second == 2 and len(made) == 3 and len(set(made)) == 3
    dealing.close()
    assert dealing.stocked(setup_id, 1) == 0
    with pytest.raises(ValueError):
        dealing.bundles(setup_id + 1, 1, 1)


def test_the_dealer_restocks_small_bundles_many_to_a_pass_once_down_to_half() -> None:
    dealing = FastDealing(stock=2)
    fm = fast_spec.fast_model(ARCH)
    assert fm is not None
    (setup_id, _), _ = dealing.setup(fast_spec.to_wire(fm.spec))
    target = dealing_module.STOCK_ROWS  # batch 1: STOCK_ROWS bundles, more than stock=2
    dealing.bundles(setup_id, 1, 1)
    deadline = time.monotonic() + 60
    while dealing.stocked(setup_id, 1) < target:
        assert time.monotonic() < deadline, "the stock did not fill"
        time.sleep(0.01)
    dealing.bundles(setup_id, 1, 2)
    time.sleep(0.3)  # no restock above half: the maker waits
    assert dealing.stocked(setup_id, 1) == target - 2
    dealing.bundles(setup_id, 1, target // 2 - 2)  # down to half: restocked to full
    while dealing.stocked(setup_id, 1) < target:
        assert time.monotonic() < deadline, "the stock was not made again"
        time.sleep(0.01)
    dealing.close()


def test_the_refill_planner_waits_for_idle_time_and_a_short_pool() -> None:
    fast = FastInference(64, 4)
    planner = RefillPlanner(fast, idle_s=0.005)
    assert planner.next_job(10.0, 0.0) is None and planner.next_wakeup(0.0) is None
    fast.pool.want("m", 1)  # a bucket in use, empty
    assert planner.next_job(10.002, 10.0) is None  # the worker was busy a moment ago
    assert planner.next_wakeup(10.0) == pytest.approx(10.005)
    assert planner.next_job(10.01, 10.0) == ("refill", RefillJob("m", 1, 4))
    fast.pool.want("m", 64)
    assert planner.next_job(10.01, 10.0) == ("refill", RefillJob("m", 1, 4))  # emptiest, oldest


def test_a_dealer_reply_travels_as_a_header_and_raw_frames() -> None:
    import pickle

    from ppml.servers.mpc.fast.service.dealing import frames, read_reply

    wire = frames((7, [b"abc", b"", b"defg"]))
    assert pickle.loads(wire[0]) == (7, [3, 0, 4]) and wire[1:] == [b"abc", b"", b"defg"]
    rest = iter(bytearray(f) for f in wire[1:])
    assert read_reply(pickle.loads(wire[0]), lambda: next(rest)) == (7, [b"abc", b"", b"defg"])
    for header in ((7,), (7, "3"), ("7", [3]), (7, [-1]), (7, [True]), None):
        with pytest.raises(RuntimeError, match="malformed"):
            read_reply(header, lambda: bytearray())
    with pytest.raises(RuntimeError, match="does not match"):
        read_reply((7, [5]), lambda: bytearray(b"abc"))


def test_a_failure_with_a_dealer_reply_unread_ends_the_session() -> None:
    links = Links()
    parties = (FastInference(64, 2), FastInference(64, 2))
    _, values = _plain_model()
    handles = _split(values)
    x = np.random.default_rng(1).normal(size=(1, 6)).astype(np.float32)
    _predict(links, parties, handles, x)  # setup, on demand: every reply read
    while parties[0].next_refill() is not None:
        _refill(links, parties)
    assert links.broken == []
    fm = fast_spec.fast_model(ARCH)
    assert fm is not None
    bad = share(encode(np.zeros((1, 5))), 2)  # wrong width: the forward refuses it

    def party(rank: int) -> None:
        ch = FakeChannel(links, rank)
        with pytest.raises(ValueError):  # after a refill rode along: its reply is unread
            parties[rank].predict(ch, "m", handles[rank], fm, bad[rank])

    run_pair(lambda: party(0), lambda: party(1))
    assert sorted(r for r, _ in links.broken) == [0, 1]
    assert "dealer reply unread" in links.broken[0][1]
