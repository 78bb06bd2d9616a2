"""``ppml fl create|join|status``: federated learning from the command line.

Registered on the one ``ppml`` parser by :func:`register` (see :mod:`ppml.client.cli`).
The owner creates a federation from an ONNX model and invites identities;
each participant joins from its own machine with its own token and data
file, whose rows never leave that machine (only shares of each update, or
CKKS ciphertexts, do). ``status`` lists federations or shows one's rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from torch import nn

from ppml.client.cli.common import CliError, connect, existing_file, read_token, table
from ppml.client.cli.data import load_rows
from ppml.client.cli.federation_text import (
    NONE,
    ROUND_HEADER,
    describe_epsilon,
    describe_state,
    details,
    round_of,
    round_row,
)
from ppml.client.cluster import Cluster
from ppml.client.federation import Federation, RoundProgress, TrainFn, data_trainer, merge_round
from ppml.proto.domain import federations as fed
from ppml.proto.domain.jobs import LOSSES
from ppml.training import ckks

# ------------------------------------------------------------------ create


def _dp_settings(args: argparse.Namespace) -> fed.DpSettings:
    noise, target = args.dp_noise_multiplier, args.dp_target_epsilon
    if args.dp_clip is None:
        if noise is not None or target is not None or args.dp_budget is not None:
            raise CliError("DP settings need --dp-clip (the L2 bound of each update)")
        return fed.DpSettings()
    if noise is None and target is None:
        raise CliError("--dp-clip needs --dp-noise-multiplier or --dp-target-epsilon")
    return fed.DpSettings(
        clip_norm=args.dp_clip,
        noise_multiplier=noise or 0.0,
        target_epsilon=target or 0.0,
        delta=args.dp_delta,
        epsilon_budget=args.dp_budget or 0.0,
    )


def _participants(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise CliError("--participants: give the invited identities, comma-separated")
    return names


def _write_context(directory: str, federation_id: str, context: bytes) -> Path:
    """The participants' CKKS context (it holds the secret key), readable by its owner only."""
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{federation_id}.ckks-context"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path} exists; not overwriting a key file") from None
    os.fchmod(fd, 0o600)  # whatever the umask
    with os.fdopen(fd, "wb") as handle:
        handle.write(context)
    return path


def cmd_fl_create(args: argparse.Namespace) -> int:
    model = str(existing_file(args.model, "ONNX file"))
    participants = _participants(args.participants)
    dp = _dp_settings(args)
    if (args.backend == "ckks") != (args.ckks_keys_out is not None):
        raise CliError(
            "--ckks-keys-out DIR is needed with --backend ckks (the participants' key file "
            "goes there), and only then"
        )
    federation_id = args.id or uuid.uuid4().hex[:16]
    keys = context_file = None
    if args.backend == "ckks":
        keys = ckks.key_ceremony()
        context_file = _write_context(args.ckks_keys_out, federation_id, keys.participant_context)
    try:
        with connect(args) as cluster:
            handle = cluster.create_federation(
                model,
                participants,
                rounds=args.rounds,
                local_epochs=args.local_epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                strategy=args.strategy,
                mu=args.mu,
                min_participants=args.min_participants,
                round_deadline_s=args.round_deadline_s,
                backend=args.backend,
                dp=dp,
                loss=args.loss,
                name=args.name or "",
                model_id=args.model_id,
                federation_id=federation_id,
                ckks_keys=keys,
            )
    except BaseException:
        if context_file is not None:  # no federation: its key must not linger
            context_file.unlink(missing_ok=True)
        raise
    flags = f"--config {args.config}" + (" --insecure" if args.insecure else "")
    join = f"ppml fl join {handle.federation_id} {flags} --token-file TOKEN --data rows.csv"
    if context_file is not None:
        print(
            f"wrote the participants' CKKS context to {context_file} (mode 0600). It holds the "
            "secret key: hand it to each participant over a channel of your own, never through "
            "the cluster, and keep it: only it decrypts the final model.",
            file=sys.stderr,
        )
        join += f" --ckks-context {context_file.name}"
    print(f"participants join with: {join}", file=sys.stderr)
    print(f"follow it: ppml fl status {handle.federation_id} {flags}", file=sys.stderr)
    print(handle.federation_id)
    return 0


# ------------------------------------------------------------------ join


