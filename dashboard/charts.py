"""Altair charts built from the frames of :mod:`ppml.dashboard.history` and ``frames``.

Pure functions: a frame in, an ``alt.Chart`` out (nothing is drawn here).
"""

from __future__ import annotations

import altair as alt
import pandas as pd

HEIGHT = 220
TIME = alt.X("time:T", title=None, axis=alt.Axis(format="%H:%M:%S"))


def _series(frame: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """Adds a "series" column: ``server · model name``."""
    frame = frame.copy()
    frame["series"] = frame["server"] + " · " + frame["model"].map(lambda m: names.get(m, m))
    return frame


def requests_per_second(rates: pd.DataFrame, names: dict[str, str]) -> alt.Chart:
    return (
        alt.Chart(_series(rates, names), title="requests/s")
        .mark_line(point=True, interpolate="monotone")
        .encode(
            x=TIME,
            y=alt.Y("rps:Q", title="requests/s"),
            color=alt.Color("series:N", title="server · model"),
            tooltip=["series:N", alt.Tooltip("rps:Q", format=".2f"), "time:T"],
        )
        .properties(height=HEIGHT)
    )


def latency(series: pd.DataFrame, names: dict[str, str]) -> alt.Chart:
    return (
        alt.Chart(_series(series, names), title="latency (ms, recent requests)")
        .mark_line()
        .encode(
            x=TIME,
            y=alt.Y("ms:Q", title="ms"),
            color=alt.Color("series:N", title="server · model"),
            strokeDash=alt.StrokeDash("quantile:N", sort=["p50", "p95", "p99"]),
            tooltip=["series:N", "quantile:N", alt.Tooltip("ms:Q", format=".1f"), "time:T"],
        )
        .properties(height=HEIGHT)
    )


def queue_depth(series: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(series, title="queue depth (requests waiting for their batch)")
        .mark_area(opacity=0.5, line=True, interpolate="step-after")
        .encode(
            x=TIME,
            y=alt.Y(
                "queue_depth:Q",
                title="requests",
                stack=None,
                axis=alt.Axis(format="d", tickMinStep=1),
                scale=alt.Scale(domainMin=0, nice=True),
            ),
            color=alt.Color("server:N"),
            tooltip=["server:N", "queue_depth:Q", "time:T"],
        )
        .properties(height=HEIGHT)
    )


def batch_sizes(frame: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(frame, title="batch-size distribution (requests per MPC job)")
        .mark_bar()
        .encode(
            x=alt.X("batch size:O", title="requests per job", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("jobs:Q", title="MPC jobs"),
            color=alt.Color("server:N"),
            xOffset="server:N",
            tooltip=["server:N", "batch size:O", "jobs:Q"],
        )
        .properties(height=HEIGHT)
    )


def errors_by_code(frame: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(frame, title="failed requests by gRPC status")
        .mark_bar(color="#d62728")
        .encode(
            x=alt.X("requests:Q", title="requests"),
            y=alt.Y("code:N", title=None),
            yOffset="server:N",
            color=alt.Color("server:N", scale=alt.Scale(scheme="reds")),
            tooltip=["server:N", "code:N", "requests:Q"],
        )
        .properties(height=HEIGHT)
    )


def mpc_totals(frame: pd.DataFrame, column: str, title: str) -> alt.Chart:
    """Bars per job kind and server of one cumulative column ("rounds" or "bytes")."""
    return (
        alt.Chart(frame, title=title)
        .mark_bar()
        .encode(
            x=alt.X("kind:N", title="job kind", axis=alt.Axis(labelAngle=0)),
            y=alt.Y(f"{column}:Q", title=column),
            color=alt.Color("server:N"),
            xOffset="server:N",
            tooltip=["server:N", "kind:N", "jobs:Q", f"{column}:Q"],
        )
        .properties(height=HEIGHT)
    )


def dealer_requests(frame: pd.DataFrame) -> alt.Chart:
    """Bars of the dealer's served requests per kind (Beaver triples, wraps, ...)."""
    return (
        alt.Chart(frame, title="dealer requests by kind")
        .mark_bar()
        .encode(
            x=alt.X("kind:N", title="request kind", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("requests:Q", title="requests"),
            tooltip=["kind:N", "requests:Q"],
        )
        .properties(height=HEIGHT)
    )


def mpc_bytes_per_second(series: pd.DataFrame) -> alt.Chart:
    frame = series.assign(series=series["server"] + " · " + series["kind"])
    return (
        alt.Chart(frame, title="MPC traffic (bytes/s)")
        .mark_line(point=True)
        .encode(
            x=TIME,
            y=alt.Y("bytes_per_s:Q", title="bytes/s", axis=alt.Axis(format="~s")),
            color=alt.Color("series:N", title="server · kind"),
            tooltip=["series:N", alt.Tooltip("bytes_per_s:Q", format=",.0f"), "time:T"],
        )
        .properties(height=HEIGHT)
    )


def federation_participation(frame: pd.DataFrame, label: str) -> alt.Chart:
    """Stacked bars per round: participants whose update was aggregated, and drop-outs."""
    return (
        alt.Chart(frame, title=f"participants per round · {label}")
        .mark_bar()
        .encode(
            x=alt.X("round:O", title="round", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("count:Q", title="participants", axis=alt.Axis(format="d", tickMinStep=1)),
            color=alt.Color(
                "kind:N",
                title=None,
                scale=alt.Scale(domain=["took part", "dropped"], range=["#4c78a8", "#e45756"]),
            ),
            tooltip=["round:O", "kind:N", "count:Q"],
        )
        .properties(height=HEIGHT)
    )


def federation_epsilon(frame: pd.DataFrame, budget: float | None, label: str) -> alt.LayerChart:
    """Epsilon spent after each round; the budget (if finite) as a red rule."""
    line = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("round:Q", title="round", axis=alt.Axis(format="d", tickMinStep=1)),
            y=alt.Y("epsilon:Q", title="ε spent"),
            tooltip=["round:Q", alt.Tooltip("epsilon:Q", format=".3f")],
        )
    )
    layers: list[alt.Chart] = [line]
    if budget is not None and budget != float("inf"):
        rule = alt.Chart(pd.DataFrame({"budget": [budget]})).mark_rule(
            color="#d62728", strokeDash=[6, 3]
        )
        layers.append(rule.encode(y="budget:Q", tooltip=[alt.Tooltip("budget:Q", title="budget")]))
    return alt.LayerChart(layer=layers, title=f"epsilon spent vs budget · {label}", height=HEIGHT)
