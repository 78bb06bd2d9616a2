"""The public architecture of a secret-shared model.

Layer types and sizes are public (docs/architecture.md); weights are secret. An
:class:`Architecture` is a chain of layers applied in order to an input of
shape ``(batch, *input_shape)``. Each layer's secret parameters are named
``"{index}.{name}"``; :meth:`Architecture.parameter_shapes` lists them, and
that list is exactly what a model upload must carry, one share per name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ppml.proto.domain import layers
from ppml.proto.domain.datasets import DataSource, grants
from ppml.proto.domain.layers import (
    Affine,
    AvgPool2d,
    Conv2d,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
)

Pair = layers.Pair


@dataclass(frozen=True)
class Architecture:
    """A chain of layers, plus the per-sample input and output shapes."""

    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    meta: dict[str, str] = field(default_factory=dict, compare=False)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every secret parameter's name and shape, in layer order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for index, layer in enumerate(self.layers):
            for name, shape in layer.params().items():
                shapes[f"{index}.{name}"] = shape
        return shapes

    def describe(self) -> str:
        """A short human-readable summary, e.g. ``Linear(784→128) → ReLU``."""
        return " → ".join(layer.describe() for layer in self.layers)


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


def infer_output_shape(a: Architecture) -> tuple[int, ...]:
    """Propagate one sample's shape through the chain; ValueError on a mismatch."""
    shape = a.input_shape
    for index, layer in enumerate(a.layers):
        try:
            shape = layer.out_shape(shape)
        except ValueError as exc:
            raise ValueError(f"layer {index} ({type(layer).__name__}) {exc}") from None
    return shape


def build_modules(a: Architecture, nn: Any) -> list[Any]:
    """One module per layer from ``torch.nn`` or ``crypten.nn`` (parameters at defaults)."""
    return [layer.module(nn) for layer in a.layers]


__all__ = [
    "Affine",
    "Architecture",
    "AvgPool2d",
    "Conv2d",
    "Flatten",
    "Layer",
    "Linear",
    "MaxPool2d",
    "ModelMeta",
    "Pair",
    "ReLU",
    "build_modules",
    "infer_output_shape",
]
