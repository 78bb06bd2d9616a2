"""Federations on one server: validation, submissions of the open round, events.

The gRPC side calls :meth:`FederationManager.create`, ``get``, ``list``,
``watch``, ``cancel``, ``round_view`` and ``submit``/``submit_encrypted``;
the ``federate`` job kind (``servers/kinds/federate.py``) reads a closing
round with :meth:`round_inputs` and records it with :meth:`close_round`.

What a server holds: the federation's public settings (persisted), this
server's shares of the current global model and of the open round's
updates (MPC back end), or, on the leader, the public CKKS context and the
encrypted sums (CKKS back end). Shares and ciphertexts are kept in memory:
a federation still running when its server stops is marked failed at
start-up, like a training job. Participants' submissions are announced to
the leader (counts only), which closes a round once every participant
submitted or at its deadline.

Privacy accounting (``ppml.training.privacy``, i.e. ``dp_accounting``) runs
on every server over public figures only: the noise multiplier and the
number of rounds released.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ppml.proto.deploy.topology import LimitsConfig
from ppml.proto.domain import commands as cmd
from ppml.proto.domain import federations as fed
from ppml.proto.domain.architecture import Architecture, infer_output_shape
from ppml.proto.domain.datasets import DataSource
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.ids import check_id, fingerprint
from ppml.proto.names import check_name, quote
from ppml.proto.shares import Ring
from ppml.proto.wire import federations as wire
from ppml.servers.store.events import EventLog
from ppml.servers.store.jobs import graph_refusal
from ppml.servers.store.limits import check_identities
from ppml.servers.store.model_ids import Claim
from ppml.servers.store.models import ModelRegistry
from ppml.servers.store.storage import RecordCodec, ShareStore
from ppml.training import ckks, losses
from ppml.training.privacy import PrivacyBudget, calibrate_noise_multiplier, gaussian_round_event

FEDERATION_CODEC = RecordCodec[fed.FederationInfo](
    kind="federations",
    key=lambda info: info.federation_id,
    created=lambda info: info.created_unix_ms,
    to_bytes=wire.info_to_bytes,
    from_bytes=wire.info_from_bytes,
    not_found=ErrorCode.FEDERATION_NOT_FOUND,
    exists=ErrorCode.FEDERATION_EXISTS,
    noun="federation",
)

MAX_ROUNDS = 10_000
MAX_DEADLINE_S = 7 * 24 * 3600.0
ANNOUNCE_TIMEOUT_S = 60.0
CREATED = "created:"  # announcement groups: "created:<fingerprint>" and "round:<n>"
ROUND = "round:"
Announcer = Callable[[cmd.PartyMessage], bool]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _invalid(detail: str) -> PpmlError:
    return PpmlError(ErrorCode.INVALID_FEDERATION, detail)


def _bad_update(detail: str) -> PpmlError:
    """A participant's update that cannot be kept (refused before anything is stored)."""
    return PpmlError(ErrorCode.INVALID_UPDATE, f"update: {detail}")


@dataclass(frozen=True)
class Submission:
    """One participant's update as this server holds it."""

    update: dict[str, Ring] | None  # MPC: shares of n * delta (DP: of delta)
    weight: Ring | None  # MPC: share of n, shape (1,)
    loss: Ring | None  # share of n * mean loss, shape (1,), if reported
    encrypted: ckks.EncryptedUpdate | None = None  # CKKS (leader only)


@dataclass(frozen=True)
class OpenRound:
    """What the leader needs to decide when a round closes."""

    federation_id: str
    round: int
    deadline_unix_s: float
    participants: int
    backend: str


@dataclass(frozen=True)
class RoundInputs:
    """One closing round, as the ``federate`` kind needs it on this party."""

    info: fed.FederationInfo
    global_shares: dict[str, Ring]
    submissions: dict[str, Submission]  # by participant
    public_context: bytes  # CKKS, leader only


