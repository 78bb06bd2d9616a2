"""``ppml train``, ``jobs``, ``evaluate`` and ``models export``: secret-shared training.

Registered on the one ``ppml`` parser by :func:`register` (see :mod:`ppml.client.cli`).
A training job runs on the servers: ``ppml train`` follows it with a progress
bar, and Ctrl-C stops the watching, never the job.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from ppml.client.cli.common import CliError, connect, existing_file, table
from ppml.client.cluster import Cluster
from ppml.client.errors import PpmlClientError
from ppml.client.training_job import Progress, TrainingJob
from ppml.proto.domain.jobs import DP_DEFAULT_DELTA, LOSSES, OPTIMIZERS, JobInfo
from ppml.training.privacy import SecureRandom

SCHEMES = ("iid", "label_skew", "quantity_skew")
PLAIN_EVERY_S = 5.0  # progress lines when stderr is not a terminal
BAR_WIDTH = 24

# ------------------------------------------------------------------ data


def mlp(sizes: str) -> nn.Sequential:
    """``"64,32,10"`` -> Linear(64, 32), ReLU, Linear(32, 10), initial weights from the OS CSPRNG.

    Every weight and bias is uniform on ``[-1/sqrt(fan_in), 1/sqrt(fan_in))`` (torch's
    default for ``Linear``), drawn by :class:`~ppml.training.privacy.SecureRandom`. No
    seed reaches them: weights from a torch generator seeded with ``--seed`` could be recomputed
    by any server that knows or guesses the seed, and the weights are secret from the start.
    """
    try:
        widths = [int(v) for v in sizes.split(",")]
    except ValueError:
        raise CliError(f"--mlp {sizes!r}: expected comma-separated layer sizes") from None
    if len(widths) < 2 or min(widths) < 1:
        raise CliError(f"--mlp {sizes!r}: need at least input and output sizes, all >= 1")
    layers: list[nn.Module] = []
    rng = SecureRandom()
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        layers += [nn.ReLU()] if i else []
        linear = nn.Linear(fan_in, fan_out)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():  # torch's own draws above are replaced, every one of them
            for parameter in (linear.weight, linear.bias):
                uniform = rng.random(parameter.numel()) * 2.0 - 1.0
                parameter.copy_(torch.from_numpy(uniform * bound).reshape(parameter.shape))
        layers.append(linear)
    return nn.Sequential(*layers)


def _progress_text(event: Progress, epochs: int, loss: float | None, acc: float | None) -> str:
    if event.state == "queued" or not event.steps_total:
        return f"{event.state}..."
    fraction = min(1.0, event.steps_done / event.steps_total)
    per_epoch = max(1, event.steps_total // max(1, epochs))
    epoch = event.epoch or min(epochs, event.steps_done // per_epoch + 1)
    batch = event.batch or event.steps_done - (epoch - 1) * per_epoch
    filled = round(fraction * BAR_WIDTH)
    parts = [
        f"epoch {epoch}/{epochs} batch {batch}/{per_epoch}",
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}",
        f"{event.samples_per_s:.1f} samples/s",
    ]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if acc is not None:
        parts.append(f"accuracy {acc:.3f}")
    if event.finished:
        parts.append(event.state)
    return "  ".join(parts)


def follow(job: TrainingJob, epochs: int, out: TextIO | None = None) -> Progress | None:
    """Show ``job``'s progress on ``out`` until it ends; returns the last event seen.

    On a terminal, one line rewritten with ``\\r``; otherwise plain lines, at
    most one every few seconds plus one per state change and revealed metric.
    """
    out = out or sys.stderr
    tty = out.isatty()
    loss = acc = None
    last: Progress | None = None
    width, printed_at = 0, 0.0
    try:
        for event in job.progress():
            loss = event.loss if event.loss is not None else loss
            acc = event.accuracy if event.accuracy is not None else acc
            text = _progress_text(event, epochs, loss, acc)
            if tty:
                out.write("\r" + text.ljust(width))
                width = max(width, len(text))
            elif (
                last is None
                or event.state != last.state
                or event.loss is not None
                or time.monotonic() - printed_at >= PLAIN_EVERY_S
            ):
                out.write(text + "\n")
                printed_at = time.monotonic()
            out.flush()
            last = event
    finally:
        if tty and width:
            out.write("\n")
            out.flush()
    return last


def initial_model(args: argparse.Namespace) -> tuple[nn.Module | str, torch.Tensor | None]:
    """The model ``ppml train`` starts from (``--onnx`` or ``--mlp``) and a sample input."""
    if args.onnx:
        return str(existing_file(args.onnx, "ONNX file")), None
    # Its input width is known: the servers, not a lookup here, check the data sets.
    return mlp(args.mlp), torch.zeros(1, int(args.mlp.split(",")[0]))  # --seed plays no part


def cmd_train(args: argparse.Namespace) -> int:
    model, sample = initial_model(args)
    flags = f"--config {args.config}" + (" --insecure" if args.insecure else "")
    with connect(args) as cluster:
        job = cluster.train(
            model,
            args.datasets,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            loss=args.loss,
            optimizer=args.optimizer,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            validation=args.validation,
            reveal_metrics=args.reveal_metrics,
            standardize=args.standardize,
            seed=None if args.dp_clip_norm else args.seed,  # DP-SGD: secret batches
            name=args.name or "",
            model_id=args.model_id,
            sample_input=sample,
            dp_clip_norm=args.dp_clip_norm,
            dp_noise_multiplier=args.dp_noise_multiplier,
            dp_target_epsilon=args.dp_target_epsilon,
            dp_delta=args.dp_delta,
        )
        if args.detach:
            print(job.job_id)
            print(f"follow it: ppml jobs show {job.job_id} {flags}", file=sys.stderr)
            return 0
        print(f"job {job.job_id} started (model {job.model_id})", file=sys.stderr)
        try:
            try:
                follow(job, args.epochs)
            except PpmlClientError as exc:  # lost the stream: the job may still be fine
                print(f"ppml: progress stream lost ({exc}); waiting", file=sys.stderr)
            model_id = job.result()  # raises TrainingFailed / TrainingCancelled: exit 1
        except KeyboardInterrupt:
            print(
                f"\nstopped watching; job {job.job_id} keeps running on the servers.\n"
                f"  status: ppml jobs show {job.job_id} {flags}\n"
                f"  cancel: ppml jobs cancel {job.job_id} {flags}",
                file=sys.stderr,
            )
            return 130
    print(model_id)
    return 0


# ------------------------------------------------------------------ jobs


def _job(cluster: Cluster, job_id: str) -> TrainingJob:
    # A model id up front skips Cluster.job's own lookup on one server (whose
    # raw gRPC error would not be one line); status() asks every server.
    return cluster.job(job_id, model_id="-")


def _when(unix_ms: int) -> str:
    if not unix_ms:
        return "-"
    return datetime.fromtimestamp(unix_ms / 1000).isoformat(sep=" ", timespec="seconds")


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with connect(args) as cluster:
        infos = cluster.list_jobs()
    if not infos:
        print("no jobs")
        return 0
    rows = [
        [
            i.job_id,
            i.name or "-",
            i.owner,
            i.state.value,
            f"{i.steps_done}/{i.steps_total}",
            f"{i.samples_per_s:.1f}",
            i.model_id,
        ]
        for i in infos
    ]
    header = ["id", "name", "owner", "state", "progress", "samples/s", "model"]
    print(table(header, rows))
    return 0


def _dp_text(info: JobInfo) -> str:
    spec = info.spec
    if not spec.dp:
        return "off"
    return (
        f"clip {spec.dp_clip_norm:g}, noise multiplier {info.dp_noise_multiplier:.4g}, "
        f"epsilon {info.dp_epsilon:.4g} at delta {spec.dp_delta or DP_DEFAULT_DELTA:g}"
    )


def _details(info: JobInfo, states: dict[str, str]) -> list[tuple[str, object]]:
    spec = info.spec
    training = (
        f"{spec.epochs} epoch{'s' if spec.epochs != 1 else ''}, batch {spec.batch_size}, "
        f"{spec.optimizer} lr {spec.lr:g}, "
        f"momentum {spec.momentum:g}, weight decay {spec.weight_decay:g}, loss {spec.loss}"
    )
    options = f"standardize={spec.standardize} reveal_metrics={spec.reveal_metrics}"
    progress = (
        f"{info.steps_done}/{info.steps_total} steps, {info.samples_done} samples, "
        f"{info.samples_per_s:.1f} samples/s"
    )
    return [
        ("job", info.job_id),
        ("name", info.name or "-"),
        ("owner", info.owner),
        ("state", info.state.value + (f" ({info.reason})" if info.reason else "")),
        ("servers", ", ".join(f"{name}={state}" for name, state in states.items())),
        ("model", info.model_id),
        ("architecture", info.architecture.describe()),
        ("datasets", f"{', '.join(spec.dataset_ids)} ({info.rows} rows)"),
        ("validation", spec.validation_id or "-"),
        ("training", training),
        ("options", f"{options} seed={'secret (DP-SGD)' if spec.dp else spec.seed}"),
        ("progress", progress),
        ("dp-sgd", _dp_text(info)),
        ("created", _when(info.created_unix_ms)),
        ("started", _when(info.started_unix_ms)),
        ("finished", _when(info.finished_unix_ms)),
    ]


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with connect(args) as cluster:
        job = _job(cluster, args.id)
        status = job.status()
        metrics = job.metrics() if status.info.spec.reveal_metrics else []
    for key, value in _details(status.info, status.states):
        print(f"{key + ':':<14}{value}")
    if metrics:
        print("metrics (reconstructed here; visible to the owner only):")
        rows = [
            [m.epoch, f"{m.loss:.4f}", "-" if m.accuracy is None else f"{m.accuracy:.4f}"]
            for m in metrics
        ]
        print(table(["epoch", "loss", "val accuracy"], rows))
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with connect(args) as cluster:
        job = _job(cluster, args.id)
        before = job.status().state
        if before in ("succeeded", "failed", "cancelled"):
            raise CliError(f"job {args.id} already {before}; nothing to cancel")
        after = job.cancel().state
    if after != "cancelled":  # it ended on its own meanwhile
        raise CliError(f"job {args.id} {after} before it could be cancelled")
    print(f"cancelled {args.id}")
    return 0


# ------------------------------------------------------------------ models


def cmd_models_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.parent.is_dir():
        raise CliError(f"folder {out.parent} does not exist")
    with connect(args) as cluster:
        exported = cluster.export_model(args.id)
    try:
        torch.save(exported.weights, out)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc}") from None
    print(f"wrote {out}: {exported.meta.architecture.describe()}, {len(exported.weights)} tensors")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    with connect(args) as cluster:
        result = cluster.evaluate(args.model, args.dataset)
    print(f"accuracy {result.accuracy:.4f} ({result.correct}/{result.rows} rows correct)")
    return 0


# ------------------------------------------------------------------ parser


def _train_parser(groups: Any, client: argparse.ArgumentParser) -> None:
    train = groups.add_parser("train", parents=[client], help="train a model in MPC")
    train.add_argument("--datasets", nargs="+", required=True, metavar="ID")
    model = train.add_mutually_exclusive_group(required=True)
    model.add_argument("--onnx", help="initial model as an ONNX file")
    model.add_argument("--mlp", metavar="SIZES", help="Linear/ReLU MLP, e.g. 64,32,10")
    train.add_argument("--epochs", type=int, required=True)
    train.add_argument("--batch-size", type=int, required=True)
    train.add_argument("--lr", type=float, required=True, help="learning rate")
    train.add_argument("--loss", choices=LOSSES, default="cross_entropy")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    train.add_argument("--momentum", type=float, default=0.0)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--validation", metavar="ID", help="data set for per-epoch accuracy")
    train.add_argument(
        "--reveal-metrics", action="store_true", help="show loss/accuracy (to you only)"
    )
    train.add_argument("--standardize", action="store_true", help="standardize features in MPC")
    dp = train.add_argument_group("DP-SGD (on with --dp-clip-norm > 0)")
    dp.add_argument("--dp-clip-norm", type=float, default=0.0, help="per-example L2 bound")
    dp.add_argument("--dp-noise-multiplier", type=float, help="noise std / clip norm")
    dp.add_argument("--dp-target-epsilon", type=float, default=0.0, help="calibrate the noise")
    dp.add_argument("--dp-delta", type=float, default=0.0, help="default 1e-5")
    train.add_argument(
        "--seed",
        type=int,
        help="batch order (not DP-SGD's: secret); --mlp initial weights are always secret",
    )
    train.add_argument("--name", help="job and model display name")
    train.add_argument("--model-id", help="id of the trained model (default: JOB-model)")
    train.add_argument("--detach", action="store_true", help="print the job id and return")
    train.set_defaults(func=cmd_train)


def register(groups: Any, client: argparse.ArgumentParser, models: Any) -> None:
    """Add the training commands to ``ppml``'s parser.

    ``groups``: the top-level subparsers; ``client``: the parent parser with
    ``--config``/``--insecure``; ``models``: the ``ppml models`` subparsers.
    """
    _train_parser(groups, client)

    jobs = groups.add_parser("jobs", help="list, inspect and cancel training jobs")
    sub = jobs.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", parents=[client], help="training jobs on the cluster")
    listing.set_defaults(func=cmd_jobs_list)
    show = sub.add_parser("show", parents=[client], help="one job, per-server states, metrics")
    show.add_argument("id")
    show.set_defaults(func=cmd_jobs_show)
    cancel = sub.add_parser("cancel", parents=[client], help="stop a running job everywhere")
    cancel.add_argument("id")
    cancel.set_defaults(func=cmd_jobs_cancel)

    export = models.add_parser(
        "export", parents=[client], help="reconstruct a model's weights here (owner only)"
    )
    export.add_argument("id")
    export.add_argument("--out", required=True, help="file for torch.save of the state dict")
    export.set_defaults(func=cmd_models_export)

    evaluate = groups.add_parser(
        "evaluate", parents=[client], help="accuracy of a model on a shared data set"
    )
    evaluate.add_argument("--model", required=True, help="model id")
    evaluate.add_argument("--dataset", required=True, help="data set id")
    evaluate.set_defaults(func=cmd_evaluate)
