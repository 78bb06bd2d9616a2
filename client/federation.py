"""A federation from the SDK's side: its handle (owner) and a participant's loop.

:class:`Federation` is what :meth:`Cluster.create_federation` and
:meth:`Cluster.federation` return: progress per round (participants,
drop-outs, epsilon, and the mean local loss reconstructed from every
server's share, for the owner), the result, cancel.

:class:`Participant` is what :meth:`Cluster.join_federation` runs on a data
owner's machine. Each round it fetches the global model (every server's
share, added up here; with CKKS, the encrypted sums, decrypted here), trains
it locally on rows that never leave this machine, and submits the update:
secret-shared to every server (MPC back end) or encrypted under the
federation's CKKS context for the leader (CKKS back end). Values are checked
here (finite, encodable) before anything is sent: servers only ever see
shares or ciphertexts and cannot check them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from ppml.client.errors import (
    AlreadySubmitted,
    BudgetExhausted,
    ContextMismatch,
    FederationFailed,
    FederationFinished,
    InvalidFederation,
    RoundClosed,
    UpdateShapeMismatch,
    from_rpc_error,
)
from ppml.client.exported import to_torch
from ppml.client.transport import ClusterBase, ServerStubs
from ppml.proto import shares
from ppml.proto.domain import federations as fed
from ppml.proto.wire import federations as fed_wire
from ppml.proto.wire import serde
from ppml.training import ckks
from ppml.v1 import federation_pb2

log = logging.getLogger(__name__)
Floats = npt.NDArray[np.float64]

# train_fn(global_model, round) -> (locally trained model, rows, mean loss or None)
TrainFn = Callable[[nn.Module, int], tuple[nn.Module, int, float | None]]


@dataclass(frozen=True)
class RoundProgress:
    round: int
    participants: tuple[str, ...]
    dropped: tuple[str, ...]
    applied: bool
    epsilon: float
    mean_loss: float | None  # owner only, when participants reported one; None with DP
    reason: str = ""


def _value(parts: list[shares.Ring | None]) -> float | None:
    if any(p is None for p in parts):
        return None
    return float(shares.decode(shares.reconstruct([p for p in parts if p is not None]))[0])


def merge_round(results: list[fed.RoundResult]) -> RoundProgress:
    """One round as every server recorded it; loss figures added up from their shares."""
    first = results[0]
    loss_sum = _value([r.loss_sum for r in results])
    weight_sum = _value([r.weight_sum for r in results])
    mean = loss_sum / weight_sum if loss_sum is not None and weight_sum else None
    return RoundProgress(
        first.round,
        first.participants,
        first.dropped,
        first.applied,
        first.epsilon,
        mean,
        first.reason,
    )


class Federation:
    """Handle of one federation on a cluster."""

    def __init__(
        self, cluster: ClusterBase, federation_id: str, keys: ckks.FederationKeys | None = None
    ) -> None:
        self._cluster = cluster
        self.federation_id = federation_id
        self.keys = keys  # CKKS: the key holder's (the creator's) keys

    def __repr__(self) -> str:
        return f"Federation({self.federation_id!r})"

    def infos(self) -> list[fed.FederationInfo]:
        """Every server's view, in rank order."""
        c = self._cluster
        request = federation_pb2.GetFederationRequest(federation_id=self.federation_id)
        replies = c._call_all(
            lambda s, _: s.federation.GetFederation.future(
                request, timeout=c.timeout, metadata=c._metadata
            )
        )
        return [fed_wire.info_from_proto(r) for r in replies]

    def info(self) -> fed.FederationInfo:
        """The leader's view (rank 0)."""
        return self.infos()[0]

    def rounds(self) -> list[RoundProgress]:
        """Every closed round so far."""
        per_server = [info.results for info in self.infos()]
        return [merge_round(list(rs)) for rs in zip(*per_server, strict=False)]

    def progress(self) -> Iterator[RoundProgress]:
        """Each round as it closes (streamed from every server, merged), until the end.

        Every server emits the same events in the same order (creation, each
        round's close, the end), so the streams are read in lockstep.
        """
        c = self._cluster
        request = federation_pb2.WatchFederationRequest(federation_id=self.federation_id)
        streams = [s.federation.WatchFederation(request, metadata=c._metadata) for s in c._servers]
        try:
            while True:
                events = []
                for rank, stream in enumerate(streams):
                    try:
                        events.append(fed_wire.event_from_proto(next(stream)))
                    except StopIteration:
                        return
                    except grpc.RpcError as err:
                        raise from_rpc_error(err, c._servers[rank].name) from None
                results = [e.result for e in events if e.result is not None]
                if len(results) == len(events):
                    yield merge_round(results)
                if any(e.state.terminal for e in events):
                    return
        finally:
            for stream in streams:
                stream.cancel()

    def wait(self, timeout: float | None = None, poll_s: float = 0.5) -> fed.FederationInfo:
        """Block until every server has ended the federation; returns the leader's view."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            infos = self.infos()
            if all(i.state.terminal for i in infos):
                return infos[0]
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"federation {self.federation_id} still running")
            time.sleep(poll_s)

    def wait_round(
        self, round_no: int, timeout: float = 600.0, poll_s: float = 0.2
    ) -> RoundProgress:
        """Block until round ``round_no`` has closed on every server; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = self.infos()
            if all(len(i.results) >= round_no for i in infos):
                return merge_round([i.results[round_no - 1] for i in infos])
            if all(i.state.terminal for i in infos):
                raise FederationFailed(
                    f"federation {self.federation_id} ended before round {round_no}"
                )
            time.sleep(poll_s)
        raise TimeoutError(f"round {round_no} of {self.federation_id} did not close in time")

    def result(self, timeout: float | None = None) -> str:
        """Wait for the end; returns the id of the registered model.

        With CKKS the servers never hold the model: the key holder (this
        handle, if it created the federation) decrypts the final model here
        and registers it, secret-shared, under the federation's model id.
        """
        info = self.wait(timeout)
        ok = (fed.FederationState.SUCCEEDED, fed.FederationState.BUDGET_EXHAUSTED)
        if info.state not in ok:
            raise FederationFailed(
                f"federation {self.federation_id} {info.state.value}: {info.reason}"
            )
        if info.spec.backend == "ckks":
            if self.keys is None:
                raise InvalidFederation(
                    "only the CKKS key holder can decrypt and register the model"
                )
            weights = ckks_global_model(self._cluster, info, self.keys.participant_context, 0)[1]
            model = to_torch(
                info.architecture, {k: torch.from_numpy(v) for k, v in weights.items()}
            )
            register: Callable[..., str] = self._cluster.share_model  # type: ignore[attr-defined]
            register(
                model, torch.zeros(1, *info.architecture.input_shape), info.name, info.model_id
            )
        return info.model_id

    def cancel(self) -> fed.FederationInfo:
        """Stop the federation on every server; returns the leader's view once it has ended.

        The leader passes the cancel on to every server, so a server often has it
        before this client's own request arrives and answers that the federation
        already ended; that is no error here (nor is a federation that had ended
        on its own: the returned state says which).
        """
        c = self._cluster
        request = federation_pb2.CancelFederationRequest(federation_id=self.federation_id)
        with contextlib.suppress(FederationFinished):
            c._call_all(
                lambda s, _: s.federation.CancelFederation.future(
                    request, timeout=c.timeout + 30, metadata=c._metadata
                ),
                False,
            )
        return self.info()