class _Progress:
    """Prints this participant's rounds and each round as the servers close it."""

    def __init__(self, handle: Federation, rounds: int) -> None:
        self._handle = handle
        self._rounds = rounds
        self.closed: list[RoundProgress] = []

    def catch_up(self) -> None:
        for r in self._handle.rounds()[len(self.closed) :]:
            dropped = f", dropped {', '.join(r.dropped)}" if r.dropped else ""
            applied = "applied" if r.applied else f"not applied ({r.reason or 'no update'})"
            print(
                f"round {r.round} closed: {len(r.participants)} participant"
                f"{'s' if len(r.participants) != 1 else ''}{dropped}, {applied}, "
                f"epsilon {r.epsilon:.3f}",
                file=sys.stderr,
                flush=True,
            )
            self.closed.append(r)

    def wrap(self, train: TrainFn, rows: int) -> TrainFn:
        def reported(model: nn.Module, round_no: int) -> tuple[nn.Module, int, float | None]:
            self.catch_up()
            print(
                f"round {round_no}/{self._rounds}: training locally on {rows} rows",
                file=sys.stderr,
                flush=True,
            )
            trained, used, loss = train(model, round_no)
            text = NONE if loss is None else f"{loss:.4f}"
            print(f"round {round_no}: local loss {text}; update sent", file=sys.stderr, flush=True)
            return trained, used, loss

        return reported


def _check_data(info: fed.FederationInfo, shape: tuple[int, ...], classes: int) -> None:
    architecture = info.architecture
    if tuple(architecture.input_shape) != shape:
        raise CliError(
            f"the data's rows have shape {'x'.join(map(str, shape))}, the model expects "
            f"{'x'.join(map(str, architecture.input_shape))}"
        )
    outputs = int(architecture.output_shape[0])
    if classes > outputs:
        raise CliError(f"the data has {classes} classes, the model only {outputs} outputs")


def _context(args: argparse.Namespace, info: fed.FederationInfo) -> bytes | None:
    if info.spec.backend != "ckks":
        if args.ckks_context:
            raise CliError(f"federation {info.federation_id} uses MPC: drop --ckks-context")
        return None
    if not args.ckks_context:
        raise CliError(
            f"federation {info.federation_id} uses the CKKS back end: pass --ckks-context FILE "
            "(the key file its creator handed you)"
        )
    try:
        context = existing_file(args.ckks_context, "CKKS context file").read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.ckks_context}: {exc}") from None
    ckks.load_context(context)  # a wrong file fails here (CkksError), before any training
    return context


def cmd_fl_join(args: argparse.Namespace) -> int:
    data, shape = load_rows(args.data, args.label_column)
    token = read_token(args.token_file) if args.token_file else None
    with connect(args, token=token) as cluster:
        handle = cluster.federation(args.id)
        info = handle.info()
        _check_data(info, shape, data.num_classes)
        context = _context(args, info)
        classes = int(info.architecture.output_shape[0])
        features = data.features.reshape(data.rows, *shape)
        train = data_trainer(features, data.labels, info.spec, classes, args.seed)
        progress = _Progress(handle, info.spec.rounds)
        print(
            f"joined federation {args.id} ({info.spec.backend}, {info.spec.rounds} rounds) "
            f"with {data.rows} rows; they stay on this machine",
            file=sys.stderr,
        )
        try:
            report = cluster.join_federation(
                args.id,
                progress.wrap(train, data.rows),
                ckks_context=context,
                max_rounds=args.max_rounds,
            )
        except KeyboardInterrupt:
            print(
                f"\nleft federation {args.id}; its rounds close without this participant",
                file=sys.stderr,
            )
            return 130
        progress.catch_up()
        final = handle.info()
    rounds = ", ".join(map(str, report.submitted)) or "none"
    print(f"federation {args.id} {report.state}: submitted to rounds {rounds}")
    if report.reason:
        print(f"reason: {report.reason}")
    print(f"epsilon: {describe_epsilon(final)}")
    if progress.closed:
        print(table(ROUND_HEADER, [round_row(r) for r in progress.closed]))
    return 1 if report.state in ("failed", "cancelled") else 0


# ------------------------------------------------------------------ status


def _list(cluster: Cluster) -> int:
    infos = cluster.list_federations()
    if not infos:
        print("no federations")
        return 0
    rows = [
        [
            i.federation_id,
            i.name or NONE,
            i.owner,
            describe_state(i),
            round_of(i),
            i.spec.backend,
            f"{len(i.spec.participants)} (min {i.spec.min_participants})",
            describe_epsilon(i),
        ]
        for i in infos
    ]
    header = ["id", "name", "owner", "state", "round", "backend", "participants", "epsilon"]
    print(table(header, rows))
    return 0


