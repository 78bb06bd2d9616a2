"""Rendering: snapshots in, Streamlit elements out. No network access here.

Each ``render_*`` function draws one section of the page from a
:class:`~ppml.dashboard.data.ClusterSnapshot` (and the rolling history for
charts over time). Sections that have nothing to show say so instead of
drawing empty charts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence

import altair as alt
import pandas as pd
import streamlit as st
from pandas.io.formats.style import Styler

from ppml.dashboard import charts, ckks, federations, frames, history, jobs
from ppml.dashboard.data import ClusterSnapshot, ServerSnapshot

DOWN_STYLE = "background-color: #fde0e0; color: #8b0000; font-weight: 600"
WARN_STYLE = "background-color: #fff4d6"
# Columns whose text comes from clients or error messages, not from the operator
FREE_TEXT = ("model", "name", "owner", "errors", "last error")
_MARKDOWN = re.compile(r"[\\`*_\[\]<>|~$#]|:(?=[A-Za-z])|^[-+]")


def escape_markdown(text: str) -> str:
    """Text that Streamlit's Markdown (tables, alerts) shows as-is (no links, emoji, colours)."""
    return _MARKDOWN.sub(lambda m: "\\" + m.group(0), text)


def _chart(chart: alt.Chart | alt.LayerChart) -> None:
    st.altair_chart(chart, width="stretch")


def _table(frame: pd.DataFrame, free_text: Iterable[str] = FREE_TEXT) -> Styler:
    """A Styler that shows ``frame`` with thousands separators and escaped free text."""
    frame = frame.copy()
    for column in free_text:
        if column in frame.columns:
            frame[column] = frame[column].map(
                lambda v: escape_markdown(v) if isinstance(v, str) else v
            )
    return frame.style.format(precision=1, thousands=",")


def _row_style(row: pd.Series) -> list[str]:
    health = str(row["health"])
    if health.startswith("DOWN") or health in ("DISCONNECTED", "UNREACHABLE"):
        style = DOWN_STYLE
    elif health not in ("SERVING", "CONNECTED"):
        style = WARN_STYLE
    else:
        style = ""
    return [style] * len(row)


# ---------------------------------------------------------------- overview


def _alert(server: ServerSnapshot) -> None:
    if not server.reachable:
        st.error(
            f"**{server.name}** is DOWN: unreachable at {server.address}. "
            f"{escape_markdown(server.error)}",
            icon=":material/error:",
        )
    elif not server.up:
        detail = server.status.last_error if server.status else ""
        st.warning(
            f"**{server.name}** is {server.health}: its MPC session with every peer (and the "
            f"dealer, if any) is not up, so it cannot serve predictions. "
            f"{escape_markdown(detail)}",
            icon=":material/warning:",
        )
    elif server.error:
        st.warning(f"**{server.name}**: {escape_markdown(server.error)}", icon=":material/warning:")


def render_overview(snapshot: ClusterSnapshot) -> None:
    st.header("Cluster overview")
    for server in snapshot.servers:
        _alert(server)
    dealer, why = frames.dealer_state(snapshot)
    if dealer == "DISCONNECTED":
        st.error(f"dealer **{snapshot.dealer}** is DISCONNECTED ({why})", icon=":material/error:")
    up = sum(1 for s in snapshot.servers if s.up)
    if up == len(snapshot.servers) and dealer == "CONNECTED":
        st.success(
            f"All {up} compute servers and the dealer are up.", icon=":material/check_circle:"
        )
    elif up == len(snapshot.servers) and dealer == frames.NO_DEALER:
        st.success(f"All {up} compute servers are up ({why}).", icon=":material/check_circle:")

    leader = snapshot.leader
    report = leader.status if leader else None
    cols = st.columns(5)
    cols[0].metric("servers SERVING", f"{up}/{len(snapshot.servers)}")
    cols[1].metric("dealer", dealer)
    cols[2].metric("requests (leader)", report.requests_total if report else frames.NONE)
    cols[3].metric("MPC epoch", report.mpc_epoch if report else frames.NONE)
    cols[4].metric("models", len(frames.registry(snapshot)))
    st.table(_table(frames.overview(snapshot)).apply(_row_style, axis=1), hide_index=True)


# ---------------------------------------------------------------- serving


