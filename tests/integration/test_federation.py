"""Federations on a real cluster: four offices, drop-outs, CKKS vs MPC, DP, bad input.

A two-server cluster (TLS, dealer) with four office identities besides the
owner (``local-user``) and ``analyst`` (not invited). Each office joins from
its own SDK connection in its own thread, as it would from its own machine.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Callable
from typing import Any

import dp_accounting
import grpc
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from garbage_updates import submit_garbage_weight

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.client.errors import (
    AlreadySubmitted,
    BudgetExhausted,
    ContextMismatch,
    InputShapeMismatch,
    InvalidFederation,
    InvalidModel,
    InvalidRequest,
    PermissionDenied,
    PpmlClientError,
    RoundClosed,
    UpdateShapeMismatch,
)
from ppml.client.federation import Federation, Participant, mpc_global_model
from ppml.proto import shares
from ppml.proto.domain import federations as fed
from ppml.proto.errors import ERROR_CODE_KEY, ErrorCode
from ppml.proto.wire import serde
from ppml.training import ckks
from ppml.training.har import split_by_subject, synthetic_har
from ppml.training.privacy import RDP_ORDERS
from ppml.v1 import federation_pb2

OFFICES = ("office-1", "office-2", "office-3", "office-4")


def _small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # public: initial weights of a test model
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


SAMPLE = torch.zeros(1, 5)


def _fixed(delta_seed: int, rows: int, scale: float = 0.1) -> Callable[..., Any]:
    """A train function that returns the global model plus a fixed delta (and its rows)."""
    rng = np.random.default_rng(delta_seed)  # public: a test's fixed updates

    def train(model: torch.nn.Module, round_no: int) -> tuple[torch.nn.Module, int, float]:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.from_numpy(rng.normal(0, scale, tuple(p.shape))).float())
        return model, rows, 0.5 + delta_seed

    return train


def _join_all(
    offices: dict[str, Cluster], fid: str, trains: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    reports: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            reports[name] = offices[name].join_federation(fid, trains[name], timeout=240, **kwargs)
        except Exception as exc:  # reported to the test
            reports[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in trains]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return reports


# ---------------------------------------------------------------- four offices, one drops out


def test_four_offices_by_subject_one_drops_out(owner: Cluster, offices: dict[str, Cluster]) -> None:
    data, subjects = synthetic_har(1600, seed=1)
    test, _ = synthetic_har(600, seed=2)
    parts = split_by_subject(data, subjects, 4, seed=0)
    torch.manual_seed(0)  # public: initial weights
    model = torch.nn.Sequential(torch.nn.Linear(561, 32), torch.nn.ReLU(), torch.nn.Linear(32, 6))
    handle = owner.create_federation(
        model,
        OFFICES,
        rounds=3,
        local_epochs=1,
        batch_size=32,
        lr=0.1,
        min_participants=3,
        round_deadline_s=8,
        sample_input=torch.zeros(1, 561),
    )
    leaving = OFFICES[3]
    reports: dict[str, Any] = {}

    def run(index: int, name: str) -> None:
        part, _ = parts[index]
        try:
            reports[name] = offices[name].join_federation(
                handle.federation_id,
                (part.features, part.labels),
                max_rounds=1 if name == leaving else None,
                timeout=240,
            )
        except Exception as exc:  # reported below
            reports[name] = exc

    threads = [threading.Thread(target=run, args=item) for item in enumerate(OFFICES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    info = handle.wait(timeout=60)
    assert info.state is fed.FederationState.SUCCEEDED, info.reason
    rounds = handle.rounds()
    assert [r.round for r in rounds] == [1, 2, 3]
    assert set(rounds[0].participants) == set(OFFICES)
    for later in rounds[1:]:
        assert later.applied
        assert set(later.participants) == set(OFFICES[:3])
        assert later.dropped == (leaving,)
    assert all(r.mean_loss is not None and 0 < r.mean_loss < 5 for r in rounds)  # owner sees it
    assert list(handle.progress()) == rounds  # the event streams of both servers, merged
    assert reports[leaving].submitted == (1,)
    for name in OFFICES[:3]:
        assert reports[name].submitted == (1, 2, 3), reports[name]
        assert reports[name].state == "succeeded"
    # the federated model is registered and servable at once through predict
    x = test.features[:64].astype(np.float32)
    predictions = owner.predict(info.model_id, x)
    accuracy = float((np.asarray(predictions).argmax(1) == test.labels[:64]).mean())
    assert accuracy > 0.5  # six classes: chance is about 1/6
    # a participant's non-owner view holds no loss shares
    office_view = offices[OFFICES[0]].federation(handle.federation_id).info()
    assert all(r.loss_sum is None for r in office_view.results)


def test_mpc_average_is_the_sample_weighted_average(
    owner: Cluster, offices: dict[str, Cluster]
) -> None:
    handle = owner.create_federation(
        _small_model(), OFFICES[:3], rounds=1, round_deadline_s=30, sample_input=SAMPLE
    )
    before = mpc_global_model(owner, handle.federation_id)[1]
    rows = {OFFICES[0]: 10, OFFICES[1]: 30, OFFICES[2]: 60}
    trains = {name: _fixed(i, rows[name]) for i, name in enumerate(OFFICES[:3])}
    reports = _join_all(offices, handle.federation_id, trains)
    assert all(not isinstance(r, Exception) for r in reports.values()), reports
    model_id = handle.result(timeout=60)
    after = owner.export_model(model_id).weights
    deltas = {}
    for i, office in enumerate(OFFICES[:3]):
        rng = np.random.default_rng(i)  # as _fixed draws them, in parameters() order
        deltas[office] = {n: rng.normal(0, 0.1, v.shape) for n, v in sorted_params(before)}
    for name, start in before.items():
        weighted = sum(rows[o] * deltas[o][name] for o in deltas)
        expected = start + weighted / sum(rows.values())
        assert np.max(np.abs(after[name].numpy() - expected)) < 1e-3
    merged = handle.rounds()[0]
    expected_loss = sum(rows[o] * (0.5 + i) for i, o in enumerate(OFFICES[:3])) / 100
    assert merged.mean_loss == pytest.approx(expected_loss, abs=1e-3)


def sorted_params(weights: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """In the order torch's ``parameters()`` yields them for the test model."""
    order = ["0.weight", "0.bias", "2.weight", "2.bias"]
    return [(name, weights[name]) for name in order]