def _show(cluster: Cluster, federation_id: str) -> int:
    infos = cluster.federation(federation_id).infos()
    info = infos[0]
    for key, value in details(info):
        print(f"{key + ':':<14}{value}")
    rounds = [merge_round(list(rs)) for rs in zip(*(i.results for i in infos), strict=False)]
    if not rounds:
        print("no round closed yet")
        return 0
    note = "" if any(r.mean_loss is not None for r in rounds) else " (mean loss: owner only)"
    print(f"rounds{note}:")
    print(table(ROUND_HEADER, [round_row(r) for r in rounds]))
    return 0


def cmd_fl_status(args: argparse.Namespace) -> int:
    token = read_token(args.token_file) if args.token_file else None
    with connect(args, token=token) as cluster:
        return _show(cluster, args.id) if args.id else _list(cluster)


# ------------------------------------------------------------------ parser


def _create_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    create = sub.add_parser("create", parents=[client], help="start a federation (owner)")
    create.add_argument("--model", required=True, help="initial model as an ONNX file")
    create.add_argument(
        "--participants", required=True, metavar="A,B,..", help="invited identities"
    )
    create.add_argument("--rounds", type=int, required=True)
    create.add_argument("--local-epochs", type=int, default=1)
    create.add_argument("--batch-size", type=int, default=32)
    create.add_argument("--lr", type=float, default=0.1, help="local learning rate")
    create.add_argument("--strategy", choices=fed.STRATEGIES, default="fedavg")
    create.add_argument("--mu", type=float, default=0.0, help="FedProx proximal weight")
    create.add_argument("--min-participants", type=int, help="fewest a round closes with")
    create.add_argument("--round-deadline-s", type=float, default=300.0)
    create.add_argument("--backend", choices=fed.BACKENDS, default="mpc")
    create.add_argument("--loss", choices=LOSSES, default="cross_entropy")
    dp = create.add_argument_group("client-level DP (MPC back end)")
    dp.add_argument("--dp-clip", type=float, metavar="C", help="L2 bound of each update")
    noise = dp.add_mutually_exclusive_group()
    noise.add_argument("--dp-noise-multiplier", type=float, metavar="Z")
    noise.add_argument(
        "--dp-target-epsilon", type=float, metavar="E", help="calibrate the noise for it"
    )
    dp.add_argument("--dp-delta", type=float, default=1e-5, metavar="D")
    dp.add_argument("--dp-budget", type=float, metavar="B", help="stop once epsilon exceeds it")
    create.add_argument("--id", help="federation id (default: random)")
    create.add_argument("--model-id", help="id of the trained model (default: ID-model)")
    create.add_argument("--name", help="display name")
    create.add_argument(
        "--ckks-keys-out", metavar="DIR", help="CKKS: folder for the participants' key file"
    )
    create.set_defaults(func=cmd_fl_create)


def register(groups: Any, client: argparse.ArgumentParser) -> None:
    """Add ``ppml fl`` to ``ppml``'s parser (``client``: the --config/--insecure parent)."""
    identity = argparse.ArgumentParser(add_help=False)
    identity.add_argument(
        "--token-file", help="act as this token's identity (default: the config's client token)"
    )
    fl = groups.add_parser("fl", help="federated learning: create, join, status")
    sub = fl.add_subparsers(dest="command", required=True)
    _create_parser(sub, client)

    join = sub.add_parser(
        "join", parents=[client, identity], help="train in a federation with local data"
    )
    join.add_argument("id", metavar="FEDERATION_ID")
    join.add_argument("--data", required=True, help=".csv (with a label column) or .npz (x, y)")
    join.add_argument("--label-column", default="-1", help="CSV label column: index or name")
    join.add_argument("--ckks-context", metavar="FILE", help="CKKS: the key file from the owner")
    join.add_argument("--max-rounds", type=int, metavar="N", help="leave after N submissions")
    join.add_argument("--seed", type=int, default=0, help="local shuffling")
    join.set_defaults(func=cmd_fl_join)

    status = sub.add_parser(
        "status", parents=[client, identity], help="federations, or one federation's rounds"
    )
    status.add_argument("id", nargs="?", metavar="FEDERATION_ID")
    status.set_defaults(func=cmd_fl_status)
