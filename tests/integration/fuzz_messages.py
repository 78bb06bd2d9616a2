"""Hypothesis strategies for the RPC fuzz test: adversarial ``ppml.v1`` requests.

Most start from a request the servers accept (about the records made before
fuzzing, :class:`Held`) and break a few of its fields at a time, so that every
layer of validation is reached, not only the first; the architectures, share
tensors and control-link messages can also be built from scratch. Besides:
every string field of every client RPC (:func:`client_string_fields`, walked
from the descriptors), CKKS encrypted updates with broken chunks
(:func:`encrypted_update_garbage`) and federation updates with broken shares
(:func:`submit_update_requests`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fuzz_values import (
    EDGE_SHAPES,
    doubles,
    faulty,
    fresh_id,
    ids,
    int64s,
    known_ids,
    new_ids,
    texts,
    uint32s,
    uint64s,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from ppml.proto.errors import PpmlError
from ppml.proto.wire import serde
from ppml.training import ckks
from ppml.v1 import (
    common_pb2,
    coordinator_pb2,
    datasets_pb2,
    federation_pb2,
    inference_pb2,
    registry_pb2,
    training_pb2,
)


@dataclass(repr=False)
class Held:
    """What the cluster holds: the records made before fuzzing, then those fuzzing added.

    The lists grow as servers accept new records; strategies pick from them by index.
    """

    model: str  # a model on every server, input (features,), output (classes,)
    trained: str  # the model a training job made
    dataset: str  # rows x features, classes classes, usable by every client
    job: str  # the finished training job
    features: int
    classes: int
    rows: int
    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # prediction request ids sent
    federations: list[str] = field(default_factory=list)  # an MPC one, then a CKKS one
    federation_architecture: common_pb2.Architecture | None = None  # of both federations
    encrypted_update: bytes = b""  # a valid CKKS update for the CKKS federation

    def __post_init__(self) -> None:
        self.models += [self.model, self.trained]
        self.datasets.append(self.dataset)
        self.jobs.append(self.job)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("Held(...)")  # Hypothesis prints a failing example's arguments


# ---------------------------------------------------------------- shares


def _random_bytes(draw: st.DrawFn, size: int) -> bytes:
    if size > 1024:  # a large draw overruns Hypothesis's buffer: expand a drawn seed instead
        return random.Random(draw(st.integers(0, 2**64 - 1))).randbytes(size)
    return bytes(draw(st.randoms(use_true_random=False)).randbytes(size))


def exact_share(shape: Sequence[int]) -> common_pb2.ShareTensor:
    return serde.share_to_proto(np.zeros(tuple(shape), dtype=np.int64))


@st.composite
def share_tensors(draw: st.DrawFn, good: Sequence[int]) -> common_pb2.ShareTensor:
    """A share tensor of shape ``good``, often with its shape, dtype, bits or length wrong.

    One fault at a time: with two, the first check would hide the second.
    """
    value = draw(
        faulty(
            good={
                "shape": st.just(list(good)),
                "dtype": st.just(common_pb2.DTYPE_RING64),
                "bits": st.just(16),
                "length": st.just(None),  # 8 bytes per element
            },
            bad={
                "shape": st.one_of(
                    st.sampled_from(EDGE_SHAPES),
                    st.lists(int64s(), max_size=5),
                    st.lists(st.integers(0, 2), min_size=17, max_size=80),  # too many dims
                ),
                "dtype": st.integers(-(2**31), 2**31 - 1),
                "bits": uint32s(),
                "length": st.integers(0, 64),
            },
            most=1,
        )
    )
    shape = value["shape"]
    count = math.prod(shape) if all(d >= 0 for d in shape) else 0
    size = value["length"] if value["length"] is not None else 8 * count
    if size > 8 << 14:  # a shape too big to send exactly: send a few bytes
        size = draw(st.integers(0, 64))
    return common_pb2.ShareTensor(
        shape=shape,
        dtype=value["dtype"],
        fractional_bits=value["bits"],
        data=_random_bytes(draw, size),
    )


@st.composite
def garbage_shares(draw: st.DrawFn, good: Sequence[int]) -> common_pb2.ShareTensor:
    """A share tensor for shape ``good`` that is always off: random bytes (a valid share:
    any 8 bytes are one), or the wrong byte count, shape, rank, dtype or bits, or unset."""
    count = math.prod(good)
    fault = draw(
        st.sampled_from(
            ["random bytes", "short", "long", "shape", "rank", "scalar", "empty", "dtype",
             "bits", "unset", "odd bytes"]
        ),
        label="share fault",
    )  # fmt: skip
    shape, size = list(good), 8 * count
    dtype, bits = common_pb2.DTYPE_RING64, 16
    if fault == "short":
        size = draw(st.integers(0, max(0, size - 1)))
    elif fault == "long":
        size += draw(st.integers(1, 64))
    elif fault == "shape":
        shape = draw(
            st.lists(st.integers(0, 9), min_size=1, max_size=4).filter(lambda s: s != list(good))
        )
        size = 8 * math.prod(shape)
    elif fault == "rank":
        shape = [*good, 1]
    elif fault == "scalar":
        shape, size = [], 8
    elif fault == "empty":
        shape, size = [0, *good[1:]], 0
    elif fault == "dtype":
        dtype = draw(st.integers(-5, 5).filter(lambda d: d != common_pb2.DTYPE_RING64))
    elif fault == "bits":
        bits = draw(st.sampled_from([0, 15, 17, 32, 64, 2**31]))
    elif fault == "unset":
        return common_pb2.ShareTensor()
    elif fault == "odd bytes":
        size = 8 * count + draw(st.sampled_from([-7, -1, 1, 3]))
    return common_pb2.ShareTensor(
        shape=shape, dtype=dtype, fractional_bits=bits, data=_random_bytes(draw, max(0, size))
    )


# ---------------------------------------------------------------- architectures


def _pairs() -> st.SearchStrategy[list[int]]:
    return st.one_of(
        st.lists(st.integers(0, 4), min_size=2, max_size=2), st.lists(int64s(), max_size=3)
    )


@st.composite
def layers(draw: st.DrawFn) -> common_pb2.Layer:
    layer = common_pb2.Layer()
    kind = draw(
        st.sampled_from(
            ["linear", "conv2d", "relu", "avg_pool2d", "max_pool2d", "flatten", "affine", ""]
        )
    )
    if kind == "linear":
        layer.linear.CopyFrom(
            common_pb2.Linear(
                in_features=draw(int64s()), out_features=draw(int64s()), bias=draw(st.booleans())
            )
        )
    elif kind == "conv2d":
        layer.conv2d.CopyFrom(
            common_pb2.Conv2d(
                in_channels=draw(int64s()),
                out_channels=draw(int64s()),
                kernel_size=draw(_pairs()),
                stride=draw(_pairs()),
                padding=draw(_pairs()),
                dilation=draw(_pairs()),
                groups=draw(int64s()),
                bias=draw(st.booleans()),
            )
        )
    elif kind in ("avg_pool2d", "max_pool2d"):
        pool = common_pb2.Pool2d(
            kernel_size=draw(_pairs()), stride=draw(_pairs()), padding=draw(_pairs())
        )
        getattr(layer, kind).CopyFrom(pool)
    elif kind == "affine":
        layer.affine.CopyFrom(common_pb2.Affine(shape=draw(st.lists(int64s(), max_size=4))))
    elif kind:
        getattr(layer, kind).SetInParent()
    return layer


@st.composite
def architectures(draw: st.DrawFn, good: common_pb2.Architecture) -> common_pb2.Architecture:
    """``good``, ``good`` with a layer or a shape replaced, or a random chain."""
    how = draw(st.sampled_from(["good", "layer", "shapes", "random"]))
    msg = common_pb2.Architecture()
    msg.CopyFrom(good)
    if how == "layer":
        index = draw(st.integers(0, len(msg.layers)))
        if index == len(msg.layers):
            msg.layers.append(draw(layers()))
        else:
            msg.layers[index].CopyFrom(draw(layers()))
    elif how == "shapes":
        for field in draw(st.sets(st.sampled_from(["input_shape", "output_shape"]), min_size=1)):
            del getattr(msg, field)[:]
            getattr(msg, field).extend(draw(st.lists(int64s(), max_size=4)))
    elif how == "random":
        msg = common_pb2.Architecture(
            layers=draw(st.lists(layers(), max_size=4)),
            input_shape=draw(st.lists(int64s(), max_size=4)),
            output_shape=draw(st.lists(int64s(), max_size=4)),
        )
    return msg


def _expected_shapes(architecture: common_pb2.Architecture) -> dict[str, tuple[int, ...]]:
    try:
        return serde.architecture_from_proto(architecture).parameter_shapes()
    except PpmlError:
        return {}


def exact_parameters(architecture: common_pb2.Architecture) -> list[common_pb2.NamedShare]:
    """One share of the right shape per parameter (none for an invalid architecture)."""
    expected = _expected_shapes(architecture)
    if any(math.prod(shape) > 1 << 12 for shape in expected.values()):
        return []
    return [
        common_pb2.NamedShare(name=name, share=exact_share(shape))
        for name, shape in expected.items()
    ]


@st.composite
def parameters(
    draw: st.DrawFn, architecture: common_pb2.Architecture
) -> list[common_pb2.NamedShare]:
    """Shares for ``architecture``'s parameters with one wrong, or random ones."""
    items = exact_parameters(architecture)
    if not items or draw(st.booleans(), label="random parameters"):
        names = st.one_of(st.sampled_from(["0.weight", "0.bias", "1.weight", "2.scale"]), texts())
        return draw(
            st.lists(
                st.builds(
                    lambda name, share: common_pb2.NamedShare(name=name, share=share),
                    names,
                    share_tensors((2, 2)),
                ),
                max_size=4,
            )
        )
    index = draw(st.integers(0, len(items) - 1))
    fault = draw(st.sampled_from(["drop", "twice", "rename", "share"]))
    if fault == "drop":
        del items[index]
    elif fault == "twice":
        items.append(items[index])
    elif fault == "rename":
        items[index] = common_pb2.NamedShare(name=draw(texts()), share=items[index].share)
    else:
        name = items[index].name
        shape = _expected_shapes(architecture)[name]
        items[index] = common_pb2.NamedShare(name=name, share=draw(share_tensors(shape)))
    return items


