"""A transformer's shape and arithmetic layer kinds (see :mod:`.layer_kind`).

Shapes are per sample (no batch dimension) and public: a :class:`Reshape`'s
target, a :class:`Transpose`'s permutation and so a sequence's length are
part of the architecture. Only :class:`Bias` has a secret parameter.

On CrypTen ``MPCTensor`` s, :class:`MatMul` of two activations is one Beaver
product (exact up to the fixed-point truncation, 2^-16 per product term);
:class:`Transpose`, :class:`Reshape` and :class:`Bias` move or add shares
locally (exact); :class:`Scale` multiplies by the factor encoded in fixed
point (absolute error of the factor at most 2^-17) and :class:`Mean` divides
by a public count (one truncation, error at most about 2^-16). :class:`Select`
(CLS pooling) and :class:`Concat` pick and join shares locally (exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ppml.proto.domain.layer_kind import OpLayer, Shape, positive, register
from ppml.proto.shares import FRACTIONAL_BITS

SCALE_RANGE = (2.0**-FRACTIONAL_BITS, 2.0**FRACTIONAL_BITS)  # |factor| a fixed-point value can be


@register("matmul")
@dataclass(frozen=True)
class MatMul(OpLayer):
    """``a @ b`` of two activations over their last two dims, e.g. attention's QKᵀ and AV.

    ``a`` ``(..., n, k)`` and ``b`` ``(..., k, m)`` give ``(..., n, m)``; the
    leading dims (e.g. heads) must be equal (no broadcasting).
    """

    ARITY: ClassVar[int] = 2

    def join_shapes(self, shapes: tuple[Shape, ...]) -> Shape:
        if len(shapes) != 2:
            raise ValueError(f"takes 2 inputs, gets {len(shapes)}")
        a, b = shapes
        if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
            raise ValueError(f"cannot multiply {a} by {b} (needs (..., n, k) and (..., k, m))")
        return (*a[:-1], b[-1])

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        return xs[0].matmul(xs[1])


@register("transpose")
@dataclass(frozen=True)
class Transpose(OpLayer):
    """Permutes one sample's dims: output dim ``i`` is input dim ``perm[i]`` (batch fixed)."""

    perm: Shape

    def check(self) -> None:
        if sorted(self.perm) != list(range(len(self.perm))) or len(self.perm) < 2:
            raise ValueError(f"Transpose perm {list(self.perm)} is not a permutation of 2+ dims")

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != len(self.perm):
            raise ValueError(f"permutes {len(self.perm)} dims, gets {shape}")
        return tuple(shape[p] for p in self.perm)

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        return xs[0].permute(0, *(p + 1 for p in self.perm))

    def describe(self) -> str:
        return f"Transpose{tuple(self.perm)}"


@register("reshape")
@dataclass(frozen=True)
class Reshape(OpLayer):
    """One sample to the static ``shape`` (same element count), e.g. splitting heads."""

    shape: Shape

    def check(self) -> None:
        if not self.shape or not positive(*self.shape):
            raise ValueError(f"Reshape target {list(self.shape)} must be positive dims")

    def out_shape(self, shape: Shape) -> Shape:
        if math.prod(shape) != math.prod(self.shape):
            raise ValueError(f"cannot reshape {shape} to {self.shape}")
        return self.shape

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        return xs[0].reshape(xs[0].shape[0], *self.shape)

    def describe(self) -> str:
        return f"Reshape{tuple(self.shape)}"


@register("scale")
@dataclass(frozen=True)
class Scale(OpLayer):
    """``x * factor`` for a public constant, e.g. attention's ``1 / sqrt(d_head)``.

    ``|factor|`` is in :data:`SCALE_RANGE` (2^-16 to 2^16): the servers encode it
    in fixed point with 16 fractional bits.
    """

    factor: float

    def check(self) -> None:
        low, high = SCALE_RANGE
        if not (math.isfinite(self.factor) and low <= abs(self.factor) <= high):
            raise ValueError(f"Scale factor must have a size in [2^-16, 2^16], got {self.factor}")

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        return xs[0] * self.factor

    def describe(self) -> str:
        return f"Scale({self.factor:.4g})"


