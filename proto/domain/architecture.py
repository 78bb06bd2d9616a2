"""The public architecture of a secret-shared model.

Layer types and sizes are public (docs/architecture.md); weights are secret. An
:class:`Architecture` is a chain of layers applied in order to an input of
shape ``(batch, *input_shape)``, or, when ``inputs`` is given, a directed
acyclic graph of them: layer ``i`` takes the outputs of the layers
``inputs[i]`` (``-1`` is the model input; every index points backwards, so
the layers are in topological order) and the last layer's output is the
model's. A residual network is such a graph, joined by :class:`Add` layers.
Each layer's secret parameters are named
``"{index}.{name}"``; :meth:`Architecture.parameter_shapes` lists them, and
that list is exactly what a model upload must carry, one share per name.
A token model (``tokens`` set, :mod:`.tokens`) takes integer token ids that
the client one-hot encodes to ``input_shape = (length, vocab)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from ppml.proto.domain import layers
from ppml.proto.domain.datasets import DataSource, grants
from ppml.proto.domain.layers import (
    GELU,
    Add,
    Affine,
    AvgPool2d,
    Bias,
    Concat,
    Conv2d,
    Flatten,
    Layer,
    LayerNorm,
    Linear,
    MatMul,
    MaxPool2d,
    Mean,
    ReLU,
    Reshape,
    Scale,
    Select,
    Sigmoid,
    Softmax,
    Tanh,
    Transpose,
)
from ppml.proto.domain.tokens import TokenInput

Pair = layers.Pair


MODEL_INPUT = -1  # the source index of the model's input in ``Architecture.inputs``


@dataclass(frozen=True)
class Architecture:
    """Layers (a chain, or a graph through ``inputs``), plus per-sample input and output shapes."""

    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    meta: dict[str, str] = field(default_factory=dict, compare=False)
    inputs: tuple[tuple[int, ...], ...] = ()  # per layer, its sources; () for a chain
    tokens: TokenInput | None = None  # token ids, one-hot of input_shape (tokens.py)

    def sources(self, index: int) -> tuple[int, ...]:
        """The layers whose outputs feed layer ``index`` (:data:`MODEL_INPUT` for the input)."""
        return self.inputs[index] if self.inputs else (index - 1,)

    @property
    def is_chain(self) -> bool:
        """Whether every layer takes exactly the previous layer's output."""
        return all(self.sources(i) == (i - 1,) for i in range(len(self.layers)))

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every secret parameter's name and shape, in layer order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for index, layer in enumerate(self.layers):
            for name, shape in layer.params().items():
                shapes[f"{index}.{name}"] = shape
        return shapes

    def describe(self) -> str:
        """A short human-readable summary, e.g. ``Linear(784→128) → ReLU``.

        A layer that does not take the previous one's output names its
        sources: ``Add[2, 5]``, ``Conv2d(16→32, 1x1)[input]``. A token model
        starts with ``Tokens(vocab, length)``.
        """
        tokens = self.tokens
        parts = [] if tokens is None else [f"Tokens({tokens.vocab}, {tokens.length})"]
        for index, layer in enumerate(self.layers):
            sources = self.sources(index)
            names = ("input" if s == MODEL_INPUT else str(s) for s in sources)
            parts.append(
                layer.describe() + ("" if sources == (index - 1,) else f"[{', '.join(names)}]")
            )
        return " → ".join(parts)


@dataclass(frozen=True)
class ModelMeta:
    """A stored model's public metadata (never its shares)."""

    model_id: str
    name: str
    owner: str
    architecture: Architecture
    created_unix_ms: int
    allowed: tuple[str, ...] = ()  # may predict and evaluate besides the owner; "*" any
    trained_on: tuple[DataSource, ...] = ()  # whose data trained it (empty: uploaded)

    def may_query(self, identity: str) -> bool:
        """Whether ``identity`` may predict with the model or evaluate it."""
        return grants(self.owner, self.allowed, identity)

    def withheld_by(self, identity: str) -> list[str]:
        """Owners of training data who have not released the model to ``identity``."""
        return sorted({s.owner for s in self.trained_on if not s.releases_to(identity)})

    @property
    def parameter_count(self) -> int:
        total = 0
        for shape in self.architecture.parameter_shapes().values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total