# ---------------------------------------------------------------- training


def _changes(draw: st.DrawFn, bad: dict[str, st.SearchStrategy[Any]], most: int) -> dict[str, Any]:
    """New values, drawn from ``bad``, for up to ``most`` of its fields."""
    chosen = draw(st.sets(st.sampled_from(sorted(bad)), max_size=most))
    return {name: draw(bad[name], label=name) for name in sorted(chosen)}


@st.composite
def training_specs(
    draw: st.DrawFn, good: training_pb2.TrainingSpec, datasets: Sequence[str]
) -> training_pb2.TrainingSpec:
    spec = training_pb2.TrainingSpec()
    spec.CopyFrom(good)
    known = ids(datasets)
    changes = _changes(
        draw,
        {
            "dataset_ids": st.one_of(
                st.lists(known, max_size=4), st.just([*good.dataset_ids, *good.dataset_ids])
            ),
            "validation_id": known,
            "epochs": uint32s(),
            "batch_size": uint32s(),
            "lr": doubles(),
            "momentum": doubles(),
            "weight_decay": doubles(),
            "loss": st.one_of(
                st.sampled_from(["cross_entropy", "binary_cross_entropy", "mse"]), texts()
            ),
            "optimizer": st.one_of(st.just("sgd"), texts()),
            "reveal_metrics": st.booleans(),
            "seed": uint64s(),
            "standardize": st.booleans(),
            "dp_clip_norm": doubles(),
            "dp_noise_multiplier": doubles(),
            "dp_target_epsilon": doubles(),
            "dp_delta": doubles(),
        },
        3,
    )
    for name, value in changes.items():
        if name == "dataset_ids":
            del spec.dataset_ids[:]
            spec.dataset_ids.extend(value)
        else:
            setattr(spec, name, value)
    return spec


