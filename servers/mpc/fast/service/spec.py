"""Which stored models the fast engine can serve, and its public spec of them.

The fast engine (:mod:`ppml.servers.mpc.fast`) runs chains of Linear and
Conv2d layers (square kernel, equal stride and padding, no dilation or
groups), each optionally followed by ReLU, with Flatten anywhere. Any other
layer (pooling, Affine) keeps a model on the CrypTen path.

The spec is public (the architecture is). :func:`to_wire` and
:func:`from_wire` turn it into nested tuples of ints, bools and strings, the
only form a party sends the dealer (the dealer unpickles with CrypTen's
restricted loader).
"""

from __future__ import annotations

from dataclasses import dataclass

from ppml.proto.domain import architecture as arch
from ppml.proto.domain import layers as dl
from ppml.servers.mpc.fast import engine as fe
from ppml.servers.mpc.fast import linear as fl

Wire = tuple[tuple[int, ...], tuple[tuple[object, ...], ...]]
MAX_WIRE_LAYERS = 64
MAX_DIM = 1 << 16


@dataclass(frozen=True)
class FastModel:
    """A fast-engine spec and, per stage, the index of its layer in the architecture."""

    spec: fe.ModelSpec
    layer_index: tuple[int, ...]
    output_shape: tuple[int, ...]


def conv_layer(layer: dl.Conv2d, shape: tuple[int, ...]) -> fl.Conv2d | None:
    """The engines' Conv2d for ``layer`` on inputs of ``shape``, or None if they lack it."""
    square = all(len(set(p)) == 1 for p in (layer.kernel_size, layer.stride, layer.padding))
    if not square or layer.dilation != (1, 1) or layer.groups != 1 or len(shape) != 3:
        return None
    return fl.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size[0],
        (shape[1], shape[2]),
        layer.stride[0],
        layer.padding[0],
        layer.bias,
    )


def fast_model(architecture: arch.Architecture) -> FastModel | None:
    """The fast engine's view of ``architecture``, or None if it has a layer the engine lacks."""
    out: list[fe.Layer] = []
    index: list[int] = []
    shape = tuple(architecture.input_shape)
    for i, layer in enumerate(architecture.layers):
        converted: fe.Layer | None
        if isinstance(layer, dl.Linear):
            converted = fl.Linear(layer.in_features, layer.out_features, layer.bias)
        elif isinstance(layer, dl.Conv2d):
            converted = conv_layer(layer, shape)
        elif isinstance(layer, dl.ReLU):
            converted = fe.ReLU()
        elif isinstance(layer, dl.Flatten):
            converted = fe.Flatten()
        else:
            return None
        if converted is None:
            return None
        if isinstance(converted, fl.Linear | fl.Conv2d):
            index.append(i)
        out.append(converted)
        try:
            shape = layer.out_shape(shape)
        except ValueError:
            return None
    spec = fe.ModelSpec(tuple(out), tuple(architecture.input_shape))
    try:
        if len(spec.stages) != len(index):  # a ReLU not after a weighted layer, etc.
            return None
    except ValueError:
        return None
    return FastModel(spec, tuple(index), tuple(architecture.output_shape))


def to_wire(spec: fe.ModelSpec) -> Wire:
    """Plain nested tuples describing ``spec`` (for the dealer)."""
    rows: list[tuple[object, ...]] = []
    for layer in spec.layers:
        if isinstance(layer, fl.Linear):
            rows.append(("linear", layer.in_features, layer.out_features, layer.bias))
        elif isinstance(layer, fl.Conv2d):
            rows.append(
                ("conv2d", layer.in_channels, layer.out_channels, layer.kernel_size,
                 *layer.in_hw, layer.stride, layer.padding, layer.bias)
            )  # fmt: skip
        elif isinstance(layer, fe.ReLU):
            rows.append(("relu",))
        else:
            rows.append(("flatten",))
    return tuple(spec.input_shape), tuple(rows)


def _ints(values: tuple[object, ...], count: int, low: int = 1) -> tuple[int, ...]:
    if len(values) != count or not all(
        type(v) is int and low <= v <= MAX_DIM
        for v in values  # type(): a bool is no size
    ):
        raise ValueError(f"expected {count} sizes in [{low}, {MAX_DIM}]")
    return tuple(int(v) for v in values)  # type: ignore[call-overload]


def from_wire(wire: object) -> fe.ModelSpec:
    """Inverse of :func:`to_wire`, validated (the dealer receives it from the network)."""
    if not (isinstance(wire, tuple) and len(wire) == 2):
        raise ValueError("a fast spec is (input_shape, layers)")
    shape_raw, rows = wire
    if not isinstance(shape_raw, tuple) or not isinstance(rows, tuple):
        raise ValueError("a fast spec is (input_shape, layers)")
    if not 1 <= len(rows) <= MAX_WIRE_LAYERS or not 1 <= len(shape_raw) <= 3:
        raise ValueError("too many layers or a bad input shape")
    input_shape = _ints(shape_raw, len(shape_raw))
    layers: list[fe.Layer] = []
    for row in rows:
        if not isinstance(row, tuple) or not row or not isinstance(row[-1], bool | str):
            raise ValueError("bad layer row")
        kind = row[0]
        if kind == "linear" and len(row) == 4 and isinstance(row[3], bool):
            n_in, n_out = _ints(row[1:3], 2)
            layers.append(fl.Linear(n_in, n_out, row[3]))
        elif kind == "conv2d" and len(row) == 9 and isinstance(row[8], bool):
            c_in, c_out, k, h, w, s = _ints(row[1:7], 6)
            (p,) = _ints(row[7:8], 1, low=0)
            layers.append(fl.Conv2d(c_in, c_out, k, (h, w), s, p, row[8]))
        elif kind == "relu" and len(row) == 1:
            layers.append(fe.ReLU())
        elif kind == "flatten" and len(row) == 1:
            layers.append(fe.Flatten())
        else:
            raise ValueError(f"unknown layer row {row[:1]!r}")
    spec = fe.ModelSpec(tuple(layers), input_shape)
    _ = spec.stages  # raises ValueError for a chain the engine cannot run
    return spec