def check_tokens(a: Architecture) -> None:
    """ValueError unless ``tokens`` is unset or in range and matches ``input_shape``."""
    if a.tokens is None:
        return
    a.tokens.check()
    if tuple(a.input_shape) != a.tokens.input_shape:
        raise ValueError(
            f"a token model's input shape must be (length, vocab) = {a.tokens.input_shape}, "
            f"got {tuple(a.input_shape)}"
        )


def check_graph(a: Architecture) -> None:
    """ValueError unless ``inputs`` is empty or a graph the layers can run.

    One source list per layer, each of the layer's arity, every index
    pointing backwards (or at the model input), and every layer's output
    used by a later layer except the last one's (no dead branches).
    """
    if not a.inputs:
        return
    if len(a.inputs) != len(a.layers):
        raise ValueError(f"{len(a.inputs)} input lists for {len(a.layers)} layers")
    used: set[int] = set()
    for index, (layer, sources) in enumerate(zip(a.layers, a.inputs, strict=True)):
        name = f"layer {index} ({type(layer).__name__})"
        if len(sources) != layer.ARITY:
            raise ValueError(f"{name} takes {layer.ARITY} input(s), is given {len(sources)}")
        if any(not MODEL_INPUT <= s < index for s in sources):
            raise ValueError(f"{name} takes inputs {list(sources)}: each must be an earlier layer")
        used.update(sources)
    unused = [i for i in range(len(a.layers) - 1) if i not in used]
    if unused:
        raise ValueError(f"the output of layer {unused[0]} is never used")


def infer_output_shape(a: Architecture) -> tuple[int, ...]:
    """Propagate one sample's shape through the layers; ValueError on a mismatch."""
    shapes = layer_shapes(a)
    return shapes[-1] if shapes else a.input_shape


def layer_shapes(a: Architecture) -> list[tuple[int, ...]]:
    """One sample's shape after each layer; ValueError on a mismatch or a bad graph."""
    check_graph(a)
    shapes: list[tuple[int, ...]] = []
    for index, layer in enumerate(a.layers):
        ins = tuple(a.input_shape if s == MODEL_INPUT else shapes[s] for s in a.sources(index))
        try:
            shapes.append(layer.join_shapes(ins))
        except ValueError as exc:
            raise ValueError(f"layer {index} ({type(layer).__name__}) {exc}") from None
    return shapes


def build_modules(a: Architecture, nn: Any) -> list[Any]:
    """One module per layer from ``torch.nn`` or ``crypten.nn`` (parameters at defaults)."""
    return [layer.module(nn) for layer in a.layers]


def build_model(a: Architecture, nn: Any) -> Any:
    """The whole model as one module: a ``Sequential`` for a chain, else a :func:`graph_class`."""
    modules = build_modules(a, nn)
    if a.is_chain:
        return nn.Sequential(*modules)
    return graph_class(nn)(modules, tuple(a.sources(i) for i in range(len(a.layers))))


@functools.cache
def graph_class(nn: Any) -> type:
    """A module running layer modules over a graph, for ``torch.nn`` or ``crypten.nn``.

    Its children are named ``"0"``, ``"1"``, ... like a ``Sequential``'s, so
    parameter names (``"{index}.{name}"``) are the architecture's.
    """

    def init(self: Any, modules: list[Any], sources: tuple[tuple[int, ...], ...]) -> None:
        nn.Module.__init__(self)
        for index, module in enumerate(modules):
            self.register_module(str(index), module)
        self.sources = sources

    def forward(self: Any, x: Any) -> Any:
        outs: list[Any] = []
        for module, sources in zip(self._modules.values(), self.sources, strict=True):
            outs.append(module(*(x if s == MODEL_INPUT else outs[s] for s in sources)))
        return outs[-1]

    return type("Graph", (nn.Module,), {"__init__": init, "forward": forward})


__all__ = [
    "GELU",
    "MODEL_INPUT",
    "Add",
    "Affine",
    "Architecture",
    "AvgPool2d",
    "Bias",
    "Concat",
    "Conv2d",
    "Flatten",
    "Layer",
    "LayerNorm",
    "Linear",
    "MatMul",
    "MaxPool2d",
    "Mean",
    "ModelMeta",
    "Pair",
    "ReLU",
    "Reshape",
    "Scale",
    "Select",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "TokenInput",
    "Transpose",
    "build_model",
    "build_modules",
    "check_graph",
    "check_tokens",
    "graph_class",
    "infer_output_shape",
    "layer_shapes",
]