def render_serving(snapshot: ClusterSnapshot, past: Sequence[ClusterSnapshot]) -> None:
    st.header("Serving")
    names = frames.model_names(snapshot)
    models = frames.model_table(snapshot, history.recent_rates(past))
    if models.empty or not models["requests"].any():
        st.info("No predictions yet: per-model rates and latencies appear with the first request.")
    if not models.empty:
        st.table(_table(models), hide_index=True)

    left, right = st.columns(2)
    with left:
        rates = history.request_rates(past)
        if rates.empty:
            st.caption("requests/s: needs two refreshes with a reachable server.")
        else:
            _chart(charts.requests_per_second(rates, names))
    with right:
        latency = history.latency_series(past)
        if latency.empty:
            st.caption("latency: no completed requests yet.")
        else:
            _chart(charts.latency(latency, names))

    left, right = st.columns(2)
    with left:
        sizes = frames.batch_sizes(snapshot)
        if sizes.empty:
            st.caption("batch sizes: no prediction jobs yet.")
        else:
            _chart(charts.batch_sizes(sizes))
    with right:
        queue = history.queue_series(past)
        if queue.empty:
            st.caption("queue depth: no reachable server yet.")
        else:
            _chart(charts.queue_depth(queue))

    errors = frames.errors_by_code(snapshot)
    if errors.empty:
        st.caption("Errors by status code: no failed requests.")
    else:
        _chart(charts.errors_by_code(errors))


# ---------------------------------------------------------------- CKKS inference


def render_ckks(snapshot: ClusterSnapshot) -> None:
    st.header("CKKS inference")
    models = ckks.he_models(snapshot)
    contexts = ckks.he_contexts(snapshot)
    if models.empty and contexts.empty:
        st.info("No CKKS predictions yet: a model registered for CKKS inference appears here.")
        return
    st.caption(
        "Single-server inference on ciphertexts under each client's own keys: requests, "
        "latency (recent successful requests) and ciphertext traffic per model."
    )
    if models.empty:
        st.caption("CKKS models: no predictions yet.")
    else:
        st.table(_table(models, (*FREE_TEXT, "model id")), hide_index=True)
    if contexts.empty:
        st.caption("No CKKS contexts (evaluation keys) stored.")
    else:
        st.caption("CKKS contexts (public evaluation keys, one per parameter set) per client.")
        st.table(_table(contexts, (*FREE_TEXT, "identity")), hide_index=True)


# ---------------------------------------------------------------- MPC cost


def render_mpc_cost(snapshot: ClusterSnapshot, past: Sequence[ClusterSnapshot]) -> None:
    st.header("MPC cost")
    costs = frames.mpc_cost(snapshot)
    if costs.empty:
        st.info("No MPC jobs yet.")
        return
    st.caption("Communication rounds and bytes each party sent, per job kind (cumulative).")
    st.table(_table(costs), hide_index=True)
    left, right = st.columns(2)
    with left:
        _chart(charts.mpc_totals(costs, "rounds", "rounds per job kind"))
    with right:
        _chart(charts.mpc_totals(costs, "bytes", "bytes per job kind"))
    throughput = history.mpc_throughput(past)
    if not throughput.empty:
        _chart(charts.mpc_bytes_per_second(throughput))
    dealer = frames.dealer_requests(snapshot)
    if not snapshot.dealer:
        st.caption("This cluster has no dealer: its servers make their own randomness.")
    elif dealer.empty:
        st.caption("The dealer has not reported any requests yet.")
    else:
        st.caption("Requests the dealer served (as reported to the leader over its link).")
        _chart(charts.dealer_requests(dealer))
    pools = frames.fast_pools(snapshot)
    if pools.empty:
        st.caption("No fast-engine bundle pools in use.")
    else:
        st.caption(
            "Fast-engine bundles made by the dealer ahead of requests, per server: pooled now, "
            "added over the last minute, and forwards served from the pool (hits) or by asking "
            "the dealer on demand (misses)."
        )
        st.table(_table(pools), hide_index=True)


# ---------------------------------------------------------------- registry


def render_registry(snapshot: ClusterSnapshot) -> None:
    st.header("Registry")
    st.caption("Public metadata only: shares never leave the servers.")
    st.subheader("Models")
    models = frames.registry(snapshot)
    if models.empty:
        st.info("No models shared yet.")
    else:
        st.table(_table(models), hide_index=True)
    st.subheader("Datasets")
    data = frames.datasets(snapshot)
    if data.empty:
        st.info("No datasets yet.")
    else:
        styled = _table(data, (*FREE_TEXT, "id")).map(_held_style, subset=["held by"])
        st.table(styled, hide_index=True)
    render_training_jobs(snapshot)