def check_dp(dp: fed.DpSettings, rounds: int) -> float:
    """Validate DP settings; returns the noise multiplier in use (0 without DP)."""
    values = (dp.clip_norm, dp.noise_multiplier, dp.target_epsilon, dp.delta, dp.epsilon_budget)
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise _invalid("DP settings must be finite and >= 0")
    if not dp.enabled:
        if dp.noise_multiplier or dp.target_epsilon or dp.epsilon_budget:
            raise _invalid("DP settings need clip_norm > 0 (the L2 bound of each update)")
        return 0.0
    if not 0 < dp.delta < 1:
        raise _invalid(f"DP delta must lie in (0, 1), got {dp.delta}")
    if dp.noise_multiplier == 0 and dp.target_epsilon == 0:
        raise _invalid("with DP on, give noise_multiplier or target_epsilon")
    if dp.noise_multiplier > 0 and dp.target_epsilon > 0:
        raise _invalid("give noise_multiplier or target_epsilon, not both")
    z = dp.noise_multiplier or calibrate_noise_multiplier(dp.target_epsilon, dp.delta, rounds)
    budget = dp.epsilon_budget or dp.target_epsilon
    if budget:
        first = PrivacyBudget(budget, dp.delta).epsilon_after(gaussian_round_event(z))
        if first > budget:
            raise _invalid(
                f"one round at noise multiplier {z:.4g} already spends epsilon {first:.4g}, "
                f"over the budget of {budget:g}: raise the noise or the budget"
            )
    return z


def check_spec(spec: fed.FederationSpec) -> None:
    if not spec.participants:
        raise _invalid("invite at least one participant")
    if len(set(spec.participants)) != len(spec.participants):
        raise _invalid("a participant is listed twice")
    check_identities(spec.participants, "participants", ErrorCode.INVALID_FEDERATION)
    if not 1 <= spec.rounds <= MAX_ROUNDS:
        raise _invalid(f"rounds must lie in 1..{MAX_ROUNDS}, got {spec.rounds}")
    if spec.local_epochs < 1 or spec.batch_size < 1:
        raise _invalid("local_epochs and batch_size must be at least 1")
    if not (math.isfinite(spec.lr) and 0 < spec.lr <= 100):
        raise _invalid(f"lr must lie in (0, 100], got {spec.lr}")
    if spec.strategy not in fed.STRATEGIES:
        raise _invalid(f"unknown strategy {quote(spec.strategy)}; choose one of {fed.STRATEGIES}")
    if not (math.isfinite(spec.mu) and spec.mu >= 0):
        raise _invalid(f"mu must be >= 0, got {spec.mu}")
    if spec.strategy == "fedavg" and spec.mu:
        raise _invalid("mu is FedProx's proximal weight: use strategy 'fedprox' with it")
    if spec.strategy == "fedprox" and not spec.mu:
        raise _invalid("strategy 'fedprox' needs mu > 0")
    if not 1 <= spec.min_participants <= len(spec.participants):
        raise _invalid(
            f"min_participants must lie in 1..{len(spec.participants)} (the invited), "
            f"got {spec.min_participants}"
        )
    if not (math.isfinite(spec.round_deadline_s) and 1 <= spec.round_deadline_s <= MAX_DEADLINE_S):
        raise _invalid(f"round_deadline_s must lie in [1, {MAX_DEADLINE_S:g}]")
    if spec.backend not in fed.BACKENDS:
        raise _invalid(f"unknown backend {quote(spec.backend)}; choose one of {fed.BACKENDS}")
    if spec.backend == "ckks" and spec.dp.enabled:
        raise _invalid("DP noise is added inside MPC: use backend 'mpc' with DP settings")
    if spec.backend == "ckks" and len(spec.ckks_fingerprint) != 64:
        raise _invalid("the CKKS back end needs the public context's fingerprint")
    try:
        losses.get(spec.loss)
    except losses.LossMismatch as exc:
        raise _invalid(str(exc)) from None