# ---------------------------------------------------------------- participants


def _round_views(c: ClusterBase, federation_id: str) -> list[federation_pb2.RoundInfo]:
    request = federation_pb2.GetRoundRequest(federation_id=federation_id)
    return c._call_all(
        lambda s, _: s.federation.GetRound.future(request, timeout=c.timeout, metadata=c._metadata)
    )


def mpc_global_model(
    c: ClusterBase, federation_id: str
) -> tuple[list[fed.FederationInfo], dict[str, Floats]]:
    """Every server's view and the global model, reconstructed from their shares."""
    views = _round_views(c, federation_id)
    infos = [fed_wire.info_from_proto(v.info) for v in views]
    if any(i.state.terminal for i in infos) or any(not v.global_parameters for v in views):
        return infos, {}  # a server has ended it: the model was registered (or is being)
    shapes = infos[0].architecture.parameter_shapes()
    per_server = [serde.named_shares_from_proto(list(v.global_parameters), shapes) for v in views]
    weights = {
        name: shares.decode(shares.reconstruct([p[name] for p in per_server])) for name in shapes
    }
    return infos, weights


def ckks_global_model(
    c: ClusterBase,
    info: fed.FederationInfo,
    context: bytes,
    from_round: int,
    base: Floats | None = None,
) -> tuple[int, dict[str, Floats]]:
    """The global model from the leader's encrypted sums (decrypted here): ``base`` is
    the model before round ``from_round`` (None: from the start). Returns (the next
    round to ask from, weights)."""
    leader: ServerStubs = c._servers[0]
    request = federation_pb2.GetRoundRequest(
        federation_id=info.federation_id, from_round=from_round
    )
    try:
        view = leader.federation.GetRound(request, timeout=c.timeout, metadata=c._metadata)
    except grpc.RpcError as err:
        raise from_rpc_error(err, leader.name) from None
    ctx = check_context(info, context)
    flat = np.zeros(fed.parameter_count(info.architecture)) if base is None else base.copy()
    following = from_round
    for round_no, data in zip(view.ckks_rounds, view.ckks_aggregates, strict=True):
        try:
            flat = flat + ckks.decrypt_average(ctx, ckks.deserialize(data))
        except ckks.ContextMismatch as exc:
            raise ContextMismatch(str(exc)) from None
        following = round_no + 1
    return following, fed.unflatten(info.architecture, flat)


