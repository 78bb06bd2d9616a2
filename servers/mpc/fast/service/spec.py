"""Which stored models the fast engine can serve, and its public spec of them.

The fast engine (:mod:`ppml.servers.mpc.fast`) runs chains and DAGs
(residual networks) of Linear and Conv2d layers (square kernel, equal stride
and padding, no dilation or groups), ReLU, Add, Flatten, and average and max
pooling (square window and stride, no padding), and a transformer's layers:
Linear on the last dim of an N-D value (``Linear.lead``), MatMul of two
activations, Transpose, Reshape, Scale, Bias, Mean, Select, Concat
(:mod:`ppml.servers.mpc.fast.tensor_ops`), Softmax over the last axis (rows
of at most 128), LayerNorm (eps in fixed point at ``2^-16``: an eps below
``2^-17`` counts as 0), and GELU, Tanh and Sigmoid as spline gates
(:mod:`ppml.servers.mpc.fast.activations`). Any other layer (Affine, padded
or rectangular pooling, a Scale factor the plan refuses, longer softmax
rows) keeps a model on the CrypTen path: :func:`fast_model` returns None.
Secret parameters other than weighted layers' (a Bias's, a LayerNorm's
weight and bias) are listed in :attr:`FastModel.params` for
``PartyModel.open``.

The spec is public (the architecture is). :func:`to_wire` and
:func:`from_wire` turn it into nested tuples of ints, bools and strings, the
only form a party sends the dealer (the dealer unpickles with CrypTen's
restricted loader): ``(input_shape, rows)`` for a chain, ``(input_shape,
rows, inputs)`` for a DAG, ``inputs`` one tuple of source indices per row
(``-1``: the model input). :func:`from_wire` validates strictly: known row
kinds with sizes in range, at most :data:`MAX_WIRE_LAYERS` rows, every
source an earlier row, each row's arity, and a plan the engine can run (shapes
that agree: a Reshape's element count, a Transpose's permutation, a MatMul's
operands, a Bias's broadcast) with no value over :data:`MAX_VALUE_ELEMENTS`
per sample.

Rows: ``("linear", in, out, bias, *lead)`` (``lead``: up to
:data:`~ppml.servers.mpc.fast.tensor_ops.MAX_RANK` - 1 dims before the
features), ``("conv2d", ...)``, ``("avgpool" | "maxpool", kernel, stride)``,
``("relu",)``, ``("flatten",)``, ``("add",)``, ``("matmul",)``,
``("gelu",)``, ``("tanh",)``, ``("sigmoid",)``, ``("softmax",)``,
``("layer_norm", dim, eps)`` (eps in fixed point at ``2^16``),
``("transpose", *perm)``, ``("reshape", *shape)``, ``("scale", multiplier)``
(the factor in fixed point at ``2^16``), ``("bias", *shape)``, ``("mean", axis)``,
``("select", axis, index)``, ``("concat", axis)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ppml.proto.domain import architecture as arch
from ppml.proto.domain import layers as dl
from ppml.proto.domain import nonlinear_layers as nl
from ppml.proto.domain import tensor_layers as tl
from ppml.servers.mpc.fast import linear as fl
from ppml.servers.mpc.fast import nodes as fn
from ppml.servers.mpc.fast import tensor_ops as tops
from ppml.servers.mpc.fast.graph import plan_of

Wire = (
    tuple[tuple[int, ...], tuple[tuple[object, ...], ...]]
    | tuple[tuple[int, ...], tuple[tuple[object, ...], ...], tuple[tuple[int, ...], ...]]
)
MAX_WIRE_LAYERS = 256  # a ResNet-50 has about 180 nodes
MAX_DIM = 1 << 16
MAX_VALUE_ELEMENTS = 1 << 22  # per sample, any value of the plan


@dataclass(frozen=True)
class FastModel:
    """A fast-engine spec and, per stage, the index of its layer in the architecture.

    ``params``: per secret parameter of the plan (Bias nodes, LayerNorm
    weights and biases, in ``plan_of(spec).params`` order) its layer index and
    name in the architecture (the share ``f"{index}.{name}"``).
    """

    spec: fn.ModelSpec
    layer_index: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: tuple[tuple[int, str], ...] = ()


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


def _pool(layer: dl.MaxPool2d | dl.AvgPool2d) -> fn.Node | None:
    square = all(len(set(p)) == 1 for p in (layer.kernel_size, layer.stride))
    if not square or layer.padding != (0, 0):
        return None
    kind = fn.MaxPool if isinstance(layer, dl.MaxPool2d) else fn.AvgPool
    return kind(layer.kernel_size[0], layer.stride[0])


EPS_BITS = 16  # a LayerNorm's eps in fixed point (the wire carries ints)


def _tensor_node(layer: object) -> fn.Node | None:
    """A transformer layer's node (tensor_layers.py, nonlinear_layers.py), or None."""
    if isinstance(layer, tl.Transpose):
        return tops.Transpose(tuple(layer.perm))
    if isinstance(layer, tl.Reshape):
        return tops.Reshape(tuple(layer.shape))
    if isinstance(layer, tl.Bias):
        return tops.Bias(tuple(layer.shape))
    if isinstance(layer, tl.Mean):
        return tops.Mean(layer.axis)
    if isinstance(layer, tl.Select):
        return tops.Select(layer.axis, layer.index)
    if isinstance(layer, tl.Concat):
        return tops.Concat(layer.axis)
    if isinstance(layer, tl.Scale):
        try:
            return tops.Scale.of(layer.factor, fn.GateParams().frac_bits)
        except ValueError:
            return None
    if isinstance(layer, nl.LayerNorm):
        eps = round(layer.eps * (1 << EPS_BITS)) / (1 << EPS_BITS)
        return fn.LayerNorm(layer.size, eps)
    simple: dict[type, fn.Node] = {
        tl.MatMul: tops.MatMul(), nl.Softmax: fn.Softmax(), nl.GELU: fn.GELU(),
        nl.Tanh: fn.Tanh(), nl.Sigmoid: fn.Sigmoid(),
    }  # fmt: skip
    return simple.get(type(layer))