def _held_style(held_by: str) -> str:
    return WARN_STYLE if held_by.endswith(frames.INCOMPLETE) else ""


# ---------------------------------------------------------------- training jobs


def _job_state_style(state: str) -> str:
    """Red for a failure or servers that disagree, amber for a cancellation."""
    if state.startswith("failed") or "(" in state:
        return DOWN_STYLE
    return WARN_STYLE if state.startswith("cancelled") else ""


def render_training_jobs(snapshot: ClusterSnapshot) -> None:
    st.subheader("Training jobs")
    found = jobs.cluster_jobs(snapshot)
    if not found:
        st.info("No training jobs yet.")
        return
    counts = jobs.count_states(found)
    for column, (state, count) in zip(st.columns(len(counts)), counts.items(), strict=True):
        column.metric(state, count)
    for job in found:
        if not job.agreed:
            st.warning(
                f"Training job **{escape_markdown(job.job_id)}**: the servers disagree on its "
                f"state: {escape_markdown(job.describe_states())}",
                icon=":material/warning:",
            )
    table = frames.training_jobs(snapshot)
    # a data grid (its text is not Markdown, so nothing to escape) for the progress bars
    st.dataframe(
        table.style.map(_job_state_style, subset=["state"]),
        hide_index=True,
        column_config={
            "progress": st.column_config.ProgressColumn(
                "progress", min_value=0.0, max_value=1.0, format="percent"
            ),
            "samples/s": st.column_config.NumberColumn("samples/s", format="%.1f"),
        },
    )


# ---------------------------------------------------------------- federations

MAX_FEDERATION_DETAILS = 4  # per-round charts for the first few (running ones first)


def _federation_state_style(state: str) -> str:
    if state.startswith("failed") or "(" in state:
        return DOWN_STYLE
    return WARN_STYLE if state.startswith(("cancelled", "budget_exhausted")) else ""


def render_federations(snapshot: ClusterSnapshot) -> None:
    st.header("Federations")
    found = federations.cluster_federations(snapshot)
    if not found:
        st.info("No federations yet.")
        return
    st.caption(
        "Public settings and participation only: updates and loss figures stay as shares "
        "(or CKKS ciphertexts) the servers cannot read."
    )
    for f in found:
        if not f.agreed:
            st.warning(
                f"Federation **{escape_markdown(f.federation_id)}**: the servers disagree on "
                f"its state: {escape_markdown(f.describe_state())}",
                icon=":material/warning:",
            )
    table = _table(federations.federations(snapshot), (*FREE_TEXT, "id", "participants", "reason"))
    st.table(table.map(_federation_state_style, subset=["state"]), hide_index=True)
    for f in found[:MAX_FEDERATION_DETAILS]:
        _render_federation_rounds(f)


def _render_federation_rounds(f: federations.ClusterFederation) -> None:
    st.subheader(f"Rounds · {escape_markdown(f.label)}")
    if not f.results:
        st.caption(f"{escape_markdown(f.federation_id)}: no round closed yet.")
        return
    left, right = st.columns(2)
    with left:
        _chart(charts.federation_participation(federations.participation(f), f.federation_id))
    with right:
        if f.dp:
            series = federations.epsilon_series(f)
            _chart(charts.federation_epsilon(series, f.budget, f.federation_id))
        else:
            st.caption("No client-level DP in this federation: no privacy budget to spend.")
    st.table(_table(federations.rounds(f), ("participants", "dropped", "reason")), hide_index=True)


# ---------------------------------------------------------------- page


def render_page(
    snapshot: ClusterSnapshot, past: Sequence[ClusterSnapshot], refresh_s: float
) -> None:
    """The whole page for one refresh; ``past`` ends with ``snapshot``."""
    taken = time.strftime("%H:%M:%S", time.localtime(snapshot.taken_at))
    st.caption(
        f"cluster **{snapshot.cluster}** · {len(snapshot.servers)} compute servers + dealer "
        f"**{snapshot.dealer}** · snapshot {taken} · refreshes every {refresh_s:g} s · "
        f"history {len(past)} snapshots"
    )
    render_overview(snapshot)
    render_serving(snapshot, past)
    render_ckks(snapshot)
    render_mpc_cost(snapshot, past)
    render_registry(snapshot)
    render_federations(snapshot)
