"""The monitoring dashboard's entry point.

Run it with ``ppml dashboard --config cluster.toml`` or::

    streamlit run dashboard/app.py -- --config cluster.toml [--insecure] [--refresh 2]

Every ``--refresh`` seconds the page fetches a snapshot of every server
(:mod:`ppml.dashboard.data`), appends it to a rolling history kept in
``st.session_state`` and redraws (:mod:`ppml.dashboard.render`). The snapshot
source can be replaced: ``--replay FILE`` (or ``PPML_DASHBOARD_REPLAY``)
plays recorded snapshots back, and tests preset ``st.session_state[SOURCE_KEY]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import streamlit as st

from ppml.dashboard.data import LiveSource, ReplaySource, SnapshotSource
from ppml.dashboard.history import History
from ppml.dashboard.render import render_page

REFRESH_S = 2.0
SOURCE_KEY = "ppml_source"
HISTORY_KEY = "ppml_history"
REPLAY_ENV = "PPML_DASHBOARD_REPLAY"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options after ``--`` on the streamlit command line (others are ignored)."""
    parser = argparse.ArgumentParser(prog="dashboard/app.py", add_help=False)
    parser.add_argument("--config", help="topology file (cluster.toml)")
    parser.add_argument("--insecure", action="store_true", help="connect without TLS")
    parser.add_argument("--refresh", type=float, default=REFRESH_S, help="seconds")
    parser.add_argument("--replay", help="recorded snapshots (JSON) instead of a live cluster")
    return parser.parse_known_args(list(argv))[0]


@st.cache_resource
def _live_source(config: str, insecure: bool) -> LiveSource:
    """One set of channels per process, shared by every browser session."""
    return LiveSource(config, insecure=insecure)


def _source(args: argparse.Namespace) -> SnapshotSource | None:
    if SOURCE_KEY in st.session_state:
        source: SnapshotSource = st.session_state[SOURCE_KEY]
        return source
    replay = args.replay or os.environ.get(REPLAY_ENV)
    if replay:
        st.session_state[SOURCE_KEY] = ReplaySource.from_file(replay)
        return st.session_state[SOURCE_KEY]
    if args.config:
        return _live_source(os.path.abspath(args.config), args.insecure)
    return None


def main() -> None:
    st.set_page_config(
        page_title="ppml dashboard", page_icon=":material/shield_lock:", layout="wide"
    )
    st.title("ppml monitoring")
    args = parse_args(sys.argv[1:])
    try:
        source = _source(args)
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError
        st.error(f"cannot start: {exc}")
        st.stop()
    if source is None:
        st.error("no cluster given: run `streamlit run dashboard/app.py -- --config cluster.toml`")
        st.stop()
    past: History = st.session_state.setdefault(HISTORY_KEY, History())
    refresh = max(args.refresh, 0.5)

    @st.fragment(run_every=refresh)
    def live() -> None:
        snapshot = source.fetch()
        past.add(snapshot)
        render_page(snapshot, past.snapshots, refresh)

    live()


if __name__ == "__main__":
    main()
