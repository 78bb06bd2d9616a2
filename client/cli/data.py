"""``ppml data share/list/delete``: secret-shared data sets.

Registered on the one ``ppml`` parser by :func:`register` (see :mod:`ppml.client.cli`).
Data files are read and checked on this machine; only shares leave it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ppml.client.cli.common import CliError, connect, existing_file, table
from ppml.client.dataset_upload import as_dataset
from ppml.client.errors import PpmlClientError
from ppml.training.datasets import (
    BUILTINS,
    Dataset,
    DatasetError,
    load_builtin,
    load_csv,
    partition,
)
from ppml.training.loaders import load_har, load_mnist_idx

SCHEMES = ("iid", "label_skew", "quantity_skew")


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise CliError(f"{path} is not an .npz archive (np.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                found = ", ".join(archive.files) or "none"
                raise CliError(f"{path} has no array {missing[0]!r} (arrays: {found})")
            return archive["x"], archive["y"]
    except (OSError, ValueError) as exc:  # not a zip, or pickled object arrays
        raise CliError(f"cannot read {path} as .npz: {exc}") from None


def _load_csv(file: str, column: str) -> Dataset:
    label_column: int | str = int(column) if column.lstrip("-").isdigit() else column
    path = existing_file(file, "CSV file")
    try:
        return load_csv(path, label_column)
    except DatasetError as exc:  # name the file, not just its stem
        text = str(exc)
        if text.startswith(f"{path.stem}: "):
            raise DatasetError(f"{path}: {text.removeprefix(f'{path.stem}: ')}") from None
        raise


def load_rows(file: str, label_column: str = "-1") -> tuple[Dataset, tuple[int, ...]]:
    """A labelled data file as ``ppml data share`` reads it: ``.csv`` (numeric, one
    integer label column) or ``.npz`` (arrays x, y); checked here (NaN/inf, labels).

    Returns the data set (features flattened to 2-D) and the per-row feature shape.
    """
    suffix = Path(file).suffix.lower()
    if suffix not in (".csv", ".npz"):
        raise CliError(f"data file {file} must be a .csv or .npz file")
    try:
        if suffix == ".csv":
            return as_dataset(_load_csv(file, label_column))
        return as_dataset(*_load_npz(existing_file(file, "npz file")))
    except (OSError, csv.Error) as exc:
        raise CliError(f"cannot read the data: {exc}") from None


def _read_source(args: argparse.Namespace) -> tuple[Dataset | np.ndarray, np.ndarray | None]:
    """The data named on the command line: a checked Dataset, or npz arrays (x, y)."""
    try:
        if args.builtin:
            return load_builtin(args.builtin), None
        if args.csv:
            return _load_csv(args.csv, args.label_column), None
        if args.har:
            if not Path(args.har).is_dir():
                raise CliError(f"HAR folder {args.har} does not exist")
            return load_har(args.har, args.split)[0], None
        if args.mnist_images:
            if not args.mnist_labels:
                raise CliError("--mnist-images needs --mnist-labels")
            return load_mnist_idx(args.mnist_images, args.mnist_labels), None
        return _load_npz(existing_file(args.npz, "npz file"))
    except (OSError, csv.Error) as exc:
        raise CliError(f"cannot read the data: {exc}") from None


def cmd_data_share(args: argparse.Namespace) -> int:
    if args.har and not args.split:
        raise CliError("--har needs --split train|test")
    source, labels = _read_source(args)
    data, shape = as_dataset(source, labels)  # NaN/inf, label range: one line, exit 1
    name = args.name or data.name or (Path(args.npz).stem if args.npz else "")
    if args.partition is None:
        parts, names, ids = [data], [name], [args.id]
    else:
        parts = partition(data, args.partition, args.scheme, args.alpha, args.seed)
        names = [f"{name}-{i}" for i in range(len(parts))]
        ids = [f"{args.id}-{i}" if args.id else None for i in range(len(parts))]
    shared: list[str] = []
    with connect(args) as cluster:
        try:
            for part, part_name, part_id in zip(parts, names, ids, strict=True):
                dataset_id = cluster.share_dataset(
                    part.features.reshape(part.rows, *shape),
                    part.labels,
                    name=part_name,
                    num_classes=data.num_classes,  # every owner's part: the same classes
                    dataset_id=part_id,
                    allow=tuple(args.allow),
                    scaling=args.scaling,
                )
                shared.append(dataset_id)
                print(
                    f"shared {part_name or dataset_id}: {part.rows} rows, "
                    f"{'x'.join(map(str, shape))} features, {data.num_classes} classes",
                    file=sys.stderr,
                )
                print(dataset_id, flush=True)
        except (PpmlClientError, KeyboardInterrupt):
            for dataset_id in shared:  # all parts or none
                try:
                    cluster.delete_dataset(dataset_id)
                except PpmlClientError:
                    print(f"ppml: could not delete {dataset_id}", file=sys.stderr)
            raise
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    with connect(args) as cluster:
        listings = cluster.list_datasets()
    if not listings:
        print("no data sets")
        return 0
    rows = [
        [
            d.meta.dataset_id,
            d.meta.name or "-",
            d.meta.owner,
            d.meta.rows,
            "x".join(map(str, d.meta.feature_shape)),
            d.meta.num_classes,
            ",".join(d.meta.allowed) or "owner only",
            "yes" if d.complete else f"no (only {', '.join(d.servers)})",
        ]
        for d in sorted(listings, key=lambda d: d.meta.created_unix_ms)
    ]
    header = ["id", "name", "owner", "rows", "features", "classes", "allowed", "complete"]
    print(table(header, rows))
    return 0


def cmd_data_delete(args: argparse.Namespace) -> int:
    with connect(args) as cluster:
        cluster.delete_dataset(args.id)
    print(f"deleted {args.id}")
    return 0


# ------------------------------------------------------------------ train


def register(groups: Any, client: argparse.ArgumentParser) -> None:
    """Add ``ppml data`` to ``ppml``'s parser (``client``: the --config/--insecure parent)."""
    data = groups.add_parser("data", help="share, list and delete secret-shared data sets")
    sub = data.add_subparsers(dest="command", required=True)
    share = sub.add_parser("share", parents=[client], help="secret-share a labelled data set")
    source = share.add_mutually_exclusive_group(required=True)
    source.add_argument("--builtin", choices=BUILTINS, help="a scikit-learn data set")
    source.add_argument("--csv", help="numeric CSV with one integer label column")
    source.add_argument("--har", metavar="DIR", help="UCI HAR folder (with --split)")
    source.add_argument("--mnist-images", metavar="P", help="MNIST IDX images (with labels)")
    source.add_argument("--npz", help=".npz with arrays x (features) and y (labels)")
    share.add_argument("--label-column", default="-1", help="CSV label column: index or name")
    share.add_argument("--split", choices=("train", "test"), help="HAR split")
    share.add_argument("--mnist-labels", metavar="P", help="MNIST IDX labels")
    share.add_argument("--name", help="display name (default: the data set's)")
    share.add_argument("--id", help="data set id (default: random; ID-0.. with --partition)")
    share.add_argument(
        "--allow", nargs="+", default=["*"], metavar="ID", help="who may use it (default: *)"
    )
    share.add_argument("--scaling", default="", help="public note on scaling you applied")
    share.add_argument("--partition", type=int, metavar="K", help="split across K owners")
    share.add_argument("--scheme", choices=SCHEMES, default="iid", help="how to split")
    share.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha of skews")
    share.add_argument("--seed", type=int, default=0, help="seed of the split")
    share.set_defaults(func=cmd_data_share)
    listing = sub.add_parser("list", parents=[client], help="data sets on the cluster")
    listing.set_defaults(func=cmd_data_list)
    delete = sub.add_parser("delete", parents=[client], help="delete a data set (owner only)")
    delete.add_argument("id")
    delete.set_defaults(func=cmd_data_delete)