def _claim(info: fed.FederationInfo) -> Claim:
    """The federation's hold on its model id (:mod:`ppml.servers.store.model_ids`); with CKKS
    the owner's SDK registers the model, so the owner may upload under it."""
    return Claim(f"federation {info.federation_id!r}", info.owner, info.spec.backend == "ckks")


def _owner_registers(info: fed.FederationInfo) -> bool:
    """Whether the owner's SDK is to register the model of this ended federation (CKKS)."""
    return info.spec.backend == "ckks" and info.state in (
        fed.FederationState.SUCCEEDED,
        fed.FederationState.BUDGET_EXHAUSTED,
    )


class FederationManager:
    def __init__(
        self,
        server_name: str,
        rank: int,
        store: ShareStore[fed.FederationInfo],
        models: ModelRegistry,
        announcer: Announcer,
        limits: LimitsConfig | None = None,
        refuse: Callable[[Architecture, fed.FederationSpec], str | None] | None = None,
    ) -> None:
        """``refuse``: why this cluster's engine cannot run a federation (None: it can)."""
        self._name = server_name
        self._refuse = refuse
        self._rank = rank
        self._store = store
        self._models = models
        self._announce = announcer
        self._limits = limits or LimitsConfig()
        self._cond = threading.Condition()
        self._infos = {info.federation_id: info for info in store.list()}
        self._events = EventLog[fed.FederationEvent](self._cond, self._limits.max_job_events)
        self._global: dict[str, dict[str, Ring]] = {}
        self._open: dict[str, dict[str, Submission]] = {}
        self._budgets: dict[str, PrivacyBudget] = {}
        self._contexts: dict[str, bytes] = {}  # CKKS public contexts (leader)
        self._aggregates: dict[str, list[tuple[int, bytes]]] = {}  # CKKS sums (leader)
        for info in builtins.list(self._infos.values()):
            if not info.state.terminal:
                self._finish(
                    info,
                    fed.FederationState.FAILED,
                    f"{server_name} restarted during round {info.round}; its shares of the "
                    "global model were lost. Create the federation again.",
                )
            elif _owner_registers(info) and not models.exists(info.model_id):
                with contextlib.suppress(PpmlError):  # its id may have been taken since
                    models.ids.reserve(info.model_id, _claim(info))

    # ------------------------------------------------------------ client calls

    def create(
        self,
        federation_id: str,
        model_id: str,
        name: str,
        owner: str,
        architecture: Architecture,
        spec: fed.FederationSpec,
        initial: dict[str, Ring],
        public_context: bytes = b"",
        initial_encrypted: bytes = b"",
    ) -> fed.FederationInfo:
        """Validate everything, keep the federation and announce it to the leader."""
        check_id(federation_id, "federation_id")
        check_id(model_id, "model_id")
        check_name(name, "name", ErrorCode.INVALID_FEDERATION)  # the result model's name
        check_spec(spec)
        z = check_dp(spec.dp, spec.rounds)
        try:
            if infer_output_shape(architecture) != architecture.output_shape:
                raise ValueError("the layers do not produce the declared output shape")
        except ValueError as exc:
            raise PpmlError(ErrorCode.INVALID_MODEL, str(exc)) from None
        why = graph_refusal(architecture)
        if why is None and self._refuse is not None:
            why = self._refuse(architecture, spec)
        if why is not None:
            raise _invalid(why)
        if spec.backend == "ckks" and self._rank == 0:
            self._check_ckks(architecture, spec, public_context, initial_encrypted)
        active = sum(1 for i in self._all() if i.owner == owner and not i.state.terminal)
        if active >= self._limits.max_queued_jobs_per_identity:
            raise PpmlError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{owner!r} already runs {active} federations (the limit); wait or cancel one",
            )
        if federation_id in self._infos:
            raise FEDERATION_CODEC.exists_error(federation_id)
        info = fed.FederationInfo(
            federation_id=federation_id,
            model_id=model_id,
            name=name or federation_id,
            owner=owner,
            architecture=architecture,
            spec=spec,
            round_deadline_unix_s=time.time() + spec.round_deadline_s,
            noise_multiplier=z,
            created_unix_ms=_now_ms(),
        )
        self._models.ids.reserve(model_id, _claim(info))  # until its model is stored
        try:
            self._store.put(info, initial if spec.backend == "mpc" else {})
        except BaseException:
            self._models.ids.release(model_id, _claim(info).holder)
            raise
        with self._cond:
            self._infos[federation_id] = info
            self._global[federation_id] = dict(initial)
            self._open[federation_id] = {}
            if spec.dp.enabled:
                budget = spec.dp.epsilon_budget or spec.dp.target_epsilon or math.inf
                self._budgets[federation_id] = PrivacyBudget(budget, spec.dp.delta)
            if spec.backend == "ckks" and self._rank == 0:
                self._contexts[federation_id] = public_context
                self._aggregates[federation_id] = [(0, initial_encrypted)]
        self._emit(info)
        group = CREATED + fingerprint(owner, architecture, spec)
        if not self._announce(cmd.Announce(fed.KIND, federation_id, group, 0, ANNOUNCE_TIMEOUT_S)):
            self._finish(info, fed.FederationState.FAILED, "the leader could not be reached")
            raise PpmlError(ErrorCode.NOT_READY, "the leader could not be reached; retry shortly")
        return info

    def _check_ckks(
        self, architecture: Architecture, spec: fed.FederationSpec, context: bytes, initial: bytes
    ) -> None:
        if not context or not initial:
            raise _invalid("the CKKS back end needs the public context and the encrypted model")
        if ckks.context_fingerprint(context) != spec.ckks_fingerprint:
            raise _invalid("the public context does not match the spec's fingerprint")
        try:
            if ckks.load_context(context).has_secret_key():
                raise _invalid(
                    "the CKKS context holds the secret key: send only the public context "
                    "(FederationKeys.public_context); the key stays with the participants"
                )
            update = ckks.deserialize(initial)
        except ckks.CkksError as exc:
            raise _invalid(f"CKKS: {exc}") from None
        if update.fingerprint != spec.ckks_fingerprint:
            raise PpmlError(
                ErrorCode.CONTEXT_MISMATCH, "initial model: encrypted under another context"
            )
        if update.length != fed.parameter_count(architecture):
            raise _invalid(
                f"the encrypted model has {update.length} values, the architecture "
                f"{fed.parameter_count(architecture)}"
            )

    def get(self, federation_id: str, caller: str) -> fed.FederationInfo:
        return self._visible(self._info(federation_id), caller)

    def list(self, caller: str) -> builtins.list[fed.FederationInfo]:
        return [self._visible(info, caller) for info in self._all()]

    def _visible(self, info: fed.FederationInfo, caller: str) -> fed.FederationInfo:
        with self._cond:
            submitted = tuple(sorted(self._open.get(info.federation_id, {})))
        info = info.evolve(submitted=submitted)
        return info if caller == info.owner else info.public()

    def round_view(
        self, federation_id: str, caller: str, from_round: int
    ) -> tuple[fed.FederationInfo, dict[str, Ring], builtins.list[tuple[int, bytes]]]:
        """The open round, this server's global shares (MPC) or the CKKS sums after a round."""
        if caller not in self._info(federation_id).may_see:
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED,
                f"{caller!r} is not a participant of federation {federation_id!r}",
            )
        with self._cond:  # the state and the shares together (see _finish)
            info = self._infos[federation_id]
            shares = dict(self._global.get(federation_id, {}))
            sums = [a for a in self._aggregates.get(federation_id, []) if a[0] >= from_round]
        return self._visible(info, caller), shares, sums

    def _open_round_for(
        self, federation_id: str, caller: str, round_no: int, backend: str
    ) -> fed.FederationInfo:
        info = self._info(federation_id)
        if caller not in info.spec.participants:
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED,
                f"{caller!r} is not invited to federation {federation_id!r}",
            )
        if info.state is fed.FederationState.BUDGET_EXHAUSTED:
            raise PpmlError(ErrorCode.BUDGET_EXHAUSTED, info.reason)
        if info.state.terminal:
            raise PpmlError(
                ErrorCode.FEDERATION_FINISHED,
                f"federation {federation_id!r} already {info.state.value}",
            )
        if info.spec.backend != backend:
            raise _invalid(
                f"federation {federation_id!r} aggregates with {info.spec.backend!r}; "
                f"this was a {backend!r} update"
            )
        if round_no < info.round:
            raise PpmlError(
                ErrorCode.ROUND_CLOSED,
                f"round {round_no} of {federation_id!r} closed (deadline passed or everyone "
                f"submitted); round {info.round} is open: fetch it and train on its model",
            )
        if round_no > info.round:
            raise _invalid(f"round {round_no} has not opened; round {info.round} is open")
        return info

    def submit(
        self,
        federation_id: str,
        caller: str,
        round_no: int,
        update: dict[str, Ring],
        weight: Ring,
        loss: Ring | None,
    ) -> int:
        """Keep one participant's update shares for the open round; returns the count."""
        self._open_round_for(federation_id, caller, round_no, "mpc")
        if weight.shape != (1,) or (loss is not None and loss.shape != (1,)):
            raise _invalid("weight and loss must be shares of one value each, shape [1]")
        return self._keep(federation_id, caller, round_no, Submission(update, weight, loss))

    def submit_encrypted(self, federation_id: str, caller: str, round_no: int, data: bytes) -> int:
        info = self._open_round_for(federation_id, caller, round_no, "ckks")
        if self._rank != 0:
            raise PpmlError(
                ErrorCode.INVALID_ARGUMENT, "CKKS updates go to the leader (rank 0) only"
            )
        try:
            update = ckks.deserialize(data)
        except ckks.CkksError as exc:
            raise _bad_update(str(exc)) from None
        if update.fingerprint != info.spec.ckks_fingerprint:
            raise PpmlError(
                ErrorCode.CONTEXT_MISMATCH,
                f"the update was encrypted under context {update.fingerprint[:16]}..., "
                f"federation {federation_id!r} uses {info.spec.ckks_fingerprint[:16]}...: "
                "encrypt with the federation's participant context",
            )
        expected = fed.parameter_count(info.architecture)
        if update.length != expected or update.count != 1:
            raise _bad_update(f"{update.length} values, the model has {expected}")
        if not (math.isfinite(update.weight) and 1 <= update.weight <= fed.MAX_UPDATE_WEIGHT):
            raise _bad_update(
                f"its weight (sample count) must lie in [1, {fed.MAX_UPDATE_WEIGHT}]"
            )
        with self._cond:
            context = self._contexts.get(federation_id, b"")
        try:  # every chunk parsed here, so that closing the round cannot fail on it
            ckks.check_chunks(ckks.load_context(context), update)
        except ckks.CkksError as exc:
            raise _bad_update(str(exc)) from None
        return self._keep(
            federation_id, caller, round_no, Submission(None, None, None, encrypted=update)
        )

    def _keep(self, federation_id: str, caller: str, round_no: int, sub: Submission) -> int:
        with self._cond:
            info = self._infos[federation_id]
            if info.round != round_no or info.state.terminal:
                raise PpmlError(ErrorCode.ROUND_CLOSED, f"round {round_no} just closed; retry")
            held = self._open.setdefault(federation_id, {})
            if caller in held:
                raise PpmlError(
                    ErrorCode.ALREADY_SUBMITTED,
                    f"{caller!r} already submitted an update in round {round_no}; "
                    "one update per participant per round",
                )
            held[caller] = sub
            count = len(held)
        self._announce(
            cmd.Announce(fed.KIND, federation_id, f"{ROUND}{round_no}", count, ANNOUNCE_TIMEOUT_S)
        )
        return count

    def watch(
        self, federation_id: str, caller: str, active: Callable[[], bool]
    ) -> Iterator[fed.FederationEvent]:
        """Every event so far, then new ones, until the federation ends (or the caller leaves)."""
        info = self._info(federation_id)
        return self._events.watch(
            federation_id,
            lambda: self._replay(self._infos[federation_id]),
            caller == info.owner,
            active,
        )

    def cancel(self, federation_id: str, caller: str, wait_s: float = 30.0) -> fed.FederationInfo:
        info = self._info(federation_id)
        if caller != info.owner:
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED,
                f"only its owner {info.owner!r} may cancel {federation_id!r}",
            )
        if info.state.terminal:
            raise PpmlError(
                ErrorCode.FEDERATION_FINISHED, f"{federation_id!r} already {info.state.value}"
            )
        if not self._announce(cmd.CancelJob(federation_id, f"cancelled by {caller}")):
            raise PpmlError(ErrorCode.NOT_READY, "the leader could not be reached; retry shortly")
        deadline = time.monotonic() + wait_s
        with self._cond:
            while time.monotonic() < deadline and not self._infos[federation_id].state.terminal:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            return self._infos[federation_id]

    # ------------------------------------------------------------ leader and worker calls

    def open_rounds(self) -> builtins.list[OpenRound]:
        return [
            OpenRound(
                i.federation_id,
                i.round,
                i.round_deadline_unix_s,
                len(i.spec.participants),
                i.spec.backend,
            )
            for i in self._all()
            if not i.state.terminal
        ]

    def round_inputs(self, federation_id: str, round_no: int) -> RoundInputs:
        info = self._info(federation_id)
        if info.state.terminal or info.round != round_no:
            raise RuntimeError(
                f"federation {federation_id} is {info.state.value} at round {info.round} on "
                f"{self._name}, not at round {round_no}"
            )
        with self._cond:
            return RoundInputs(
                info,
                dict(self._global.get(federation_id, {})),
                dict(self._open.get(federation_id, {})),
                self._contexts.get(federation_id, b""),
            )

    def budget(self, federation_id: str) -> PrivacyBudget | None:
        return self._budgets.get(federation_id)

    def close_round(
        self,
        federation_id: str,
        result: fed.RoundResult,
        new_global: dict[str, Ring] | None,
        encrypted_sum: bytes = b"",
    ) -> None:
        """Record a closed round (applied or not) and open the next, or finish."""
        info = self._info(federation_id)
        with self._cond:
            if new_global is not None:
                self._global[federation_id] = new_global
            if encrypted_sum:
                self._aggregates.setdefault(federation_id, []).append((result.round, encrypted_sum))
            self._open[federation_id] = {}
        info = info.evolve(
            results=(*info.results, result),
            epsilon_spent=result.epsilon or info.epsilon_spent,
        )
        if result.round >= info.spec.rounds:
            self._complete(info)
            return
        budget = self._budgets.get(federation_id)
        if budget is not None:
            next_epsilon = budget.epsilon_after(gaussian_round_event(info.noise_multiplier))
            if next_epsilon > budget.epsilon:
                self._finish(
                    info.evolve(round=result.round),
                    fed.FederationState.BUDGET_EXHAUSTED,
                    f"round {result.round + 1} would bring epsilon to {next_epsilon:.4g} "
                    f"(delta={budget.delta:g}), over the budget of {budget.epsilon:g}; "
                    f"the model after round {result.round} is registered",
                    register=True,
                )
                return
        self._update(
            info.evolve(
                round=result.round + 1,
                round_deadline_unix_s=time.time() + info.spec.round_deadline_s,
            ),
            result,
        )

    def _complete(self, info: fed.FederationInfo) -> None:
        if not any(r.applied for r in info.results):
            self._finish(info, fed.FederationState.FAILED, "no round had enough participants")
            return
        self._finish(info, fed.FederationState.SUCCEEDED, "", register=True)

    def _register(self, info: fed.FederationInfo) -> str:
        """Store the final model (MPC back end); '' or why it could not be."""
        if info.spec.backend != "mpc":
            return ""  # the participants hold it; the owner's SDK registers it
        with self._cond:
            shares = dict(self._global.get(info.federation_id, {}))
        may_see = tuple(sorted(info.may_see))
        sources = tuple(
            DataSource(f"federation:{info.federation_id}", p, may_see)
            for p in info.spec.participants
        )
        try:
            self._models.upload(
                info.model_id,
                info.name,
                info.owner,
                info.architecture,
                shares,
                (),
                sources,
                holder=_claim(info).holder,
            )
        except PpmlError as err:
            return f"could not store the model: {err.detail}"
        return ""

    def end(self, federation_id: str, state: str, reason: str) -> None:
        """The leader ended the federation on every party (no-op if unknown or ended)."""
        with self._cond:
            info = self._infos.get(federation_id)
        if info is not None and not info.state.terminal:
            self._finish(info, fed.FederationState(state), reason)

    def fail_active(self, reason: str) -> None:
        for info in self._all():
            if not info.state.terminal:
                self._finish(info, fed.FederationState.FAILED, reason)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for info in self._all():
            out[info.state.value] = out.get(info.state.value, 0) + 1
        return out

    # ------------------------------------------------------------ state

    def _finish(
        self,
        info: fed.FederationInfo,
        state: fed.FederationState,
        reason: str,
        register: bool = False,
    ) -> None:
        if register:
            problem = self._register(info)
            if problem:
                state, reason = fed.FederationState.FAILED, problem
        claim = _claim(info)
        if not (register and state is not fed.FederationState.FAILED and claim.open_to_owner):
            self._models.ids.release(info.model_id, claim.holder)  # stored, or none: free
        result = info.results[-1] if info.results and info.results[-1].round == info.round else None
        self._update(  # first the final state, then the shares go: readers see one or the other
            info.evolve(state=state, reason=reason, finished_unix_ms=_now_ms()),
            result,
        )
        with self._cond:
            self._open.pop(info.federation_id, None)
            self._global.pop(info.federation_id, None)

    def _info(self, federation_id: str) -> fed.FederationInfo:
        check_id(federation_id, "federation_id")
        with self._cond:
            info = self._infos.get(federation_id)
        if info is None:
            raise FEDERATION_CODEC.not_found_error(federation_id)
        return info

    def _all(self) -> builtins.list[fed.FederationInfo]:
        with self._cond:
            return builtins.list(self._infos.values())

    def _update(self, info: fed.FederationInfo, result: fed.RoundResult | None = None) -> None:
        self._store.update_meta(info)
        with self._cond:
            self._infos[info.federation_id] = info
        self._emit(info, result)

    def _emit(self, info: fed.FederationInfo, result: fed.RoundResult | None = None) -> None:
        self._events.append(
            info.federation_id,
            lambda index: fed.FederationEvent(
                index=index,
                federation_id=info.federation_id,
                state=info.state,
                round=info.round,
                result=result,
                reason=info.reason,
                epsilon_spent=info.epsilon_spent,
            ),
        )

    @staticmethod
    def _replay(info: fed.FederationInfo) -> builtins.list[fed.FederationEvent]:
        """Events of a federation this process did not run: its rounds and final state."""
        events = [
            fed.FederationEvent(i, info.federation_id, fed.FederationState.RUNNING, r.round, r)
            for i, r in enumerate(info.results)
        ]
        events.append(
            fed.FederationEvent(
                len(events),
                info.federation_id,
                info.state,
                info.round,
                reason=info.reason,
                epsilon_spent=info.epsilon_spent,
            )
        )
        return events


__all__ = ["FEDERATION_CODEC", "FederationManager", "OpenRound", "RoundInputs", "Submission"]