def _node(layer: dl.Layer, shape: tuple[int, ...]) -> fn.Node | None:
    """The engine's node for ``layer`` reading ``shape``, or None if it lacks it."""
    if isinstance(layer, dl.Linear):
        lead = tuple(shape[:-1])
        return fl.Linear(layer.in_features, layer.out_features, layer.bias, lead)
    if isinstance(layer, dl.Conv2d):
        return conv_layer(layer, shape)
    if isinstance(layer, dl.MaxPool2d | dl.AvgPool2d):
        return _pool(layer)
    simple: dict[type, fn.Node] = {dl.ReLU: fn.ReLU(), dl.Flatten: fn.Flatten(), dl.Add: fn.Add()}
    return simple.get(type(layer)) or _tensor_node(layer)


def _sources(architecture: arch.Architecture, index: int) -> tuple[int, ...]:
    sources = getattr(architecture, "sources", None)  # chains only before the DAG architecture
    return tuple(sources(index)) if sources is not None else (index - 1,)


def fast_model(architecture: arch.Architecture) -> FastModel | None:
    """The fast engine's view of ``architecture``, or None if it has a layer the engine lacks."""
    nodes: list[fn.Node] = []
    index: list[int] = []
    params: list[tuple[int, str]] = []
    inputs: list[tuple[int, ...]] = []
    shapes: dict[int, tuple[int, ...]] = {fn.MODEL_INPUT: tuple(architecture.input_shape)}
    for i, layer in enumerate(architecture.layers):
        sources = _sources(architecture, i)
        if not all(fn.MODEL_INPUT <= s < i for s in sources) or not sources:
            return None
        node = _node(layer, shapes[sources[0]])
        if node is None:
            return None
        try:
            if len(sources) == 1:
                shapes[i] = tuple(layer.out_shape(shapes[sources[0]]))
            else:
                shapes[i] = tuple(layer.join_shapes(tuple(shapes[s] for s in sources)))
        except (ValueError, AttributeError):
            return None
        if isinstance(node, fl.Linear | fl.Conv2d):
            index.append(i)
        elif isinstance(node, tops.Bias):
            params.append((i, "bias"))
        elif isinstance(node, fn.LayerNorm):
            params += [(i, "weight"), (i, "bias")]
        nodes.append(node)
        inputs.append(sources)
    chain = all(s == (i - 1,) for i, s in enumerate(inputs))
    spec = fn.ModelSpec(
        tuple(nodes), tuple(architecture.input_shape), inputs=() if chain else tuple(inputs)
    )
    try:
        plan_of(spec)
    except ValueError:
        return None
    return FastModel(spec, tuple(index), tuple(architecture.output_shape), tuple(params))


