"""The ONNX parser's handlers for a transformer's ops (a mixin of ``onnx_graph._GraphParser``).

Each handler takes the node and its (first) activation and returns the
output tensor's name and value, emitting one layer. Shapes must be static
past the batch dimension: a reshape target is a constant, never computed
from ``x.shape`` (write the model with its sizes as module attributes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from ppml.client.onnx_common import Shape, Step, Value, attrs, unsupported
from ppml.proto.domain.architecture import Layer
from ppml.proto.domain.layers import (
    GELU,
    Bias,
    LayerNorm,
    MatMul,
    Mean,
    Reshape,
    Scale,
    Sigmoid,
    Softmax,
    Tanh,
    Transpose,
)

_SQRT2 = math.sqrt(2.0)


class TransformerOps:
    """Handlers for MatMul of two activations, Transpose, static Reshape, Softmax,
    LayerNormalization, GELU, Tanh, Sigmoid, scalar Mul/Div, a constant Add and ReduceMean."""

    consts: dict[str, np.ndarray]
    values: dict[str, Value]
    consumers: dict[str, list[onnx.NodeProto]]
    fused: set[int]
    output_name: str
    steps: list[Step]
    opset: int  # the default domain's version

    def _emit(self, node: onnx.NodeProto, layer: Layer, params: dict[str, np.ndarray],
              sources: tuple[int, ...], shape: Shape) -> tuple[str, Value]:  # fmt: skip
        raise NotImplementedError

    def transformer_handlers(
        self,
    ) -> dict[str, Callable[[onnx.NodeProto, Value], tuple[str, Value]]]:
        return {
            "Transpose": self._transpose,
            "Softmax": self._softmax,
            "LayerNormalization": self._layer_norm,
            "Gelu": self._gelu,
            "Tanh": self._elementwise,
            "Sigmoid": self._elementwise,
            "Mul": self._mul,
            "Div": self._div,
            "ReduceMean": self._reduce_mean,
        }

    # -- helpers ---------------------------------------------------------------

    def _other(self, node: onnx.NodeProto, x: str) -> str:
        """The input of a two-input node that is not ``x``."""
        if len(node.input) != 2:
            raise unsupported(node, f"with {len(node.input)} inputs")
        return node.input[1] if node.input[0] == x else node.input[0]

    def _scalar(self, node: onnx.NodeProto, name: str) -> float | None:
        """The constant ``name`` as a float if it is one value, else None."""
        value = self.consts.get(name)
        if value is None or np.asarray(value).size != 1:
            return None
        return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])

    def _sole_user(self, name: str, op: str) -> onnx.NodeProto | None:
        """The one node reading ``name`` if it is an ``op`` and ``name`` is not the output."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op and name != self.output_name:
            return users[0]
        return None

    def _axis(self, node: onnx.NodeProto, axis: int, shape: Shape) -> int:
        """``axis`` of a full shape as a per-sample axis; refuses the batch axis."""
        axis = axis % len(shape)
        if axis == 0:
            raise unsupported(node, "over the batch axis")
        return axis - 1

    # -- handlers --------------------------------------------------------------

    def _matmul_join(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        """``a @ b`` of two activations (attention's QKᵀ and AV)."""
        if node.input[0] not in self.values or node.input[1] not in self.values:
            raise unsupported(node, "multiplies a constant by an activation (only x @ W)")
        a, b = self.values[node.input[0]], self.values[node.input[1]]
        try:
            shape = MatMul().join_shapes((_sample(a[1]), _sample(b[1])))
        except ValueError as exc:
            raise unsupported(node, str(exc)) from None
        return self._emit(node, MatMul(), {}, (a[0], b[0]), (a[1][0], *shape))

    def _transpose(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        src, shape = x
        perm = [int(p) for p in attrs(node).get("perm", range(len(shape) - 1, -1, -1))]
        if sorted(perm) != list(range(len(shape))):
            raise unsupported(node, f"with perm {perm} on a {len(shape)}-D activation")
        if perm[0] != 0:
            raise unsupported(node, f"with perm {perm} moves the batch axis")
        if perm == sorted(perm):
            return node.output[0], x  # the identity
        layer = Transpose(tuple(p - 1 for p in perm[1:]))
        out = (shape[0], *(shape[p] for p in perm[1:]))
        return self._emit(node, layer, {}, (src,), out)

    def _static_reshape(
        self, node: onnx.NodeProto, x: Value, target: tuple[int, ...]
    ) -> tuple[str, Value]:
        """A reshape keeping the batch first (``target[0]``: -1 or 0) to a static sample shape."""
        src, shape = x
        count = math.prod(int(d) for d in shape[1:])
        head, rest = target[0], list(target[1:])
        if head not in (-1, 0) or not rest or any(d == 0 or d < -1 for d in rest):
            raise unsupported(node, f"to {list(target)} (only the batch first, static sizes)")
        if rest.count(-1) > (0 if head == -1 else 1):
            raise unsupported(node, f"to {list(target)} (more than one inferred size)")
        if -1 in rest:
            known = math.prod(d for d in rest if d != -1)
            rest[rest.index(-1)] = count // known if known and count % known == 0 else 0
        if math.prod(rest) != count:
            raise unsupported(node, f"to {list(target)}: not {count} values per sample")
        return self._emit(node, Reshape(tuple(rest)), {}, (src,), (shape[0], *rest))

    def _softmax(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        """Over the last axis (before opset 13, over the dims from ``axis`` on: the same then)."""
        axis = int(attrs(node).get("axis", -1 if self.opset >= 13 else 1))
        if self._axis(node, axis, x[1]) != len(x[1]) - 2:
            raise unsupported(node, "over an axis other than the last")
        return self._emit(node, Softmax(), {}, (x[0],), x[1])

    def _layer_norm(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        found = attrs(node)
        src, shape = x
        if self._axis(node, int(found.get("axis", -1)), shape) != len(shape) - 2:
            raise unsupported(node, "over axes other than the last")
        if any(o for o in node.output[1:]):
            raise unsupported(node, "with its mean or inverse deviation output used")
        size = int(shape[-1])
        weight = self._vector_input(node, 1, size, 1.0)
        bias = self._vector_input(node, 2, size, 0.0)
        layer = LayerNorm(size, float(found.get("epsilon", 1e-5)))
        try:
            layer.check()
        except ValueError as exc:
            raise unsupported(node, str(exc)) from None
        return self._emit(node, layer, {"weight": weight, "bias": bias}, (src,), shape)

    def _vector_input(
        self, node: onnx.NodeProto, index: int, size: int, default: float
    ) -> np.ndarray:
        if index >= len(node.input) or not node.input[index]:
            return np.full(size, default)
        value = self.consts.get(node.input[index])
        if value is None or np.asarray(value).size != size:
            raise unsupported(node, f"needs a constant of {size} values for input #{index}")
        return np.asarray(value, dtype=np.float64).reshape(size)

    def _gelu(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        if attrs(node).get("approximate", b"none") not in (b"none", "none"):
            raise unsupported(node, "with approximate='tanh' (only the exact erf form)")
        return self._emit(node, GELU(), {}, (x[0],), x[1])

    def _elementwise(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        layer = Tanh() if node.op_type == "Tanh" else Sigmoid()
        return self._emit(node, layer, {}, (x[0],), x[1])

    def _mul(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        if all(i in self.values for i in node.input):
            raise unsupported(node, "multiplies two activations (only attention's MatMul)")
        act = node.input[0] if node.input[0] in self.values else node.input[1]
        factor = self._scalar(node, self._other(node, act))
        if factor is None:
            raise unsupported(node, "multiplies by something other than a scalar constant")
        return self._scale(node, x, factor)

    def _div(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        divisor = self._scalar(node, node.input[1]) if node.input[0] in self.values else None
        if divisor is None or divisor == 0:
            raise unsupported(node, "divides by something other than a non-zero scalar constant")
        gelu_out = self._erf_gelu(node, divisor)
        if gelu_out is not None:
            self.fused.update(id(n) for n in gelu_out[1])
            _, value = self._emit(node, GELU(), {}, (x[0],), x[1])
            return gelu_out[0], value
        return self._scale(node, x, 1.0 / divisor)

    def _erf_gelu(
        self, div: onnx.NodeProto, divisor: float
    ) -> tuple[str, list[onnx.NodeProto]] | None:
        """The nodes of torch's GELU export ``(x * (erf(x / sqrt2) + 1)) * 0.5`` from its Div."""
        x = div.input[0]
        if not math.isclose(divisor, _SQRT2, rel_tol=1e-6):
            return None
        erf = self._sole_user(div.output[0], "Erf")
        add = None if erf is None else self._sole_user(erf.output[0], "Add")
        if erf is None or add is None or self._scalar(add, self._other(add, erf.output[0])) != 1.0:
            return None
        mul = self._sole_user(add.output[0], "Mul")
        if mul is None or self._other(mul, add.output[0]) != x:
            return None
        half = self._sole_user(mul.output[0], "Mul")
        if half is None or self._scalar(half, self._other(half, mul.output[0])) != 0.5:
            return None
        return half.output[0], [erf, add, mul, half]

    def _scale(self, node: onnx.NodeProto, x: Value, factor: float) -> tuple[str, Value]:
        layer = Scale(factor)
        try:
            layer.check()
        except ValueError as exc:
            raise unsupported(node, str(exc)) from None
        return self._emit(node, layer, {}, (x[0],), x[1])

    def _bias(self, node: onnx.NodeProto, x: Value, value: np.ndarray) -> tuple[str, Value]:
        """An activation plus a constant (a positional embedding): a :class:`Bias` layer."""
        src, shape = x
        value = np.asarray(value, dtype=np.float64)
        if value.ndim == len(shape):
            if value.shape[0] != 1:
                raise unsupported(node, f"adds a constant of shape {value.shape} across the batch")
            value = value[0]
        value = value.reshape((1,) * (len(shape) - 1 - value.ndim) + value.shape)
        layer = Bias(tuple(int(d) for d in value.shape))
        try:
            layer.out_shape(_sample(shape))
        except ValueError as exc:
            raise unsupported(node, str(exc)) from None
        return self._emit(node, layer, {"bias": value}, (src,), shape)

    def _reduce_mean(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        found, (src, shape) = attrs(node), x
        axes = found.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in self.consts:
            axes = np.asarray(self.consts[node.input[1]]).reshape(-1).tolist()
        if axes is None or len(axes) != 1 or found.get("keepdims", 1):
            raise unsupported(node, "over other than one axis with keepdims=0")
        axis = self._axis(node, int(axes[0]), shape)
        out = shape[: axis + 1] + shape[axis + 2 :]
        return self._emit(node, Mean(axis), {}, (src,), out)


def _sample(shape: Shape) -> tuple[int, ...]:
    """One sample's shape from an activation's full shape."""
    return tuple(int(d) for d in shape[1:])