# ---------------------------------------------------------------- CKKS vs MPC


def test_ckks_back_end_matches_the_mpc_average(owner: Cluster, offices: dict[str, Cluster]) -> None:
    rows = {OFFICES[0]: 7, OFFICES[1]: 21}
    results = {}
    for backend in ("mpc", "ckks"):
        handle = owner.create_federation(
            _small_model(1), list(rows), rounds=2, backend=backend, sample_input=SAMPLE
        )
        context = handle.keys.participant_context if handle.keys else None
        trains = {name: _fixed(10 + i, rows[name]) for i, name in enumerate(rows)}
        reports = _join_all(offices, handle.federation_id, trains, ckks_context=context)
        assert all(not isinstance(r, Exception) for r in reports.values()), reports
        model_id = handle.result(timeout=60)
        results[backend] = owner.export_model(model_id).weights
    for name, value in results["mpc"].items():
        assert np.max(np.abs(value.numpy() - results["ckks"][name].numpy())) < 1e-3, name


def test_ckks_aggregator_refuses_another_context_and_the_secret_key(
    owner: Cluster, offices: dict[str, Cluster]
) -> None:
    keys = ckks.key_ceremony()
    with pytest.raises(InvalidFederation, match="secret key"):
        owner.create_federation(
            _small_model(),
            OFFICES[:2],
            rounds=1,
            backend="ckks",
            sample_input=SAMPLE,
            ckks_keys=ckks.FederationKeys(
                keys.participant_context,
                keys.participant_context,
                ckks.context_fingerprint(keys.participant_context),
            ),
        )
    handle = owner.create_federation(
        _small_model(), OFFICES[:2], rounds=1, backend="ckks", sample_input=SAMPLE, ckks_keys=keys
    )
    other = ckks.key_ceremony().participant_context
    office = offices[OFFICES[0]]
    info = handle.info()
    participant = Participant(office, handle.federation_id, _fixed(0, 5), ckks_context=other)
    weights = fed.unflatten(info.architecture, np.zeros(fed.parameter_count(info.architecture)))
    with pytest.raises(ContextMismatch, match="context"):
        participant.submit_round(info, weights)
    # the federation goes on: the right context is accepted
    good = Participant(office, handle.federation_id, _fixed(0, 5), keys.participant_context)
    good.submit_round(info, weights)
    assert handle.info().submitted == (OFFICES[0],)
    assert handle.cancel().state.value == "cancelled"
    # cancelling again (as when the leader's cancel reached a server first) is no error
    again = handle.cancel()
    assert again.state.value == "cancelled" and "cancelled by" in again.reason