def to_wire(spec: fn.ModelSpec) -> Wire:
    """Plain nested tuples describing ``spec`` (for the dealer)."""
    rows: list[tuple[object, ...]] = []
    for layer in spec.layers:
        if isinstance(layer, fl.Linear):
            rows.append(("linear", layer.in_features, layer.out_features, layer.bias, *layer.lead))
        elif isinstance(layer, fl.Conv2d):
            rows.append(
                ("conv2d", layer.in_channels, layer.out_channels, layer.kernel_size,
                 *layer.in_hw, layer.stride, layer.padding, layer.bias)
            )  # fmt: skip
        elif isinstance(layer, fn.AvgPool | fn.MaxPool):
            rows.append((_POOLS[type(layer)], layer.kernel, layer.stride))
        elif isinstance(layer, tops.Transpose):
            rows.append(("transpose", *layer.perm))
        elif isinstance(layer, tops.Reshape | tops.Bias):
            rows.append(("reshape" if isinstance(layer, tops.Reshape) else "bias", *layer.shape))
        elif isinstance(layer, tops.Scale):
            rows.append(("scale", layer.multiplier))
        elif isinstance(layer, tops.Mean | tops.Concat):
            rows.append(("mean" if isinstance(layer, tops.Mean) else "concat", layer.axis))
        elif isinstance(layer, tops.Select):
            rows.append(("select", layer.axis, layer.index))
        elif isinstance(layer, fn.LayerNorm):
            rows.append(("layer_norm", layer.dim, round(layer.eps * (1 << EPS_BITS))))
        else:
            rows.append((_SIMPLE[type(layer)],))
    if not spec.inputs:
        return tuple(spec.input_shape), tuple(rows)
    return tuple(spec.input_shape), tuple(rows), tuple(tuple(s) for s in spec.inputs)


_POOLS: dict[type, str] = {fn.AvgPool: "avgpool", fn.MaxPool: "maxpool"}
_SIMPLE_NODES: dict[str, fn.Node] = {
    "relu": fn.ReLU(), "flatten": fn.Flatten(), "add": fn.Add(), "matmul": tops.MatMul(),
    "gelu": fn.GELU(), "tanh": fn.Tanh(), "sigmoid": fn.Sigmoid(), "softmax": fn.Softmax(),
}  # fmt: skip
_SIMPLE: dict[type, str] = {type(node): kind for kind, node in _SIMPLE_NODES.items()}


def _ints(values: tuple[object, ...], count: int, low: int = 1) -> tuple[int, ...]:
    if len(values) != count or not all(
        type(v) is int and low <= v <= MAX_DIM
        for v in values  # type(): a bool is no size
    ):
        raise ValueError(f"expected {count} sizes in [{low}, {MAX_DIM}]")
    return tuple(int(v) for v in values)  # type: ignore[call-overload]


def _row(row: object) -> fn.Node:
    if not isinstance(row, tuple) or not row or not isinstance(row[-1], bool | str | int):
        raise ValueError("bad layer row")
    kind = row[0]
    if kind == "linear" and 4 <= len(row) < 4 + tops.MAX_RANK and isinstance(row[3], bool):
        n_in, n_out = _ints(row[1:3], 2)
        return fl.Linear(n_in, n_out, row[3], _ints(row[4:], len(row) - 4))
    if kind == "conv2d" and len(row) == 9 and isinstance(row[8], bool):
        c_in, c_out, k, h, w, s = _ints(row[1:7], 6)
        (p,) = _ints(row[7:8], 1, low=0)
        return fl.Conv2d(c_in, c_out, k, (h, w), s, p, row[8])
    if kind in ("avgpool", "maxpool") and len(row) == 3:
        k, s = _ints(row[1:3], 2)
        return fn.AvgPool(k, s) if kind == "avgpool" else fn.MaxPool(k, s)
    if isinstance(kind, str) and kind in _SIMPLE_NODES and len(row) == 1:
        return _SIMPLE_NODES[kind]
    return _tensor_row(kind, row[1:])


