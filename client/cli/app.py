"""``ppml``: run a local cluster, manage secret-shared models, predict on encrypted inputs.

Examples::

    ppml cluster up --parties 2 --dir ./cluster        # servers + dealer in the background
    ppml cluster up --dir ./cluster --client alice     # + an identity: secrets/alice.token
    ppml cluster status --config ./cluster/cluster.toml
    ppml models share --config ./cluster/cluster.toml --onnx model.onnx --name mnist
    ppml predict --config ./cluster/cluster.toml --model ID --input x.npy
    ppml dashboard --config ./cluster/cluster.toml --port 8501   # monitoring page

    # secret-shared data and training (commands in ppml.client.cli.data, .training)
    ppml data share --config ./cluster/cluster.toml --builtin iris --partition 2
    ppml data share --config ./cluster/cluster.toml --csv rows.csv --label-column label
    ppml data list --config ./cluster/cluster.toml
    ppml train --config ./cluster/cluster.toml --datasets ID1 ID2 --mlp 4,16,3 \\
        --epochs 5 --batch-size 32 --lr 0.1 --reveal-metrics   # progress bar, then model id
    ppml jobs list --config ./cluster/cluster.toml
    ppml jobs show JOB --config ./cluster/cluster.toml   # or: ppml jobs cancel JOB ...
    ppml evaluate --config ./cluster/cluster.toml --model MODEL --dataset ID
    ppml models export MODEL --config ./cluster/cluster.toml --out weights.pt
    ppml cluster down --dir ./cluster

    # federated learning: rows stay with each participant (ppml.client.cli.federation)
    ppml fl create --config ./cluster/cluster.toml --model model.onnx \\
        --participants alice,bob --rounds 3 --dp-clip 1 --dp-target-epsilon 4
    ppml fl join FEDERATION --config ./cluster/cluster.toml --token-file alice.token \\
        --data rows.csv                                  # per-round progress, final state
    ppml fl status [FEDERATION] --config ./cluster/cluster.toml

    # a real multi-host cluster (ppml.client.cli.deploy; docs/deploy.md)
    ppml deploy init --out ./bundles --party s0=10.0.0.1:50051:29500 \\
        --party s1=10.0.0.2:50051:29500 --dealer dealer=10.0.0.3:29600 --client me
    ppml deploy check --config ./bundles/s1/cluster.toml --as s1

Every input, weight and data row is secret-shared on this machine before it
is sent; server i only ever receives share i. SDK errors print one line and
exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ppml.client.cli import data as cli_data
from ppml.client.cli import deploy as cli_deploy
from ppml.client.cli import federation as cli_federation
from ppml.client.cli import training as cli_training
from ppml.client.cli.common import CliError
from ppml.client.cli.common import connect as _connect
from ppml.client.cli.common import table as _table
from ppml.client.deploy.local import LocalCluster, wait_serving, write_local_topology
from ppml.client.errors import PpmlClientError
from ppml.proto.deploy.topology import load_config
from ppml.proto.domain.status import StatusReport

PIDS_FILE = "pids.json"
STOP_GRACE_S = 10.0


def _is_running(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) ppml server or dealer process."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs (macOS): signal 0 probes existence
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and b"ppml.servers" in cmdline


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: Iterable[int], seconds: float) -> None:
    remaining, deadline = list(pids), time.monotonic() + seconds
    while any(_is_running(p) for p in remaining) and time.monotonic() < deadline:
        time.sleep(0.1)


def _read_pids(directory: Path) -> dict[str, int]:
    path = directory / PIDS_FILE
    if not path.exists():
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text())["processes"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise CliError(f"{path} is not a ppml pid file: {exc}") from exc


def _write_pids(directory: Path, cluster: LocalCluster) -> None:
    record = {
        "config": str(cluster.config_path),
        "insecure": cluster.insecure,
        "processes": {name: proc.pid for name, proc in cluster.processes.items()},
    }
    tmp = directory / f".{PIDS_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(directory / PIDS_FILE)


def _wait_healthy(cluster: LocalCluster, timeout: float) -> None:
    """Wait until every server is SERVING; fail early if a process exits."""
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise CliError(
                    f"{name} exited with code {proc.returncode} during start-up; "
                    f"see {cluster.log(name)}"
                )
        try:
            wait_serving(cluster.config, timeout=1.0, insecure=cluster.insecure)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                logs = cluster.directory / "logs"
                raise CliError(f"not SERVING after {timeout:.0f}s; logs in {logs}") from None


def _load_input(path: Path) -> np.ndarray:
    if not path.is_file():
        raise CliError(f"input file {path} does not exist")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix == ".csv":
            array = np.loadtxt(path, delimiter=",", ndmin=2)
        else:
            raise CliError(f"input {path} must be a .npy or .csv file")
    except ValueError as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    array = np.asarray(array, dtype=np.float64)
    return array[None] if array.ndim == 1 else array


# ------------------------------------------------------------------ commands


_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def _client_names(names: list[str], parties: int) -> tuple[str, ...]:
    """``--client`` names: file-name safe, distinct, none of the cluster's own identities."""
    taken = {"local-user", "client", "analyst", "monitor", "dealer"}
    taken |= {f"server-{rank}" for rank in range(parties)}
    for name in names:
        if not _CLIENT_NAME.fullmatch(name):
            raise CliError(
                f"--client {name!r}: use letters, digits, '_', '.', '-' (at most 63, "
                "starting with a letter or digit)"
            )
        if name in taken:
            raise CliError(f"--client {name!r}: that identity is already in every local cluster")
        if names.count(name) > 1:
            raise CliError(f"--client {name!r} is given twice")
    return tuple(names)