# ---------------------------------------------------------------- DP


def _direct_epsilon(z: float, rounds: int, delta: float) -> float:
    """Replace-one: one office's clipped update swapped moves the sum by 2C, so z / 2."""
    replace_one = dp_accounting.NeighboringRelation.REPLACE_ONE
    accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS), neighboring_relation=replace_one)
    accountant.compose(dp_accounting.GaussianDpEvent(z / 2), rounds)
    return float(accountant.get_epsilon(delta))


def test_dp_epsilon_matches_dp_accounting_and_the_budget_stops_it(
    owner: Cluster, offices: dict[str, Cluster]
) -> None:
    z, delta = 2.4, 1e-5
    two_rounds = _direct_epsilon(z, 2, delta)
    budget = (two_rounds + _direct_epsilon(z, 3, delta)) / 2  # room for 2 rounds, not 3
    dp = fed.DpSettings(clip_norm=1.0, noise_multiplier=z, delta=delta, epsilon_budget=budget)
    handle = owner.create_federation(
        _small_model(), OFFICES[:2], rounds=5, dp=dp, sample_input=SAMPLE
    )
    trains = {name: _fixed(20 + i, 50) for i, name in enumerate(OFFICES[:2])}
    reports = _join_all(offices, handle.federation_id, trains)
    info = handle.wait(timeout=60)
    assert info.state is fed.FederationState.BUDGET_EXHAUSTED, info.reason
    assert [r.round for r in info.results] == [1, 2]
    assert info.results[0].epsilon == pytest.approx(_direct_epsilon(z, 1, delta), rel=1e-9)
    assert info.epsilon_spent == pytest.approx(two_rounds, rel=1e-9)
    assert "budget" in info.reason
    assert all(r.state == "budget_exhausted" for r in reports.values()), reports
    # the offices' train functions return a loss; with DP nobody gets it back
    assert [r.mean_loss for r in handle.rounds()] == [None, None]
    # the model after round 2 is registered; any further update is refused clearly
    assert owner.predict(info.model_id, np.zeros((1, 5), dtype=np.float32)).shape == (1, 3)
    office = offices[OFFICES[0]]
    zeros = {n: np.zeros(s) for n, s in info.architecture.parameter_shapes().items()}
    for rank in (0, 1):
        with pytest.raises(BudgetExhausted, match="budget"):
            _raw_submit(office, handle.federation_id, 3, zeros, rank)


def test_dp_noise_in_released_averages_has_the_calibrated_sigma(
    owner: Cluster, offices: dict[str, Cluster]
) -> None:
    """Zero updates, many rounds: each released average is pure noise, and it scatters
    with the calibrated sigma (both servers' draws together: n/(n-1) * sigma^2, n = 2)."""
    z, clip, rounds, members = 0.5, 0.2, 12, OFFICES[:2]
    dp = fed.DpSettings(clip_norm=clip, noise_multiplier=z)
    handle = owner.create_federation(
        _small_model(), list(members), rounds=rounds, dp=dp, sample_input=SAMPLE
    )
    seen: list[np.ndarray] = []  # the global model each round, as the first office sees it

    def watching(model: torch.nn.Module, round_no: int) -> tuple[torch.nn.Module, int, None]:
        seen.append(np.concatenate([p.detach().double().reshape(-1) for p in model.parameters()]))
        return model, 10, None

    trains = {members[0]: watching, members[1]: lambda m, r: (m, 10, None)}
    reports = _join_all(offices, handle.federation_id, trains)
    assert all(not isinstance(r, Exception) for r in reports.values()), reports
    info = handle.wait(timeout=60)
    assert info.state is fed.FederationState.SUCCEEDED
    assert all(r.applied for r in info.results)
    final = owner.export_model(info.model_id).to_torch()
    seen.append(np.concatenate([p.detach().double().reshape(-1) for p in final.parameters()]))
    releases = np.diff(np.stack(seen), axis=0)  # (rounds, 39): each round's released average
    assert releases.shape[0] == rounds
    expected = 2 * (z * clip) ** 2 / len(members) ** 2
    tolerance = 4 * np.sqrt(2 / releases.size)  # 4 standard errors of a sample variance
    assert abs(releases.var() / expected - 1) < tolerance
    assert abs(releases.mean()) < 4 * np.sqrt(expected / releases.size)


