"""How ``ppml fl`` prints a federation: one-line summaries, its details, its rounds.

Pure functions of the SDK's :class:`~ppml.proto.domain.federations.FederationInfo`
and :class:`~ppml.client.federation.RoundProgress`; the commands are in
:mod:`ppml.client.cli.federation`.
"""

from __future__ import annotations

import math
from datetime import datetime

from ppml.client.federation import RoundProgress
from ppml.proto.domain import federations as fed

NONE = "-"


def epsilon_budget(dp: fed.DpSettings) -> float | None:
    """The epsilon a federation may spend: None without DP, ``inf`` when unlimited."""
    if not dp.enabled:
        return None
    return dp.epsilon_budget or dp.target_epsilon or math.inf


def describe_epsilon(info: fed.FederationInfo) -> str:
    """``0.84/4`` (spent/budget), ``0.84/unlimited``, or ``off`` without DP."""
    budget = epsilon_budget(info.spec.dp)
    if budget is None:
        return "off"
    return f"{info.epsilon_spent:.2f}/{'unlimited' if math.isinf(budget) else f'{budget:g}'}"


def describe_dp(dp: fed.DpSettings, noise_multiplier: float) -> str:
    if not dp.enabled:
        return "off"
    noise = f"noise multiplier {noise_multiplier:g}"
    if dp.target_epsilon:
        noise += f" (calibrated for epsilon {dp.target_epsilon:g})"
    return f"clip {dp.clip_norm:g}, {noise}, delta {dp.delta:g}"


def round_of(info: fed.FederationInfo) -> str:
    """``2/3``: the open round while running, the rounds closed once ended."""
    current = info.round if not info.state.terminal else len(info.results)
    return f"{current}/{info.spec.rounds}"


def describe_state(info: fed.FederationInfo) -> str:
    return info.state.value + (f" ({info.reason})" if info.reason else "")


def when(unix_ms: int) -> str:
    if not unix_ms:
        return NONE
    return datetime.fromtimestamp(unix_ms / 1000).isoformat(sep=" ", timespec="seconds")


def round_row(r: RoundProgress) -> list[object]:
    return [
        r.round,
        ",".join(r.participants) or NONE,
        ",".join(r.dropped) or NONE,
        "yes" if r.applied else "no",
        f"{r.epsilon:.3f}",
        NONE if r.mean_loss is None else f"{r.mean_loss:.4f}",
        r.reason or NONE,
    ]


ROUND_HEADER = ["round", "participants", "dropped", "applied", "epsilon", "mean loss", "reason"]


def details(info: fed.FederationInfo) -> list[tuple[str, object]]:
    spec = info.spec
    strategy = spec.strategy + (f" (mu {spec.mu:g})" if spec.strategy == "fedprox" else "")
    training = (
        f"{spec.local_epochs} local epoch{'s' if spec.local_epochs != 1 else ''}, "
        f"batch {spec.batch_size}, lr {spec.lr:g}, loss {spec.loss}"
    )
    details: list[tuple[str, object]] = [
        ("federation", info.federation_id),
        ("name", info.name or NONE),
        ("owner", info.owner),
        ("state", describe_state(info)),
        ("backend", spec.backend),
        ("strategy", strategy),
        ("training", training),
        ("participants", f"{', '.join(spec.participants)} (min {spec.min_participants})"),
        ("round", round_of(info)),
    ]
    if not info.state.terminal:
        deadline = when(int(info.round_deadline_unix_s * 1000))
        submitted = ", ".join(info.submitted) or "nobody yet"
        details.append(("open round", f"deadline {deadline}, submitted: {submitted}"))
    return [
        *details,
        ("DP", describe_dp(spec.dp, info.noise_multiplier)),
        ("epsilon", describe_epsilon(info)),
        ("model", info.model_id),
        ("created", when(info.created_unix_ms)),
        ("finished", when(info.finished_unix_ms)),
    ]
