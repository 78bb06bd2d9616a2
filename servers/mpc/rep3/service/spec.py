"""Which stored models the replicated engine serves, and its public view of them.

The replicated engine (:mod:`ppml.servers.mpc.rep3`) runs chains of Linear
and Conv2d layers (square kernel, equal stride and padding, no dilation or
groups), each optionally followed by ReLU and then by max or average
pooling (square window, equal stride, no padding), with Flatten anywhere.
Training takes the same chains without pooling
(:mod:`ppml.servers.mpc.rep3.train`). Anything else is refused, naming the
layer (:func:`unsupported`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ppml.proto.domain import architecture as arch
from ppml.proto.domain import layers as dl
from ppml.servers.mpc.fast import linear as fl
from ppml.servers.mpc.fast.service.spec import conv_layer
from ppml.servers.mpc.rep3.engine import Chain, Stage
from ppml.servers.mpc.rep3.pool import Pool

RUNS = (
    "chains of Linear and Conv2d layers (square kernels), each optionally followed by ReLU "
    "and max or average pooling (square windows, no padding), with Flatten anywhere"
)
_LAYERS = (dl.Linear, dl.Conv2d, dl.ReLU, dl.Flatten, dl.MaxPool2d, dl.AvgPool2d)


@dataclass(frozen=True)
class Rep3Model:
    """The engine's chain and, per stage, the index of its layer in the architecture."""

    spec: Chain
    layer_index: tuple[int, ...]
    output_shape: tuple[int, ...]


def _pool(layer: dl.MaxPool2d | dl.AvgPool2d, shape: tuple[int, ...]) -> Pool | None:
    square = all(len(set(p)) == 1 for p in (layer.kernel_size, layer.stride))
    if not square or layer.padding != (0, 0) or len(shape) != 3:
        return None
    kind = "max" if isinstance(layer, dl.MaxPool2d) else "avg"
    try:
        return Pool(kind, layer.kernel_size[0], layer.stride[0], (shape[0], shape[1], shape[2]))
    except ValueError:
        return None


def rep3_model(architecture: arch.Architecture) -> Rep3Model | None:
    """The engine's view of ``architecture``, or None if it has something the engine lacks."""
    if not architecture.is_chain:
        return None
    stages: list[Stage] = []
    index: list[int] = []
    shape = tuple(architecture.input_shape)
    for i, layer in enumerate(architecture.layers):
        if isinstance(layer, dl.Linear | dl.Conv2d):
            op = (
                fl.Linear(layer.in_features, layer.out_features, layer.bias)
                if isinstance(layer, dl.Linear)
                else conv_layer(layer, shape)
            )
            if op is None or _size(op.in_shape) != _size(shape):
                return None
            stages.append(Stage(op, "trunc"))
            index.append(i)
        elif isinstance(layer, dl.ReLU):
            if not stages or stages[-1].gate == "relu" or stages[-1].pool is not None:
                return None
            stages[-1] = Stage(stages[-1].op, "relu")
        elif isinstance(layer, dl.MaxPool2d | dl.AvgPool2d):
            pool = _pool(layer, shape)
            if not stages or stages[-1].pool is not None or pool is None:
                return None
            stages[-1] = Stage(stages[-1].op, stages[-1].gate, pool)
        elif not isinstance(layer, dl.Flatten):
            return None
        try:
            shape = tuple(layer.out_shape(shape))
        except ValueError:
            return None
    if not stages or tuple(shape) != tuple(architecture.output_shape):
        return None
    return Rep3Model(
        Chain(tuple(stages), tuple(architecture.input_shape)),
        tuple(index),
        tuple(architecture.output_shape),
    )


def unsupported(architecture: arch.Architecture) -> str | None:
    """Why the engine cannot run ``architecture``, naming the layer; None if it can."""
    if architecture.tokens is not None:
        return (
            "a token model (an embedding of token ids) does not run on this cluster's engine "
            f"(engine = 'replicated' runs {RUNS}); a cluster with a dealer serves it"
        )
    for i, layer in enumerate(architecture.layers):
        if not isinstance(layer, _LAYERS):
            return (
                f"layer {i} ({type(layer).__name__}) does not run on this cluster's engine "
                f"(engine = 'replicated' runs {RUNS})"
            )
    if rep3_model(architecture) is None:
        return (
            "this layer chain does not run on this cluster's engine "
            f"(engine = 'replicated' runs {RUNS})"
        )
    return None


def _size(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
