"""The public architecture of a secret-shared model.

Layer types and sizes are public (ARCHITECTURE.md); weights are secret. An
:class:`Architecture` is a chain of layers applied in order to an input of
shape ``(batch, *input_shape)``. Each layer's secret parameters are named
``"{index}.{name}"``; :meth:`Architecture.parameter_shapes` lists them, and
that list is exactly what a model upload must carry, one share per name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Pair = tuple[int, int]


@dataclass(frozen=True)
class Linear:
    """``y = x @ weight.T + bias``; weight ``(out, in)``, bias ``(out,)``."""

    in_features: int
    out_features: int
    bias: bool = True

    def params(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes


@dataclass(frozen=True)
class Conv2d:
    """2-D convolution; weight ``(out, in // groups, kh, kw)``, bias ``(out,)``."""

    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    bias: bool = True

    def params(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {
            "weight": (
                self.out_channels,
                self.in_channels // self.groups,
                *self.kernel_size,
            )
        }
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes


@dataclass(frozen=True)
class ReLU:
    """Element-wise ``max(x, 0)``."""

    def params(self) -> dict[str, tuple[int, ...]]:
        return {}


@dataclass(frozen=True)
class AvgPool2d:
    """Average pooling (zero padding counted, as torch's default)."""

    kernel_size: Pair
    stride: Pair
    padding: Pair = (0, 0)

    def params(self) -> dict[str, tuple[int, ...]]:
        return {}


@dataclass(frozen=True)
class MaxPool2d:
    """Max pooling."""

    kernel_size: Pair
    stride: Pair
    padding: Pair = (0, 0)

    def params(self) -> dict[str, tuple[int, ...]]:
        return {}


@dataclass(frozen=True)
class Flatten:
    """Flattens every dimension after the batch dimension."""

    def params(self) -> dict[str, tuple[int, ...]]:
        return {}


@dataclass(frozen=True)
class Affine:
    """``y = x * scale + shift`` per feature: a BatchNorm in eval mode.

    ``shape`` broadcasts against one sample, e.g. ``(C, 1, 1)`` after a
    convolution or ``(F,)`` after a linear layer.
    """

    shape: tuple[int, ...]

    def params(self) -> dict[str, tuple[int, ...]]:
        return {"scale": self.shape, "shift": self.shape}


Layer = Linear | Conv2d | ReLU | AvgPool2d | MaxPool2d | Flatten | Affine


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
        parts = []
        for layer in self.layers:
            if isinstance(layer, Linear):
                parts.append(f"Linear({layer.in_features}→{layer.out_features})")
            elif isinstance(layer, Conv2d):
                k = "x".join(map(str, layer.kernel_size))
                parts.append(f"Conv2d({layer.in_channels}→{layer.out_channels}, {k})")
            else:
                parts.append(type(layer).__name__)
        return " → ".join(parts)


@dataclass(frozen=True)
class ModelMeta:
    """A stored model's public metadata (never its shares)."""

    model_id: str
    name: str
    owner: str
    architecture: Architecture
    created_unix_ms: int

    @property
    def parameter_count(self) -> int:
        total = 0
        for shape in self.architecture.parameter_shapes().values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total


def _pool_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def infer_output_shape(a: Architecture) -> tuple[int, ...]:
    """Propagate one sample's shape through the chain; ValueError on a mismatch."""
    shape = a.input_shape
    for index, layer in enumerate(a.layers):
        where = f"layer {index} ({type(layer).__name__})"
        if isinstance(layer, Linear):
            if shape != (layer.in_features,):
                raise ValueError(f"{where} expects ({layer.in_features},), gets {shape}")
            shape = (layer.out_features,)
        elif isinstance(layer, Conv2d | AvgPool2d | MaxPool2d):
            if len(shape) != 3:
                raise ValueError(f"{where} expects (C, H, W), gets {shape}")
            if min(layer.stride) <= 0 or min(layer.kernel_size) <= 0:
                raise ValueError(f"{where} needs positive kernel size and stride")
            channels = shape[0]
            dilation = layer.dilation if isinstance(layer, Conv2d) else (1, 1)
            if isinstance(layer, Conv2d):
                if channels != layer.in_channels:
                    raise ValueError(f"{where} expects {layer.in_channels} channels, gets {shape}")
                channels = layer.out_channels
            h, w = (
                _pool_out(
                    shape[1 + i],
                    layer.kernel_size[i],
                    layer.stride[i],
                    layer.padding[i],
                    dilation[i],
                )
                for i in range(2)
            )
            if h <= 0 or w <= 0:
                raise ValueError(f"{where} produces an empty output from {shape}")
            shape = (channels, h, w)
        elif isinstance(layer, Flatten):
            size = 1
            for dim in shape:
                size *= dim
            shape = (size,)
        elif isinstance(layer, Affine) and (
            len(layer.shape) != len(shape)
            or any(s not in (1, d) for s, d in zip(layer.shape, shape, strict=True))
        ):
            raise ValueError(f"{where} shape {layer.shape} does not broadcast to {shape}")
    return shape


def build_modules(a: Architecture, nn: Any, affine: Callable[[tuple[int, ...]], Any]) -> list[Any]:
    """One module per layer from a ``torch.nn``-like namespace.

    ``nn`` is ``torch.nn`` (a plaintext model on the owner's machine) or
    ``crypten.nn`` (one party's MPC model): both take the same arguments.
    ``affine(shape)`` builds the per-feature ``x * scale + shift`` layer, which
    neither namespace has. Parameters are left at their defaults.
    """
    modules = []
    for layer in a.layers:
        if isinstance(layer, Linear):
            modules.append(nn.Linear(layer.in_features, layer.out_features, bias=layer.bias))
        elif isinstance(layer, Conv2d):
            modules.append(
                nn.Conv2d(
                    layer.in_channels,
                    layer.out_channels,
                    layer.kernel_size,
                    stride=layer.stride,
                    padding=layer.padding,
                    dilation=layer.dilation,
                    groups=layer.groups,
                    bias=layer.bias,
                )
            )
        elif isinstance(layer, ReLU):
            modules.append(nn.ReLU())
        elif isinstance(layer, AvgPool2d | MaxPool2d):
            pool = nn.AvgPool2d if isinstance(layer, AvgPool2d) else nn.MaxPool2d
            modules.append(pool(layer.kernel_size, stride=layer.stride, padding=layer.padding))
        elif isinstance(layer, Flatten):
            modules.append(nn.Flatten())
        elif isinstance(layer, Affine):
            modules.append(affine(layer.shape))
        else:
            raise TypeError(f"unsupported layer {layer!r}")
    return modules