# ---------------------------------------------------------------- data sets

UPLOAD_FEATURES = (3,)


def _chunk(rows: int, header: datasets_pb2.DatasetHeader | None) -> datasets_pb2.UploadDatasetChunk:
    chunk = datasets_pb2.UploadDatasetChunk(
        features=exact_share((rows, *UPLOAD_FEATURES)), labels=exact_share((rows, 2))
    )
    if header is not None:
        chunk.header.CopyFrom(header)
    return chunk


@st.composite
def upload_streams(draw: st.DrawFn, held: Held) -> list[datasets_pb2.UploadDatasetChunk]:
    """A good 4-row upload in two chunks with its header and chunks broken a little."""
    header = datasets_pb2.DatasetHeader(
        dataset_id=fresh_id(),
        name="fuzzed",
        rows=4,
        feature_shape=UPLOAD_FEATURES,
        num_classes=2,
        allowed=["*"],
    )
    changes = _changes(
        draw,
        {
            "dataset_id": new_ids([held.dataset]),
            "name": st.one_of(texts(), st.just("x" * 201)),
            "rows": int64s(),
            "feature_shape": st.lists(int64s(), max_size=4),
            "num_classes": uint32s(),
            "allowed": st.lists(st.one_of(texts(), st.just("x" * 201)), max_size=3),
            "scaling": texts(),
        },
        2,
    )
    for name, value in changes.items():
        if name in ("feature_shape", "allowed"):
            del getattr(header, name)[:]
            getattr(header, name).extend(value)
        else:
            setattr(header, name, value)
    chunks = [_chunk(2, header), _chunk(2, None)]
    fault = draw(
        st.sampled_from(
            ["none", "no header", "header twice", "drop", "extra", "features", "labels",
             "features only", "labels only", "header only", "empty"]
        )
    )  # fmt: skip
    index = draw(st.integers(0, 1))
    if fault == "no header":
        chunks[0].ClearField("header")
    elif fault == "header twice":
        chunks[1].header.CopyFrom(header)
    elif fault == "drop":
        del chunks[index]
    elif fault == "extra":
        chunks.append(_chunk(draw(st.integers(0, 3)), None))
    elif fault in ("features", "labels"):
        good = (2, *UPLOAD_FEATURES) if fault == "features" else (2, 2)
        getattr(chunks[index], fault).CopyFrom(draw(share_tensors(good)))
    elif fault in ("features only", "labels only"):
        chunks[index].ClearField("labels" if fault == "features only" else "features")
    elif fault == "header only":
        chunks = [datasets_pb2.UploadDatasetChunk(header=header)]
    elif fault == "empty":
        chunks = []
    return chunks


