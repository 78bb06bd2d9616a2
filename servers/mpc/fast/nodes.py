"""The fast engine's public model: node kinds and :class:`ModelSpec`, a chain or a DAG of them.

A model is a list of nodes in topological order. Node ``i`` reads the outputs
of the nodes ``spec.sources(i)`` (``-1`` is the model input); with ``inputs``
empty the model is a chain (node ``i`` reads node ``i - 1``). The model's
output is the last node's output. Node kinds:

* :class:`~ppml.servers.mpc.fast.linear.Linear`,
  :class:`~ppml.servers.mpc.fast.linear.Conv2d` -- weighted layers (weights
  secret-shared, the layer public);
* :class:`ReLU`, :class:`Flatten` (reshape to ``(batch, -1)``);
* :class:`GELU`, :class:`Tanh`, :class:`Sigmoid` -- element-wise activations
  as spline gates (:mod:`.activations`, each within 1e-2);
* :class:`Softmax` -- over the last axis: a row maximum (ReLU tournament),
  exp and row-reciprocal spline gates, an element-wise Beaver product;
* :class:`LayerNorm` -- over the last dim: a local mean, an element-wise
  Beaver square, a reciprocal-square-root spline, the weight by an
  element-wise product, the bias added;
* :class:`Add` -- two inputs of one shape (a residual connection);
* :class:`AvgPool`, :class:`MaxPool` -- square window ``kernel``, ``stride``,
  no padding, on (C, H, W);
* a transformer's linear half (:mod:`.tensor_ops`): :class:`MatMul` of two
  activations, :class:`Transpose`, :class:`Reshape`, :class:`Scale`,
  :class:`Bias` (a secret parameter), :class:`Mean`, :class:`Select` (CLS
  pooling), :class:`Concat`; with a Linear on the
  last dim of an N-D sample (``Linear.lead``).

How a spec runs, gate by gate, is :mod:`.graph`'s business; this module only
holds the public description (what the dealer and both parties agree on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar, TypeAlias

from ppml.servers.mpc.fast.gates import GateParams
from ppml.servers.mpc.fast.linear import Conv2d, Linear, WeightedOp
from ppml.servers.mpc.fast.tensor_ops import (
    Bias,
    Concat,
    MatMul,
    Mean,
    Reshape,
    Scale,
    Select,
    Transpose,
)

MODEL_INPUT = -1


@dataclass(frozen=True)
class ReLU:
    """``max(x, 0)`` element-wise."""

    arity: ClassVar[int] = 1


@dataclass(frozen=True)
class GELU:
    """``x Phi(x)`` element-wise, as the spline :data:`~.activations.GELU` (within 1e-2)."""

    arity: ClassVar[int] = 1
    kind: ClassVar[str] = "gelu"


@dataclass(frozen=True)
class Tanh:
    """``tanh(x)`` element-wise, as the spline :data:`~.activations.TANH` (within 1e-2)."""

    arity: ClassVar[int] = 1
    kind: ClassVar[str] = "tanh"


@dataclass(frozen=True)
class Sigmoid:
    """``1 / (1 + exp(-x))`` element-wise, as the spline :data:`~.activations.SIGMOID`."""

    arity: ClassVar[int] = 1
    kind: ClassVar[str] = "sigmoid"


Activation: TypeAlias = GELU | Tanh | Sigmoid

MAX_ROW = 128  # softmax rows: the row reciprocal's domain [1, 130] holds their sums


@dataclass(frozen=True)
class Softmax:
    """Softmax over the last axis of rows of at most :data:`MAX_ROW` entries (graph.py)."""

    arity: ClassVar[int] = 1


@dataclass(frozen=True)
class LayerNorm:
    """Normalise over the last dim (``dim`` entries), then a secret weight and bias (graph.py).

    Two secret parameters of shape ``(dim,)``, the weight then the bias (each
    party's shares in :attr:`PartyModel.params` order).
    """

    dim: int
    eps: float = 1e-5
    arity: ClassVar[int] = 1


@dataclass(frozen=True)
class Flatten:
    """Reshape to (batch, -1); no computation."""

    arity: ClassVar[int] = 1


@dataclass(frozen=True)
class Add:
    """``a + b`` for two inputs of one shape (a residual connection)."""

    arity: ClassVar[int] = 2


@dataclass(frozen=True)
class AvgPool:
    """Mean over square ``kernel`` x ``kernel`` windows every ``stride``, no padding."""

    kernel: int
    stride: int
    arity: ClassVar[int] = 1


@dataclass(frozen=True)
class MaxPool:
    """Maximum over square ``kernel`` x ``kernel`` windows every ``stride``, no padding."""

    kernel: int
    stride: int
    arity: ClassVar[int] = 1


Node: TypeAlias = (
    Linear | Conv2d | ReLU | Flatten | Add | AvgPool | MaxPool | GELU | Tanh | Sigmoid
    | MatMul | Transpose | Reshape | Scale | Bias | Mean | Softmax | LayerNorm
    | Select | Concat
)  # fmt: skip
Layer: TypeAlias = Node  # the name the chain engine used


def arity(node: Node) -> int:
    """How many inputs ``node`` reads."""
    return 1 if isinstance(node, Linear | Conv2d) else node.arity


@dataclass(frozen=True)
class Stage:
    """One weighted layer and the gate after it (``relu`` or ``trunc``): a chain's unit."""

    op: WeightedOp
    gate: str


@dataclass(frozen=True)
class ModelSpec:
    """Public architecture: nodes, their inputs (``()``: a chain), input shape, parameters."""

    layers: tuple[Node, ...]
    input_shape: tuple[int, ...]
    params: GateParams = field(default_factory=GateParams)
    inputs: tuple[tuple[int, ...], ...] = ()

    def sources(self, index: int) -> tuple[int, ...]:
        """The nodes whose outputs feed node ``index`` (:data:`MODEL_INPUT` for the input)."""
        return self.inputs[index] if self.inputs else (index - 1,)

    @property
    def weighted(self) -> tuple[WeightedOp, ...]:
        """The weighted layers in order (one weight mask, one weight share each)."""
        return tuple(n for n in self.layers if isinstance(n, Linear | Conv2d))

    @property
    def biases(self) -> tuple[Bias, ...]:
        """The :class:`Bias` nodes in order (one secret parameter share each)."""
        return tuple(n for n in self.layers if isinstance(n, Bias))

    @cached_property
    def stages(self) -> tuple[Stage, ...]:
        """The spec as a chain of weighted layers each optionally followed by ReLU.

        For engines that run only such chains (the replicated engine); raises
        ValueError for anything else (a DAG, pooling, a ReLU not right after a
        weighted layer, a shape mismatch).
        """
        if self.inputs and any(s != (i - 1,) for i, s in enumerate(self.inputs)):
            raise ValueError("the model is a graph, not a chain")
        stages: list[Stage] = []
        size = _size(self.input_shape)
        for layer in self.layers:
            if isinstance(layer, Flatten):
                continue
            if isinstance(layer, ReLU):
                if not stages or stages[-1].gate == "relu":
                    raise ValueError("ReLU must follow a Linear or Conv2d layer")
                stages[-1] = Stage(stages[-1].op, "relu")
                continue
            if not isinstance(layer, Linear | Conv2d) or (isinstance(layer, Linear) and layer.lead):
                raise ValueError(f"{layer} is not a chain layer")
            if _size(layer.in_shape) != size:
                raise ValueError(f"{layer} expects {layer.in_shape}, gets {size} values")
            stages.append(Stage(layer, "trunc"))
            size = _size(layer.out_shape)
        if not stages:
            raise ValueError("the model has no Linear or Conv2d layer")
        return tuple(stages)


def _size(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