def _tensor_row(kind: object, args: tuple[object, ...]) -> fn.Node:
    """A transformer node's row; its shapes are checked against its input by the plan."""
    rank = 1 <= len(args) <= tops.MAX_RANK
    if kind == "transpose" and rank:
        perm = _ints(args, len(args), low=0)
        if sorted(perm) != list(range(len(perm))):
            raise ValueError(f"transpose {perm} is not a permutation")
        return tops.Transpose(perm)
    if kind in ("reshape", "bias") and rank:
        shape = _ints(args, len(args))
        return tops.Reshape(shape) if kind == "reshape" else tops.Bias(shape)
    if kind in ("mean", "concat") and len(args) == 1:
        (axis,) = _ints(args, 1, low=0)
        return tops.Mean(axis) if kind == "mean" else tops.Concat(axis)
    if kind == "select" and len(args) == 2:
        axis, index = _ints(args, 2, low=0)
        return tops.Select(axis, index)
    if kind == "layer_norm" and len(args) == 2:
        (dim,) = _ints(args[:1], 1)
        (eps,) = _ints(args[1:], 1, low=0)
        if eps > 1 << EPS_BITS:
            raise ValueError("LayerNorm eps above 1")
        return fn.LayerNorm(dim, eps / (1 << EPS_BITS))
    if kind == "scale" and len(args) == 1 and type(args[0]) is int:
        scale = tops.Scale(args[0])
        scale.out_shape(())  # a non-zero multiplier in range
        return scale
    raise ValueError(f"unknown layer row ({kind!r}, ...)")


def _inputs(raw: object, nodes: list[fn.Node]) -> tuple[tuple[int, ...], ...]:
    """Validated source lists: one per node, of its arity, each an earlier node or -1."""
    if not isinstance(raw, tuple) or len(raw) != len(nodes):
        raise ValueError("a DAG spec needs one input list per layer")
    out = []
    for i, (sources, node) in enumerate(zip(raw, nodes, strict=True)):
        if not isinstance(sources, tuple) or len(sources) != fn.arity(node):
            raise ValueError(f"layer {i} takes {fn.arity(node)} inputs")
        if not all(type(s) is int and fn.MODEL_INPUT <= s < i for s in sources):
            raise ValueError(f"layer {i} reads {sources!r}: each must be an earlier layer or -1")
        out.append(tuple(int(s) for s in sources))
    return tuple(out)


def from_wire(wire: object) -> fn.ModelSpec:
    """Inverse of :func:`to_wire`, validated (the dealer receives it from the network)."""
    if not (isinstance(wire, tuple) and len(wire) in (2, 3)):
        raise ValueError("a fast spec is (input_shape, layers[, inputs])")
    shape_raw, rows = wire[0], wire[1]
    if not isinstance(shape_raw, tuple) or not isinstance(rows, tuple):
        raise ValueError("a fast spec is (input_shape, layers[, inputs])")
    if not 1 <= len(rows) <= MAX_WIRE_LAYERS or not 1 <= len(shape_raw) <= 3:
        raise ValueError("too many layers or a bad input shape")
    input_shape = _ints(shape_raw, len(shape_raw))
    nodes = [_row(row) for row in rows]
    inputs = _inputs(wire[2], nodes) if len(wire) == 3 else ()
    spec = fn.ModelSpec(tuple(nodes), input_shape, inputs=inputs)
    plan = plan_of(spec)  # raises ValueError for a model the engine cannot run
    if max(math.prod(v.shape) for v in plan.values) > MAX_VALUE_ELEMENTS:
        raise ValueError(f"a value of more than {MAX_VALUE_ELEMENTS} elements per sample")
    return spec