# ---------------------------------------------------------------- control links


def is_real_hello(rank: int, role: str, world_size: int) -> bool:
    """Would the leader accept this Hello (and drop the real link of that rank)?"""
    return (role == "party" and 1 <= rank < world_size) or (role == "dealer" and rank == world_size)


@st.composite
def party_messages(draw: st.DrawFn, world_size: int) -> coordinator_pb2.PartyMessage:
    """Any PartyMessage except a Hello the leader would accept (that is a real peer's job)."""
    kind = draw(st.sampled_from(["hello", "announce", "dealer_stats", "cancel_job", ""]))
    if kind == "hello":
        rank = draw(st.one_of(st.integers(0, world_size + 1), uint32s()))
        role = draw(st.one_of(st.sampled_from(["party", "dealer", "", "PARTY", "leader"]), texts()))
        if is_real_hello(rank, role, world_size):
            role = f"{role}?"
        hello = coordinator_pb2.Hello(rank=rank, role=role, incarnation=draw(texts()))
        return coordinator_pb2.PartyMessage(hello=hello)
    if kind == "announce":
        announce = coordinator_pb2.Announce(
            kind=draw(st.one_of(st.sampled_from(["predict", "train", "evaluate"]), texts())),
            id=draw(ids()),
            group=draw(texts()),
            size=draw(uint64s()),
            timeout_ms=draw(uint32s()),
        )
        return coordinator_pb2.PartyMessage(announce=announce)
    if kind == "dealer_stats":
        stats = coordinator_pb2.DealerStats(
            requests=draw(st.dictionaries(texts(), uint64s(), max_size=3)),
            sessions=draw(uint64s()),
        )
        return coordinator_pb2.PartyMessage(dealer_stats=stats)
    if kind == "cancel_job":
        cancel = coordinator_pb2.CancelJob(job_id=draw(ids()), reason=draw(texts()))
        return coordinator_pb2.PartyMessage(cancel_job=cancel)
    return coordinator_pb2.PartyMessage()