@register("bias")
@dataclass(frozen=True)
class Bias(OpLayer):
    """``x + bias`` for a secret ``bias`` of ``shape`` broadcasting to one sample.

    E.g. a learned positional embedding ``(tokens, d)``; each dim of ``shape``
    is 1 or the sample's.
    """

    shape: Shape

    def check(self) -> None:
        if not self.shape or not positive(*self.shape):
            raise ValueError("Bias shape must be positive")

    def params(self) -> dict[str, Shape]:
        return {"bias": self.shape}

    def out_shape(self, shape: Shape) -> Shape:
        if len(self.shape) != len(shape) or any(
            s not in (1, d) for s, d in zip(self.shape, shape, strict=True)
        ):
            raise ValueError(f"bias {self.shape} does not broadcast to {shape}")
        return shape

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        return xs[0] + params["bias"]

    def describe(self) -> str:
        return f"Bias{tuple(self.shape)}"


@register("mean")
@dataclass(frozen=True)
class Mean(OpLayer):
    """The mean over one sample dim ``axis`` (dropped), e.g. pooling a sequence's tokens."""

    axis: int

    def check(self) -> None:
        if self.axis < 0:
            raise ValueError(f"Mean axis must be a sample dim >= 0, got {self.axis}")

    def out_shape(self, shape: Shape) -> Shape:
        if self.axis >= len(shape):
            raise ValueError(f"has no axis {self.axis} in {shape}")
        return shape[: self.axis] + shape[self.axis + 1 :]

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        return xs[0].mean(self.axis + 1)

    def describe(self) -> str:
        return f"Mean(axis {self.axis})"


@register("select")
@dataclass(frozen=True)
class Select(OpLayer):
    """Entry ``index`` of one sample dim ``axis`` (dropped), e.g. CLS pooling ``x[:, 0]``."""

    axis: int
    index: int

    def check(self) -> None:
        if self.axis < 0 or self.index < 0:
            raise ValueError(f"Select axis and index must be >= 0, got {self.axis}, {self.index}")

    def out_shape(self, shape: Shape) -> Shape:
        if self.axis >= len(shape) or self.index >= shape[self.axis]:
            raise ValueError(f"has no entry {self.index} on axis {self.axis} of {shape}")
        return shape[: self.axis] + shape[self.axis + 1 :]

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        return xs[0][(slice(None),) * (self.axis + 1) + (self.index,)]

    def describe(self) -> str:
        return f"Select(axis {self.axis}, {self.index})"


@register("concat")
@dataclass(frozen=True)
class Concat(OpLayer):
    """Two activations joined along one sample dim ``axis`` (the other dims equal)."""

    ARITY: ClassVar[int] = 2
    axis: int

    def check(self) -> None:
        if self.axis < 0:
            raise ValueError(f"Concat axis must be a sample dim >= 0, got {self.axis}")

    def join_shapes(self, shapes: tuple[Shape, ...]) -> Shape:
        if len(shapes) != 2:
            raise ValueError(f"takes 2 inputs, gets {len(shapes)}")
        a, b = shapes
        k = self.axis
        if k >= len(a) or len(a) != len(b) or a[:k] + a[k + 1 :] != b[:k] + b[k + 1 :]:
            raise ValueError(f"cannot join {a} and {b} along axis {k}")
        return (*a[:k], a[k] + b[k], *a[k + 1 :])

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        if plain:
            import torch

            return torch.cat(list(xs), self.axis + 1)
        return type(xs[0]).cat(list(xs), dim=self.axis + 1)  # MPCTensor.cat, as crypten.cat

    def describe(self) -> str:
        return f"Concat(axis {self.axis})"