@dataclass(frozen=True)
class JoinReport:
    """What one participant did: the rounds it submitted to, and how it ended."""

    submitted: tuple[int, ...]
    state: str
    reason: str


class Participant:
    """One data owner's side of a federation (runs on its own machine)."""

    def __init__(
        self,
        cluster: ClusterBase,
        federation_id: str,
        train: TrainFn,
        ckks_context: bytes | None = None,
        report_loss: bool = True,
        poll_s: float = 0.2,
    ) -> None:
        self._c = cluster
        self.federation_id = federation_id
        self._train = train
        self._context = ckks_context
        self._report_loss = report_loss
        self._poll_s = poll_s
        self._ckks_round = 0  # the next encrypted sum to fetch (0: the initial model)
        self._ckks_flat: Floats | None = None

    def run(self, max_rounds: int | None = None, timeout: float | None = None) -> JoinReport:
        """Take part until the federation ends (or after ``max_rounds`` submissions)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        submitted: list[int] = []
        handle = Federation(self._c, self.federation_id)
        while deadline is None or time.monotonic() < deadline:
            info = handle.info()  # metadata only: the model is fetched once per round
            if info.state.terminal:
                return JoinReport(tuple(submitted), info.state.value, info.reason)
            if max_rounds is not None and len(submitted) >= max_rounds:
                return JoinReport(tuple(submitted), "left", f"left after {max_rounds} rounds")
            if info.round in submitted:
                time.sleep(self._poll_s)
                continue
            info, weights = self._global()
            if info.state.terminal or info.round in submitted:
                continue  # it moved on while the model was fetched: look again
            try:
                self.submit_round(info, weights)
            except (RoundClosed, AlreadySubmitted) as err:
                log.info("round %d: %s", info.round, err)
            except (BudgetExhausted, FederationFinished):
                continue  # the next fetch reports the final state
            submitted.append(info.round)
        raise TimeoutError(f"federation {self.federation_id} did not end in time")

    def _global(self) -> tuple[fed.FederationInfo, dict[str, Floats]]:
        if self._context is None:
            while True:
                infos, weights = mpc_global_model(self._c, self.federation_id)
                if any(i.state.terminal for i in infos):
                    return next(i for i in infos if i.state.terminal), weights
                if weights and len({(i.round, i.state) for i in infos}) == 1:
                    return infos[0], weights
                time.sleep(self._poll_s)  # a server is still closing the round: ask again
        info = Federation(self._c, self.federation_id).info()
        last, weights = ckks_global_model(
            self._c, info, self._context, self._ckks_round, self._ckks_flat
        )
        self._ckks_round, self._ckks_flat = last, fed.flatten(info.architecture, weights)
        return info, weights

    def submit_round(self, info: fed.FederationInfo, weights: dict[str, Floats]) -> None:
        if self._context is not None:
            check_context(info, self._context)  # before the local training, not after
        model = to_torch(info.architecture, {k: torch.from_numpy(v) for k, v in weights.items()})
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        trained, rows, loss = self._train(model, info.round)
        state = trained.state_dict()
        check_update_shapes(expected, {k: tuple(v.shape) for k, v in state.items()})
        delta = {name: state[name].detach().double().numpy() - weights[name] for name in weights}
        check_update(delta, rows, loss)
        if self._context is not None:
            self._submit_ckks(info, delta, rows)
        else:
            self._submit_mpc(info, delta, rows, loss if self._report_loss else None)

    def _submit_mpc(
        self, info: fed.FederationInfo, delta: dict[str, Floats], rows: int, loss: float | None
    ) -> None:
        dp = info.spec.dp.enabled
        scale = 1.0 if dp else float(rows)
        try:
            per_server = shares.share_named(
                {k: v * scale for k, v in delta.items()}, self._c.parties
            )
            weight = shares.share(shares.encode([1.0 if dp else float(rows)]), self._c.parties)
            # weighted like the update, so that loss_sum / weight_sum is a mean; never with DP:
            # the noise covers the update only, and the servers would not add the losses up
            losses = (
                shares.share(shares.encode([scale * loss]), self._c.parties)
                if loss is not None and not dp
                else None
            )
        except ValueError as exc:
            raise InvalidFederation(f"the update cannot be encoded: {exc}") from None
        c = self._c

        def send(server: ServerStubs, rank: int) -> grpc.Future:
            request = federation_pb2.SubmitUpdateRequest(
                federation_id=info.federation_id,
                round=info.round,
                update=serde.named_shares_to_proto(per_server[rank]),
                weight=serde.share_to_proto(weight[rank]),
            )
            if losses is not None:
                request.loss.CopyFrom(serde.share_to_proto(losses[rank]))
            return server.federation.SubmitUpdate.future(
                request, timeout=c.timeout, metadata=c._metadata
            )

        c._call_all(send, fail_fast=False)

    def _submit_ckks(self, info: fed.FederationInfo, delta: dict[str, Floats], rows: int) -> None:
        assert self._context is not None
        ctx = ckks.load_context(self._context)
        try:
            update = ckks.encrypt_update(ctx, fed.flatten(info.architecture, delta), rows)
        except ckks.CkksError as exc:
            raise InvalidFederation(f"the update cannot be encrypted: {exc}") from None
        leader: ServerStubs = self._c._servers[0]
        request = federation_pb2.SubmitEncryptedUpdateRequest(
            federation_id=info.federation_id, round=info.round, update=ckks.serialize(update)
        )
        try:
            leader.federation.SubmitEncryptedUpdate(
                request, timeout=self._c.timeout, metadata=self._c._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err, leader.name) from None


def _listing(shapes: dict[str, tuple[int, ...]], names: list[str]) -> str:
    return ", ".join(f"{name} {shapes[name]}" for name in names)


def check_update_shapes(
    expected: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]]
) -> None:
    """The trained model must have the federation model's parameters, no more, no fewer."""
    problems = [
        f"{name} has shape {given[name]}, expected {shape}"
        for name, shape in expected.items()
        if name in given and given[name] != shape
    ]
    missing = [name for name in expected if name not in given]
    extra = [name for name in given if name not in expected]
    if missing:
        problems.append(f"missing {_listing(expected, missing)}")
    if extra:
        problems.append(f"extra {_listing(given, extra)} (a layer the federation's model lacks)")
    if problems:
        raise UpdateShapeMismatch(
            "the local training returned a model of another shape than the federation's "
            f"({_listing(expected, list(expected))}): {'; '.join(problems)}; nothing was sent"
        )