# ---------------------------------------------------------------- requests


def good_architecture(held: Held) -> common_pb2.Architecture:
    """A small MLP for the held data set."""
    layers = [
        common_pb2.Layer(linear=common_pb2.Linear(in_features=held.features, out_features=4)),
        common_pb2.Layer(relu=common_pb2.ReLU()),
        common_pb2.Layer(linear=common_pb2.Linear(in_features=4, out_features=held.classes)),
    ]
    return common_pb2.Architecture(
        layers=layers, input_shape=[held.features], output_shape=[held.classes]
    )


def predict_requests(held: Held) -> st.SearchStrategy[inference_pb2.PredictRequest]:
    rows = st.sampled_from([1, 2, 0, 4097])
    return rows.flatmap(
        lambda n: faulty(
            good={
                "request_id": st.builds(fresh_id),
                "model_id": st.one_of(st.just(held.model), known_ids(held.models)),
                "input": share_tensors((n, held.features)),
            },
            bad={
                "request_id": new_ids(held.requests),
                "model_id": ids(held.models),
                "input": st.just(common_pb2.ShareTensor()),  # unset
            },
        )
    ).map(lambda value: inference_pb2.PredictRequest(**value))


def evaluate_requests(held: Held) -> st.SearchStrategy[training_pb2.EvaluateRequest]:
    return faulty(
        good={
            "request_id": st.builds(fresh_id),
            "model_id": st.one_of(st.just(held.model), known_ids(held.models)),
            "dataset_id": st.one_of(st.just(held.dataset), known_ids(held.datasets)),
        },
        bad={
            "request_id": new_ids(),
            "model_id": ids(held.models),
            "dataset_id": ids(held.datasets),
        },
    ).map(lambda value: training_pb2.EvaluateRequest(**value))


@st.composite
def upload_model_requests(draw: st.DrawFn, held: Held) -> registry_pb2.UploadModelRequest:
    broken = draw(
        st.sets(st.sampled_from(["model_id", "name", "architecture", "parameters"]), max_size=2),
        label="broken",
    )
    architecture = good_architecture(held)
    if "architecture" in broken:
        architecture = draw(architectures(architecture), label="architecture")
    return registry_pb2.UploadModelRequest(
        model_id=draw(new_ids([held.model, held.trained])) if "model_id" in broken else fresh_id(),
        name=draw(st.one_of(texts(), st.just("x" * 201))) if "name" in broken else "fuzzed",
        architecture=architecture,
        parameters=draw(parameters(architecture), label="parameters")
        if "parameters" in broken
        else exact_parameters(architecture),
    )