def cmd_cluster_up(args: argparse.Namespace) -> int:
    if args.parties < 2:
        raise CliError("a cluster needs at least 2 non-colluding compute servers")
    directory = Path(args.dir).resolve()
    running = {n: p for n, p in _read_pids(directory).items() if _is_running(p)}
    if running:
        pids = ", ".join(f"{n}={p}" for n, p in running.items())
        raise CliError(
            f"a cluster is already running in {directory} ({pids}); "
            f"stop it with: ppml cluster down --dir {directory}"
        )
    options = {"max_batch_rows": args.max_batch_rows, "max_wait_ms": args.max_wait_ms}
    serving = {key: value for key, value in options.items() if value is not None}
    clients = _client_names(args.client or [], args.parties)
    config_path = write_local_topology(directory, args.parties, serving, clients=clients)
    load_config(config_path)  # reject bad --max-* values before starting anything
    cluster = LocalCluster(args.parties, directory, args.insecure, detached=True)
    try:
        for rank in range(args.parties):
            cluster.start_server(rank)
        cluster.start_dealer()
        _write_pids(directory, cluster)  # before waiting: `down` can clean up if we die
        _wait_healthy(cluster, args.timeout)
    except BaseException:
        cluster.stop()
        (directory / PIDS_FILE).unlink(missing_ok=True)
        print(
            f"start-up failed; stopped what was started. Logs: {directory / 'logs'}",
            file=sys.stderr,
        )
        raise
    flags = " --insecure" if args.insecure else ""
    pids = ", ".join(f"{name}={proc.pid}" for name, proc in cluster.processes.items())
    print(f"cluster of {args.parties} compute servers + dealer is SERVING ({pids})")
    print(f"config: {config_path}")
    print(f"logs:   {directory / 'logs'}")
    print("use it:")
    print(f"  ppml models share --config {config_path}{flags} --onnx model.onnx")
    print(f"  ppml predict --config {config_path}{flags} --model ID --input x.npy")
    print(f'  Python: ppml.client.Cluster.from_config("{config_path}")')
    for name in clients:
        token_file = directory / "secrets" / f"{name}.token"
        print(
            f"  as {name}: its token is in {token_file} (ppml fl join --token-file; Python: "
            f"Cluster.from_config(config, token=<that file's text>))"
        )
    print(f"stop it: ppml cluster down --dir {directory}")
    return 0


