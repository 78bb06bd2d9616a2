"""``ppml deploy``: provision a multi-host cluster and check its links.

Examples::

    # trust set-up (a): one operator makes every key, then ships each bundle to its host
    ppml deploy init --out ./bundles \\
        --party hospital-a=10.0.0.1:50051:29500:9100 --party hospital-b=10.0.0.2:50051:29500 \\
        --dealer dealer=10.0.0.3:29600 --client analyst --monitor ops

    # three servers and no dealer: the replicated engine (engine = "replicated")
    ppml deploy init --out ./bundles --party a=10.0.0.1:50051:29500 \
        --party b=10.0.0.2:50051:29500 --party c=10.0.0.3:50051:29500 --client analyst

    # trust set-up (b): each organisation keeps its key; the CA operator only signs
    ppml deploy csr --name hospital-b --host 10.0.0.2 --out ./mykey     # at hospital-b
    ppml deploy init --out ./bundles ... --csr hospital-b=hospital-b.csr # at the CA operator
    ppml deploy sign --ca ./bundles/ca --csr hospital-b.csr --out hospital-b.pem  # re-issue

    # on each host, before starting it: every link it opens, as itself
    ppml deploy check --config cluster.toml --as hospital-b

Operator's guide: docs/deploy.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ppml.client.cli.common import CliError, existing_file, table
from ppml.client.deploy.check import DEFAULT_TIMEOUT_S, check
from ppml.client.deploy.provision import Plan, parse_dealer, parse_party, provision
from ppml.proto.deploy.tls import TlsFiles, make_csr, sign_csr
from ppml.proto.deploy.topology import load_config


def _csr_args(values: list[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            raise CliError(f"--csr {value!r}: expected NAME=FILE")
        out[name] = existing_file(path, "CSR").read_bytes()
    return out


def cmd_init(args: argparse.Namespace) -> int:
    plan = Plan(
        parties=tuple(parse_party(spec) for spec in args.party),
        dealer=parse_dealer(args.dealer) if args.dealer else None,
        clients=tuple(args.client),
        monitors=tuple(args.monitor),
        cluster_name=args.name,
    )
    out = Path(args.out)
    bundles = provision(out, plan, _csr_args(args.csr))
    rows: list[list[object]] = []
    for rank, party in enumerate(plan.parties):
        rows.append([party.name, f"server, rank {rank}", party.host, bundles.hosts[party.name]])
    if plan.dealer is not None:
        dealer = plan.dealer
        rows.append([dealer.name, "dealer", dealer.host, bundles.hosts[dealer.name]])
    for name, path in bundles.clients.items():
        rows.append([name, "monitor" if name in plan.monitors else "client", "-", path])
    print(table(["name", "role", "host", "bundle"], rows))
    print(f"\nCA key: {bundles.ca.key} (keep it offline; it is in no bundle)")
    print("Copy each bundle to its host only; see BUNDLE.txt in each and docs/deploy.md.")
    return 0


def cmd_csr(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / f"{args.name}.key").exists():
        raise CliError(f"{out / (args.name + '.key')} exists: refusing to replace a key")
    files = make_csr(out, args.name, list(args.host))
    print(f"key: {files.key} (stays here)\nCSR: {files.cert} (send this to the CA operator)")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    ca_dir = Path(args.ca)
    ca = TlsFiles(
        existing_file(str(ca_dir / "ca.pem"), "CA certificate"),
        existing_file(str(ca_dir / "ca.key"), "CA key"),
    )
    csr = existing_file(args.csr, "CSR").read_bytes()
    info = sign_csr(ca, csr, Path(args.out), expect_name=args.name)
    print(f"signed {info.name} for {', '.join(info.hosts)}: {args.out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    reports = check(config, args.as_name, args.timeout)
    if not reports:
        print(f"{args.as_name} opens no links (rank 0 of a one-way mesh?)")
        return 0

    def mark(flag: bool) -> str:
        return "yes" if flag else "NO"

    rows = [
        [
            r.link.kind,
            r.link.peer,
            r.link.address,
            mark(r.reachable),
            mark(r.tls_ok),
            mark(r.identity_ok),
            r.detail,
        ]
        for r in reports
    ]
    print(table(["link", "peer", "address", "reachable", "tls", "identity", "detail"], rows))
    failed = [r for r in reports if not r.ok]
    print(f"\n{len(reports) - len(failed)}/{len(reports)} links ok")
    return 1 if failed else 0


def register(groups: Any) -> None:
    """Add ``ppml deploy ...`` to the top-level parser's sub-commands."""
    deploy = groups.add_parser("deploy", help="provision a multi-host cluster, check its links")
    sub = deploy.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="CA and one bundle folder per host")
    init.add_argument("--out", required=True, help="new folder for ca/ and the bundles")
    init.add_argument(
        "--party",
        action="append",
        required=True,
        metavar="NAME=HOST:GRPC_PORT:MPC_PORT[:METRICS_PORT]",
        help="a compute server, in rank order (the first leads); at least two",
    )
    init.add_argument(
        "--dealer",
        metavar="NAME=HOST:MPC_PORT",
        help="the dealer; leave it out for three servers on the replicated engine (no dealer)",
    )
    init.add_argument("--client", action="append", default=[], metavar="NAME")
    init.add_argument(
        "--monitor",
        action="append",
        default=[],
        metavar="NAME",
        help="a read-only identity (the dashboard)",
    )
    init.add_argument(
        "--csr",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="sign this CSR for NAME instead of making its key (set-up (b))",
    )
    init.add_argument("--name", default="ppml", help="cluster name")
    init.set_defaults(func=cmd_init)
    csr = sub.add_parser("csr", help="make this organisation's key and a signing request")
    csr.add_argument("--name", required=True, help="the process name in cluster.toml")
    csr.add_argument(
        "--host", required=True, action="append", help="DNS name or IP others dial (repeatable)"
    )
    csr.add_argument("--out", required=True, help="folder for NAME.key and NAME.csr")
    csr.set_defaults(func=cmd_csr)
    sign = sub.add_parser("sign", help="sign a CSR with the cluster CA")
    sign.add_argument("--ca", required=True, help="the CA folder (ca.pem, ca.key)")
    sign.add_argument("--csr", required=True)
    sign.add_argument("--out", required=True, help="the certificate to write")
    sign.add_argument("--name", help="refuse a CSR for any other process name")
    sign.set_defaults(func=cmd_sign)
    chk = sub.add_parser("check", help="probe every link this host opens, as itself")
    chk.add_argument("--config", required=True, help="this host's cluster.toml")
    chk.add_argument(
        "--as",
        dest="as_name",
        required=True,
        help="this host's process name (a client: any other name)",
    )
    chk.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per connection"
    )
    chk.set_defaults(func=cmd_check)