@st.composite
def start_training_requests(draw: st.DrawFn, held: Held) -> training_pb2.StartTrainingRequest:
    broken = draw(
        st.sets(
            st.sampled_from(["job_id", "model_id", "name", "architecture", "parameters", "spec"]),
            max_size=2,
        ),
        label="broken",
    )
    architecture = good_architecture(held)
    if "architecture" in broken:
        architecture = draw(architectures(architecture), label="architecture")
    spec = training_pb2.TrainingSpec(
        dataset_ids=[held.dataset],
        epochs=1,
        batch_size=held.rows,
        lr=0.1,
        loss="cross_entropy",
        optimizer="sgd",
        seed=1,
    )
    if "spec" in broken:
        spec = draw(training_specs(spec, held.datasets), label="spec")
    return training_pb2.StartTrainingRequest(
        job_id=draw(new_ids([held.job])) if "job_id" in broken else fresh_id(),
        model_id=draw(new_ids([held.model, held.trained])) if "model_id" in broken else fresh_id(),
        name=draw(texts()) if "name" in broken else "",
        architecture=architecture,
        initial_parameters=draw(parameters(architecture), label="parameters")
        if "parameters" in broken
        else exact_parameters(architecture),
        spec=spec,
    )


# ---------------------------------------------------------------- every string field


@dataclass(frozen=True)
class StringField:
    """One string field of one client RPC's request (``path`` from the request down)."""

    method: str  # "Service/Method", as in fuzz_calls.RPCS
    request: type[Message]
    path: tuple[str, ...]
    client_streaming: bool

    def __str__(self) -> str:
        return f"{self.method}:{'.'.join(self.path)}"

    def set(self, request: Message, value: str) -> Message:
        """``request`` with this field set to ``value`` (a repeated one: one more entry)."""
        message = request
        for name in self.path[:-1]:
            child = message.DESCRIPTOR.fields_by_name[name]
            if child.is_repeated:
                items = getattr(message, name)
                message = items[0] if len(items) else items.add()
            else:
                message = getattr(message, name)
        last = message.DESCRIPTOR.fields_by_name[self.path[-1]]
        if last.is_repeated:
            getattr(message, self.path[-1]).append(value)
        else:
            setattr(message, self.path[-1], value)
        return request

    def build(self, value: str) -> Message:
        """A request with only this field set."""
        return self.set(self.request(), value)


def _is_map(item: FieldDescriptor) -> bool:
    return bool(item.message_type.GetOptions().map_entry)


def _string_paths(descriptor: Descriptor, depth: int = 3) -> Iterator[tuple[str, ...]]:
    for item in descriptor.fields:
        if item.type == FieldDescriptor.TYPE_STRING:
            yield (item.name,)
        elif item.type == FieldDescriptor.TYPE_MESSAGE and depth > 0 and not _is_map(item):
            for rest in _string_paths(item.message_type, depth - 1):
                yield (item.name, *rest)