def cmd_cluster_down(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    recorded = _read_pids(directory)
    running = {n: p for n, p in recorded.items() if _is_running(p)}
    _signal_all(running.values(), signal.SIGTERM)
    _wait_gone(running.values(), STOP_GRACE_S)
    killed = [n for n, p in running.items() if _is_running(p)]
    _signal_all((running[n] for n in killed), signal.SIGKILL)
    _wait_gone(running.values(), 5.0)
    (directory / PIDS_FILE).unlink(missing_ok=True)
    if not running:
        print(f"no running cluster in {directory}")
    else:
        note = f" (SIGKILL after {STOP_GRACE_S:.0f}s: {', '.join(killed)})" if killed else ""
        print(f"stopped {', '.join(running)}{note}")
    return 0


def _status_row(rank: int, name: str, serving: bool, r: StatusReport | None) -> list[object]:
    stats = [r.mpc_epoch, r.requests_total, r.queue_depth, r.models_stored] if r else ["-"] * 4
    return [rank, name, "SERVING" if serving else "NOT_SERVING", *stats, r.last_error if r else ""]


def cmd_cluster_status(args: argparse.Namespace) -> int:
    monitor = load_config(args.config).monitor_token_file is not None
    error: PpmlClientError | None = None
    with _connect(args, monitor=monitor) as cluster:
        health = cluster.health()
        try:
            reports = {r.rank: r for r in cluster.status()}
        except PpmlClientError as exc:  # still show what health says, then the error
            reports, error = {}, exc
        rows = [
            _status_row(rank, name, health[name], reports.get(rank))
            for rank, name in enumerate(cluster.server_names)
        ]
    header = ["rank", "server", "health", "epoch", "requests", "queue", "models", "last error"]
    print(_table(header, rows))
    if error is not None:
        raise error
    return 0 if all(health.values()) else 1


def cmd_models_list(args: argparse.Namespace) -> int:
    with _connect(args) as cluster:
        listings = cluster.list_models()
    if not listings:
        print("no models")
        return 0
    rows = [
        [
            m.meta.model_id,
            m.meta.name or "-",
            m.meta.owner,
            m.meta.architecture.describe(),
            f"{m.meta.parameter_count:,}",
            "yes" if m.complete else f"no (only {', '.join(m.servers)})",
        ]
        for m in sorted(listings, key=lambda m: m.meta.created_unix_ms)
    ]
    print(_table(["id", "name", "owner", "architecture", "params", "complete"], rows))
    return 0


def cmd_models_share(args: argparse.Namespace) -> int:
    path = Path(args.onnx)
    if not path.is_file():
        raise CliError(f"ONNX file {path} does not exist")
    with _connect(args) as cluster:
        print(cluster.share_model(str(path), name=args.name or path.stem))
    return 0


def cmd_models_delete(args: argparse.Namespace) -> int:
    with _connect(args) as cluster:
        cluster.delete_model(args.id)
    print(f"deleted {args.id}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    x = _load_input(Path(args.input))
    with _connect(args) as cluster:
        output = cluster.predict(args.model, x).numpy()
    if args.output:
        np.save(args.output, output)
    flat = output.reshape(len(output), -1)
    rows = [[i, int(row.argmax()), " ".join(f"{v:.6f}" for v in row)] for i, row in enumerate(flat)]
    print(_table(["row", "argmax", "output"], rows))
    return 0


def dashboard_command(
    config: str, port: int, insecure: bool = False, address: str = "127.0.0.1"
) -> list[str]:
    """The ``streamlit run`` command line that serves the monitoring dashboard.

    It binds ``address``, loopback by default: the page has no login of its
    own, so put it behind a TLS-terminating, authenticating reverse proxy
    before binding anything else (docs in README, "Dashboard").
    """
    spec = importlib.util.find_spec("ppml.dashboard.app")
    if spec is None or spec.origin is None:
        raise CliError("the dashboard (ppml.dashboard.app) is not installed")
    app_args = ["--config", str(Path(config).resolve()), *(["--insecure"] if insecure else [])]
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        spec.origin,
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
        "--",
        *app_args,
    ]


def cmd_dashboard(args: argparse.Namespace) -> int:
    load_config(args.config)  # a bad topology file fails here, in one line
    command = dashboard_command(args.config, args.port, args.insecure, args.address)
    if args.address not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: the dashboard has no login and serves plain HTTP on {args.address}; "
            "put it behind an authenticating TLS proxy",
            file=sys.stderr,
        )
    print(f"ppml dashboard: http://{args.address}:{args.port}", flush=True)
    os.execv(command[0], command)
    return 0  # not reached