def check_context(info: fed.FederationInfo, context: bytes) -> Any:
    """The participant's CKKS context, if it is the federation's; refused before any use."""
    try:
        ctx = ckks.load_context(context)
    except ckks.CkksError as exc:
        raise InvalidFederation(f"the CKKS context cannot be read: {exc}") from None
    given = ckks.fingerprint_of(ctx)
    expected = info.spec.ckks_fingerprint
    if expected and given != expected:
        raise ContextMismatch(
            f"federation {info.federation_id} uses CKKS context {expected[:16]}..., this "
            f"participant holds context {given[:16]}... (another federation's key file?); "
            "nothing was sent"
        )
    return ctx


def check_update(delta: dict[str, Floats], rows: int, loss: float | None) -> None:
    """Refuse, before sending, what the servers could not detect in shares."""
    for name, value in delta.items():
        if not np.all(np.isfinite(value)):
            raise InvalidFederation(
                f"the update of {name!r} holds NaN or infinite values: check the local training "
                "(learning rate, data scaling); nothing was sent"
            )
    if not 1 <= rows <= fed.MAX_UPDATE_WEIGHT:
        raise InvalidFederation(
            f"the local training must use 1 to {fed.MAX_UPDATE_WEIGHT} rows, got {rows}"
        )
    if loss is not None and not np.isfinite(loss):
        raise InvalidFederation("the reported local loss is not finite; nothing was sent")


def data_trainer(
    features: Any, labels: Any, spec: fed.FederationSpec, num_classes: int, seed: int = 0
) -> TrainFn:
    """A :data:`TrainFn` running the federation's local SGD (FedAvg/FedProx) on ``(X, y)``."""
    from ppml.training.federated import flatten_params, local_update, unflatten_params

    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)

    def train(model: nn.Module, round_no: int) -> tuple[nn.Module, int, float | None]:
        start = flatten_params(model)
        result = local_update(
            model,
            x,
            y,
            spec.local_epochs,
            spec.batch_size,
            spec.lr,
            spec.loss,
            spec.mu,
            start,
            seed=seed * 100_003 + round_no,
            num_classes=num_classes,
        )
        trained = copy.deepcopy(model)
        unflatten_params(trained, start + result.delta)
        return trained, result.num_samples, result.mean_loss

    return train