def client_string_fields() -> list[StringField]:
    """Every string field of the client services' requests (not the control link, not health)."""
    found = []
    for module in (registry_pb2, datasets_pb2, training_pb2, federation_pb2, inference_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                request = getattr(module, method.input_type.name)
                for path in _string_paths(method.input_type):
                    name = f"{service.name}/{method.name}"
                    found.append(StringField(name, request, path, method.client_streaming))
    return found


def every_string(request: Message, value: str) -> Message:
    """``request`` with every string field already set (and every empty one) set to ``value``."""
    for fld in request.DESCRIPTOR.fields:
        if fld.type == FieldDescriptor.TYPE_STRING:
            if fld.is_repeated:
                items = getattr(request, fld.name)
                items[:] = [value] * max(1, len(items))
            else:
                setattr(request, fld.name, value)
        elif fld.type == FieldDescriptor.TYPE_MESSAGE and not fld.is_repeated:
            every_string(getattr(request, fld.name), value)
        elif fld.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(fld):
            for item in getattr(request, fld.name):
                every_string(item, value)
    return request


# ---------------------------------------------------------------- federations


@st.composite
def encrypted_update_garbage(draw: st.DrawFn, held: Held) -> bytes:
    """The held valid CKKS update with its chunks or framing broken."""
    good = held.encrypted_update
    update = ckks.deserialize(good)
    chunks = list(update.chunks)
    index = draw(st.integers(0, len(chunks) - 1), label="chunk")
    fault = draw(
        st.sampled_from(
            ["random chunk", "random length", "truncated chunk", "flipped bytes", "empty chunk",
             "extra chunk", "dropped chunk", "swapped", "duplicated", "length", "weight", "count",
             "truncated blob", "appended", "random blob", "header size", "good"]
        ),
        label="fault",
    )  # fmt: skip
    chunk = chunks[index]
    if fault == "random chunk":
        chunks[index] = _random_bytes(draw, len(chunk))
    elif fault == "random length":
        chunks[index] = _random_bytes(draw, draw(st.integers(1, 2 * len(chunk))))
    elif fault == "truncated chunk":
        chunks[index] = chunk[: draw(st.integers(1, max(1, len(chunk) - 1)))]
    elif fault == "flipped bytes":
        data = bytearray(chunk)
        for at in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            data[at] ^= draw(st.integers(1, 255))
        chunks[index] = bytes(data)
    elif fault == "empty chunk":
        chunks[index] = b""
    elif fault == "extra chunk":
        chunks.append(draw(st.sampled_from([chunk, _random_bytes(draw, 64)])))
    elif fault == "dropped chunk":
        del chunks[index]
    elif fault == "swapped" and len(chunks) > 1:
        chunks[0], chunks[-1] = chunks[-1], chunks[0]
    elif fault == "duplicated":
        chunks = [chunk] * len(chunks)
    if fault in ("length", "weight", "count"):
        value = {
            "length": draw(st.sampled_from([0, 1, update.length + 1, 2**31, -1])),
            "weight": draw(st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e300])),
            "count": draw(st.sampled_from([0, 2, -1, 2**40])),
        }[fault]
        update = dataclasses.replace(update, **{fault: value})
    blob = ckks.serialize(dataclasses.replace(update, chunks=tuple(c for c in chunks if c)))
    if fault == "empty chunk":  # serialize skips it: write a 0-size chunk into the header
        blob = blob.replace(b'"chunks": [', b'"chunks": [0, ', 1)
    elif fault == "truncated blob":
        blob = good[: draw(st.integers(0, len(good) - 1))]
    elif fault == "appended":
        blob = good + _random_bytes(draw, draw(st.integers(1, 64)))
    elif fault == "random blob":
        blob = _random_bytes(draw, draw(st.integers(0, 4096)))
    elif fault == "header size":
        blob = blob[:8] + draw(st.binary(min_size=4, max_size=4)) + blob[12:]
    return blob


@st.composite
def submit_update_requests(draw: st.DrawFn, held: Held) -> federation_pb2.SubmitUpdateRequest:
    """An update to the MPC federation with its shares broken (or random, which is valid)."""
    assert held.federation_architecture is not None
    architecture = held.federation_architecture
    update = exact_parameters(architecture)
    if draw(st.booleans(), label="break the update"):
        update = draw(parameters(architecture), label="update")
    request = federation_pb2.SubmitUpdateRequest(
        federation_id=draw(st.one_of(st.just(held.federations[0]), ids(held.federations))),
        round=draw(st.one_of(st.just(1), uint32s()), label="round"),
        update=update,
        weight=draw(share_tensors((1,)), label="weight"),
    )
    if draw(st.booleans(), label="with a loss"):
        request.loss.CopyFrom(draw(share_tensors((1,)), label="loss"))
    return request