def _submit_with_loss(
    cluster: Cluster, fid: str, update: dict[str, np.ndarray], loss: float
) -> None:
    """Round 1's update with a loss share, as a client that ignores DP might send it."""
    per_server = shares.share_named(update, cluster.parties)
    weight = shares.share(shares.encode([1.0]), cluster.parties)
    losses = shares.share(shares.encode([loss]), cluster.parties)
    for rank, server in enumerate(cluster._servers):
        request = federation_pb2.SubmitUpdateRequest(
            federation_id=fid,
            round=1,
            update=serde.named_shares_to_proto(per_server[rank]),
            weight=serde.share_to_proto(weight[rank]),
            loss=serde.share_to_proto(losses[rank]),
        )
        server.federation.SubmitUpdate(request, timeout=30, metadata=cluster._metadata)


def test_dp_rounds_withhold_the_losses_even_when_a_client_sends_one(
    owner: Cluster, offices: dict[str, Cluster]
) -> None:
    """A loss sum has no noise and no accounting: with DP no server adds losses up or returns
    them (the owner chose the initial model; one participant's loss is a membership query)."""
    members = OFFICES[:2]
    dp = fed.DpSettings(clip_norm=1.0, noise_multiplier=3.0)
    handle = owner.create_federation(
        _small_model(), list(members), rounds=1, dp=dp, sample_input=SAMPLE
    )
    shapes = handle.info().architecture.parameter_shapes()
    zeros = {n: np.zeros(s) for n, s in shapes.items()}
    for name in members:
        _submit_with_loss(offices[name], handle.federation_id, zeros, 0.25)
    assert handle.wait(timeout=60).state is fed.FederationState.SUCCEEDED
    for info in handle.infos():  # every server's record, as its owner sees it
        (result,) = info.results
        assert result.applied and result.participants == members
        assert result.loss_sum is None and result.weight_sum is None
        assert "losses withheld" in result.reason
    (merged,) = handle.rounds()
    assert merged.mean_loss is None and merged.applied


# ---------------------------------------------------------------- bad input


def _raw_submit(
    cluster: Cluster, fid: str, round_no: int, update: dict[str, np.ndarray], rank: int = 0
) -> None:
    per_server = shares.share_named(update, cluster.parties)
    weight = shares.share(shares.encode([1.0]), cluster.parties)
    request = federation_pb2.SubmitUpdateRequest(
        federation_id=fid,
        round=round_no,
        update=serde.named_shares_to_proto(per_server[rank]),
        weight=serde.share_to_proto(weight[rank]),
    )
    server = cluster._servers[rank]
    try:
        server.federation.SubmitUpdate(request, timeout=30, metadata=cluster._metadata)
    except grpc.RpcError as err:
        from ppml.client.errors import from_rpc_error

        raise from_rpc_error(err, server.name) from None