# ------------------------------------------------------------------ parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppml", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--config", required=True, help="topology file (cluster.toml)")
    client.add_argument("--insecure", action="store_true", help="connect without TLS")
    groups = parser.add_subparsers(dest="group", required=True)

    cluster = groups.add_parser("cluster", help="start, stop and inspect a cluster")
    sub = cluster.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a local cluster in the background")
    up.add_argument("--parties", type=int, default=2, help="compute servers (at least 2)")
    up.add_argument("--dir", required=True, help="folder for cluster.toml, TLS, tokens, logs")
    up.add_argument("--insecure", action="store_true", help="no TLS (tests only)")
    up.add_argument("--max-batch-rows", type=int, help="rows per MPC batch")
    up.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill")
    up.add_argument("--timeout", type=float, default=180.0, help="start-up timeout, seconds")
    up.add_argument(
        "--client",
        action="append",
        metavar="NAME",
        help="one more client identity (repeatable): its token goes to secrets/NAME.token",
    )
    up.set_defaults(func=cmd_cluster_up)
    down = sub.add_parser("down", help="stop the cluster started in --dir")
    down.add_argument("--dir", required=True)
    down.set_defaults(func=cmd_cluster_down)
    status = sub.add_parser("status", parents=[client], help="health and counters per server")
    status.set_defaults(func=cmd_cluster_status)

    models = groups.add_parser("models", help="list, share, export and delete secret-shared models")
    sub = models.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", parents=[client], help="models on the cluster")
    listing.set_defaults(func=cmd_models_list)
    share = sub.add_parser("share", parents=[client], help="secret-share an ONNX model")
    share.add_argument("--onnx", required=True, help="ONNX file")
    share.add_argument("--name", help="display name (default: the file name)")
    share.set_defaults(func=cmd_models_share)
    delete = sub.add_parser("delete", parents=[client], help="delete a model everywhere")
    delete.add_argument("id")
    delete.set_defaults(func=cmd_models_delete)
    models_sub = sub

    cli_data.register(groups, client)
    cli_training.register(groups, client, models_sub)
    cli_federation.register(groups, client)
    cli_deploy.register(groups)

    predict = groups.add_parser("predict", parents=[client], help="encrypted prediction")
    predict.add_argument("--model", required=True, help="model id")
    predict.add_argument("--input", required=True, help="rows as .npy or .csv")
    predict.add_argument("--output", help="also save the output as .npy")
    predict.set_defaults(func=cmd_predict)

    dashboard = groups.add_parser(
        "dashboard", parents=[client], help="monitoring web page (Streamlit, read-only token)"
    )
    dashboard.add_argument("--port", type=int, default=8501, help="HTTP port (default 8501)")
    dashboard.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to bind (default loopback only: the page has no login)",
    )
    dashboard.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        code = args.func(args)
    except (PpmlClientError, CliError, ValueError) as exc:  # ValueError: ConfigError, bad ONNX
        print(f"ppml: error: {' '.join(str(exc).split())}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

