"""Every layer kind a secret-shared model may use, each in one place.

A layer kind is one frozen dataclass registered under its ``Layer`` oneof
name in ``ppml/v1/common.proto``. The class holds everything about the kind:
its public fields (copied field by field to and from the proto message of
the same field names by :mod:`ppml.proto.wire.serde`), :meth:`check` of those
fields, its secret parameters (:meth:`params`), how it transforms one
sample's shape (:meth:`out_shape`), and how to build it as a module of a
``torch.nn``-like namespace (:meth:`module`): ``torch.nn`` for a plaintext
model on the owner's machine, ``crypten.nn`` for one party's MPC model.

This module holds the kinds of convolutional and residual networks; a
transformer's kinds are in :mod:`.tensor_layers` and :mod:`.nonlinear_layers`
(what every kind is: :mod:`.layer_kind`). Adding a layer kind means one class
with ``@register("name")`` in one of them, its message in ``common.proto``
and its member of :data:`Layer` (plus its ONNX pattern in the client's parser).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from ppml.proto.domain.layer_kind import KINDS, LayerBase, Pair, Shape, register
from ppml.proto.domain.layer_kind import positive as _positive
from ppml.proto.domain.nonlinear_layers import GELU, LayerNorm, Sigmoid, Softmax, Tanh
from ppml.proto.domain.tensor_layers import (
    Bias,
    Concat,
    MatMul,
    Mean,
    Reshape,
    Scale,
    Select,
    Transpose,
)


def _pair_ok(pair: Pair, minimum: int) -> bool:
    return len(pair) == 2 and all(v >= minimum for v in pair)


@register("linear")
@dataclass(frozen=True)
class Linear(LayerBase):
    """``y = x @ weight.T + bias`` over the last dim; weight ``(out, in)``, bias ``(out,)``.

    One sample ``(..., in)`` becomes ``(..., out)``: a feature vector, or every
    token of a sequence ``(tokens, in)`` (a transformer's projections).
    """

    in_features: int
    out_features: int
    bias: bool = True

    def check(self) -> None:
        if not _positive(self.in_features, self.out_features):
            raise ValueError("Linear sizes must be positive")

    def params(self) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def out_shape(self, shape: Shape) -> Shape:
        if not shape or shape[-1] != self.in_features:
            raise ValueError(f"expects (..., {self.in_features}), gets {shape}")
        return (*shape[:-1], self.out_features)

    def module(self, nn: Any) -> Any:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias)

    def describe(self) -> str:
        return f"Linear({self.in_features}→{self.out_features})"


def _window_out(shape: Shape, channels: int, kernel: Pair, stride: Pair, pad: Pair,
                dilation: Pair = (1, 1)) -> Shape:  # fmt: skip
    if len(shape) != 3:
        raise ValueError(f"expects (C, H, W), gets {shape}")
    if min(stride) <= 0 or min(kernel) <= 0:
        raise ValueError("needs positive kernel size and stride")
    h, w = (
        (shape[1 + i] + 2 * pad[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
        for i in range(2)
    )
    if h <= 0 or w <= 0:
        raise ValueError(f"produces an empty output from {shape}")
    return (channels, h, w)


@register("conv2d")
@dataclass(frozen=True)
class Conv2d(LayerBase):
    """2-D convolution; weight ``(out, in // groups, kh, kw)``, bias ``(out,)``."""

    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    bias: bool = True

    def check(self) -> None:
        if not _positive(self.in_channels, self.out_channels, self.groups):
            raise ValueError("Conv2d sizes must be positive")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError("channels not divisible by groups")
        for name, minimum in (("kernel_size", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
            if not _pair_ok(getattr(self, name), minimum):
                raise ValueError(f"{name} must be two ints >= {minimum}")

    def params(self) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {
            "weight": (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        }
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) == 3 and shape[0] != self.in_channels:
            raise ValueError(f"expects {self.in_channels} channels, gets {shape}")
        return _window_out(
            shape, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation
        )

    def module(self, nn: Any) -> Any:
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias,
        )

    def describe(self) -> str:
        k = "x".join(map(str, self.kernel_size))
        return f"Conv2d({self.in_channels}→{self.out_channels}, {k})"


@register("relu")
@dataclass(frozen=True)
class ReLU(LayerBase):
    """Element-wise ``max(x, 0)``."""

    def module(self, nn: Any) -> Any:
        return nn.ReLU()


@dataclass(frozen=True)
class _Pool2d(LayerBase):
    kernel_size: Pair
    stride: Pair
    padding: Pair = (0, 0)

    def check(self) -> None:
        for name, minimum in (("kernel_size", 1), ("stride", 1), ("padding", 0)):
            if not _pair_ok(getattr(self, name), minimum):
                raise ValueError(f"{name} must be two ints >= {minimum}")

    def out_shape(self, shape: Shape) -> Shape:
        channels = shape[0] if shape else 0
        return _window_out(shape, channels, self.kernel_size, self.stride, self.padding)

    def module(self, nn: Any) -> Any:
        pool = getattr(nn, type(self).__name__)
        return pool(self.kernel_size, stride=self.stride, padding=self.padding)


@register("avg_pool2d")
@dataclass(frozen=True)
class AvgPool2d(_Pool2d):
    """Average pooling (zero padding counted, as torch's default)."""


@register("max_pool2d")
@dataclass(frozen=True)
class MaxPool2d(_Pool2d):
    """Max pooling."""


@register("flatten")
@dataclass(frozen=True)
class Flatten(LayerBase):
    """Flattens every dimension after the batch dimension."""

    def out_shape(self, shape: Shape) -> Shape:
        size = 1
        for dim in shape:
            size *= dim
        return (size,)

    def module(self, nn: Any) -> Any:
        return nn.Flatten()


@register("add")
@dataclass(frozen=True)
class Add(LayerBase):
    """Element-wise sum of two tensors of one shape: a residual (skip) connection."""

    ARITY: ClassVar[int] = 2

    def join_shapes(self, shapes: tuple[Shape, ...]) -> Shape:
        if len(shapes) != 2:
            raise ValueError(f"takes 2 inputs, gets {len(shapes)}")
        if shapes[0] != shapes[1]:
            raise ValueError(f"adds tensors of different shapes {shapes[0]} and {shapes[1]}")
        return shapes[0]

    def module(self, nn: Any) -> Any:
        return add_class(nn)()


@functools.cache
def add_class(nn: Any) -> type:
    """The two-input ``a + b`` module class for ``torch.nn`` or ``crypten.nn``."""

    def forward(self: Any, a: Any, b: Any) -> Any:
        return a + b

    return type("Add", (nn.Module,), {"forward": forward})


@register("affine")
@dataclass(frozen=True)
class Affine(LayerBase):
    """``y = x * scale + shift`` per feature: a BatchNorm in eval mode, or standardisation.

    ``shape`` broadcasts against one sample, e.g. ``(C, 1, 1)`` after a
    convolution or ``(F,)`` after a linear layer.
    """

    shape: Shape

    def check(self) -> None:
        if not self.shape or not _positive(*self.shape):
            raise ValueError("Affine shape must be positive")

    def params(self) -> dict[str, Shape]:
        return {"scale": self.shape, "shift": self.shape}

    def out_shape(self, shape: Shape) -> Shape:
        if len(self.shape) != len(shape) or any(
            s not in (1, d) for s, d in zip(self.shape, shape, strict=True)
        ):
            raise ValueError(f"shape {self.shape} does not broadcast to {shape}")
        return shape

    def module(self, nn: Any) -> Any:
        return affine_class(nn)(self.shape)


@functools.cache
def affine_class(nn: Any) -> type:
    """The ``x * scale + shift`` module class for ``torch.nn`` or ``crypten.nn``.

    Neither namespace has one; this is the only definition (the owner's
    exported model, the plaintext twin's standardisation and each party's
    MPC model all build it here).
    """
    import torch

    def init(self: Any, shape: Shape) -> None:
        nn.Module.__init__(self)
        for name, value in (("scale", torch.ones(shape)), ("shift", torch.zeros(shape))):
            # torch.nn wants a Parameter; crypten.nn takes the tensor it will later encrypt
            param = torch.nn.Parameter(value) if nn is torch.nn else value
            self.register_parameter(name, param)

    def forward(self: Any, x: Any) -> Any:
        return x * self.scale + self.shift

    return type("Affine", (nn.Module,), {"__init__": init, "forward": forward})


Layer = (
    Linear | Conv2d | ReLU | AvgPool2d | MaxPool2d | Flatten | Affine | Add
    | MatMul | Transpose | Reshape | Scale | Bias | Mean | Select | Concat
    | Softmax | LayerNorm | GELU | Tanh | Sigmoid
)  # fmt: skip

__all__ = [
    "GELU",
    "KINDS",
    "Add",
    "Affine",
    "AvgPool2d",
    "Bias",
    "Concat",
    "Conv2d",
    "Flatten",
    "Layer",
    "LayerBase",
    "LayerNorm",
    "Linear",
    "MatMul",
    "MaxPool2d",
    "Mean",
    "Pair",
    "ReLU",
    "Reshape",
    "Scale",
    "Select",
    "Shape",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "Transpose",
    "add_class",
    "affine_class",
    "register",
]