def test_bad_input_gets_clear_errors_and_the_federation_goes_on(
    owner: Cluster, offices: dict[str, Cluster], local: LocalCluster
) -> None:
    handle: Federation = owner.create_federation(
        _small_model(), OFFICES[:2], rounds=2, round_deadline_s=6, sample_input=SAMPLE
    )
    fid = handle.federation_id
    info = handle.info()
    a, b = offices[OFFICES[0]], offices[OFFICES[1]]
    weights = mpc_global_model(a, fid)[1]
    # wrong shape
    bad = {**weights, "0.weight": np.zeros((3, 3))}
    with pytest.raises((InvalidModel, InvalidRequest), match=r"0\.weight"):
        _raw_submit(a, fid, 1, bad)
    # a non-finite value never leaves the participant's machine
    nan = Participant(a, fid, lambda m, r: (_nan(m), 10, None))
    with pytest.raises(InvalidFederation, match="NaN"):
        nan.submit_round(info, weights)
    # not invited
    with Cluster.from_config(local.config_path, token=local.token("analyst")) as analyst:
        with pytest.raises(PermissionDenied, match="not invited"):
            _raw_submit(analyst, fid, 1, weights)
        with pytest.raises(PermissionDenied, match="not a participant"):
            mpc_global_model(analyst, fid)
    # a second submission in one round
    first = Participant(a, fid, _fixed(1, 10))
    first.submit_round(info, weights)
    with pytest.raises(AlreadySubmitted, match="already submitted"):
        first.submit_round(info, weights)
    # b misses the deadline: round 1 closes with a alone (min 2: not applied)
    closed = handle.wait_round(1, timeout=30)
    assert not closed.applied and "needs 2" in closed.reason
    with pytest.raises(RoundClosed, match="round 2 is open"):
        Participant(b, fid, _fixed(2, 10)).submit_round(info, weights)
    # the federation goes on: round 2 with both
    reports = _join_all(offices, fid, {OFFICES[0]: _fixed(3, 10), OFFICES[1]: _fixed(4, 10)})
    assert all(not isinstance(r, Exception) for r in reports.values()), reports
    final = handle.wait(timeout=60)
    assert final.state is fed.FederationState.SUCCEEDED
    assert [r.applied for r in final.results] == [False, True]
    # settings are checked before anything is created
    for kwargs, match in [
        ({"rounds": 0}, "rounds"),
        ({"min_participants": 3}, "min_participants"),
        ({"strategy": "fedprox"}, "mu"),
        ({"dp": fed.DpSettings(clip_norm=1.0)}, "noise_multiplier or target_epsilon"),
        (
            {"dp": fed.DpSettings(clip_norm=1.0, noise_multiplier=0.3, epsilon_budget=0.5)},
            "over the budget",
        ),
        ({"backend": "paillier"}, "backend"),
    ]:
        with pytest.raises(InvalidFederation, match=match):
            owner.create_federation(
                _small_model(), OFFICES[:2], **{"rounds": 2, **kwargs}, sample_input=SAMPLE
            )
    with pytest.raises(PpmlClientError):
        b.federation("no-such-federation").info()


def _nan(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        next(iter(model.parameters()))[0, 0] = float("nan")
    return model


# ---------------------------------------------------------------- garbage updates (issues 24, 18)


class _Predicting:
    """A client predicting in a loop on a shared model: every outcome, until stopped."""

    def __init__(self, cluster: Cluster) -> None:
        model = _small_model(7)
        self._cluster = cluster
        self._model_id = cluster.share_model(model, SAMPLE)
        self._x = torch.linspace(-1, 1, 10).reshape(2, 5)
        with torch.no_grad():
            self._expected = model(self._x).numpy()
        self.outcomes: list[float | Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)

    def __enter__(self) -> _Predicting:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                y = self._cluster.predict(self._model_id, self._x, timeout=60)
                self.outcomes.append(float(np.max(np.abs(np.asarray(y) - self._expected))))
            except Exception as exc:  # counted by the test
                self.outcomes.append(exc)


def _expected_average(
    before: dict[str, np.ndarray], seeds: dict[str, int], rows: dict[str, int]
) -> dict[str, np.ndarray]:
    """The global model after one round of ``_fixed(seeds[o], rows[o])`` updates."""
    deltas = {}
    for office, seed in seeds.items():
        rng = np.random.default_rng(seed)  # as _fixed draws them, in parameters() order
        deltas[office] = {n: rng.normal(0, 0.1, v.shape) for n, v in sorted_params(before)}
    total = sum(rows.values())
    return {
        name: start + sum(rows[o] * deltas[o][name] for o in seeds) / total
        for name, start in before.items()
    }


def test_garbage_updates_are_refused_or_dropped_while_predictions_go_on(
    owner: Cluster, offices: dict[str, Cluster]
) -> None:
    with _Predicting(owner) as predicting:
        # CKKS: a real update whose chunks are random bytes of the same lengths
        rows = {OFFICES[0]: 7, OFFICES[1]: 21}
        model = _small_model(3)
        before = {n: p.detach().numpy().astype(np.float64) for n, p in model.state_dict().items()}
        handle = owner.create_federation(
            model, list(rows), rounds=1, backend="ckks", sample_input=SAMPLE
        )
        assert handle.keys is not None
        context = handle.keys.participant_context
        count = fed.parameter_count(handle.info().architecture)
        real = ckks.encrypt_update(ckks.load_context(context), np.full(count, 0.1), 10)
        garbage = dataclasses.replace(
            real, chunks=tuple(secrets.token_bytes(len(c)) for c in real.chunks)
        )
        office = offices[OFFICES[0]]
        leader = office._servers[0]
        request = federation_pb2.SubmitEncryptedUpdateRequest(
            federation_id=handle.federation_id, round=1, update=ckks.serialize(garbage)
        )
        with pytest.raises(grpc.RpcError) as caught:
            leader.federation.SubmitEncryptedUpdate(request, timeout=30, metadata=office._metadata)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        trailers = dict(caught.value.trailing_metadata() or ())
        assert trailers[ERROR_CODE_KEY] == ErrorCode.INVALID_UPDATE
        assert "chunk 0 is not a ciphertext" in (caught.value.details() or "")
        assert handle.info().submitted == ()  # nothing was kept
        # the federation goes on: the same participant's real update is accepted
        seeds = {name: 10 + i for i, name in enumerate(rows)}
        trains = {name: _fixed(seeds[name], rows[name]) for name in rows}
        reports = _join_all(offices, handle.federation_id, trains, ckks_context=context)
        assert all(not isinstance(r, Exception) for r in reports.values()), reports
        after = owner.export_model(handle.result(timeout=60)).weights
        for name, value in _expected_average(before, seeds, rows).items():
            assert np.max(np.abs(after[name].numpy() - value)) < 1e-3, name

        # MPC: a weight share of random bytes is dropped in MPC; the others' average applies
        rows = {OFFICES[0]: 10, OFFICES[1]: 30}
        handle = owner.create_federation(
            _small_model(4), OFFICES[:3], rounds=1, min_participants=2, sample_input=SAMPLE
        )
        fid = handle.federation_id
        before = mpc_global_model(owner, fid)[1]
        submit_garbage_weight(offices[OFFICES[2]], fid, 1, {k: v * 50 for k, v in before.items()})
        seeds = {name: 20 + i for i, name in enumerate(rows)}
        trains = {name: _fixed(seeds[name], rows[name]) for name in rows}
        reports = _join_all(offices, fid, trains)
        assert all(not isinstance(r, Exception) for r in reports.values()), reports
        after = owner.export_model(handle.result(timeout=60)).weights
        (closed,) = handle.rounds()
        assert closed.applied and set(closed.participants) == set(rows), closed
        assert closed.dropped == (OFFICES[2],)
        for name, value in _expected_average(before, seeds, rows).items():
            assert np.max(np.abs(after[name].numpy() - value)) < 1e-3, name
        assert handle.info().state is fed.FederationState.SUCCEEDED
    failures = [o for o in predicting.outcomes if isinstance(o, Exception)]
    assert failures == [], failures[:3]  # 0 aborted throughout both federations
    assert len(predicting.outcomes) >= 3 and max(predicting.outcomes) < 1e-2  # type: ignore[type-var]


def test_a_newcomers_mistakes_are_refused_on_the_offices_machine(
    owner: Cluster, offices: dict[str, Cluster]
) -> None:
    """A model with an extra layer, rows of the wrong width: typed errors, nothing sent."""
    handle = owner.create_federation(  # no sample_input: the first layer is a Linear
        _small_model(), OFFICES[:2], rounds=1, round_deadline_s=120
    )
    office = offices[OFFICES[0]]

    def deeper(model: torch.nn.Module, round_no: int) -> tuple[torch.nn.Module, int, None]:
        extra = torch.nn.Sequential(*model.children(), torch.nn.ReLU(), torch.nn.Linear(3, 3))
        return extra, 10, None

    with pytest.raises(UpdateShapeMismatch, match=r"extra 4\.weight \(3, 3\), 4\.bias \(3,\)"):
        office.join_federation(handle.federation_id, deeper, max_rounds=1, timeout=60)
    rows, labels = np.zeros((10, 4)), np.zeros(10, dtype=np.int64)
    with pytest.raises(InputShapeMismatch, match=r"rows of shape \(4,\).*rows of shape \(5,\)"):
        office.join_federation(handle.federation_id, (rows, labels))
    assert handle.info().submitted == ()  # nothing reached the servers
    assert handle.cancel().state.value == "cancelled"
