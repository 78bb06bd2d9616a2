"""Turn an ONNX graph into the public layers of an :class:`Architecture`.

Only what the MPC servers can run is accepted: one input, one output, and a
graph of the ops in :data:`SUPPORTED_OPS` between them, where only ``Add``
(a residual connection) and ``MatMul`` (attention) join two activations and
every layer leads to the output; a transformer's ops are handled in
:mod:`ppml.client.onnx_transformer`. Weights must be initializers (or
``Constant`` nodes); the small ``Shape``/``Gather``/``Concat`` subgraphs the
torch exporter emits for ``x.view(x.size(0), ...)`` are evaluated
symbolically and accepted when they keep the batch first and the other sizes
static; arithmetic on ``x.shape`` is refused by node. A graph whose input
is integer token ids is a token model: only embeddings (``Gather`` of a
table) may read the ids (:mod:`ppml.client.onnx_tokens`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ppml.client.onnx_common import Dim, Shape, UnsupportedModelError, Value
from ppml.client.onnx_common import Step as _Step
from ppml.client.onnx_common import attrs as _attrs
from ppml.client.onnx_common import unsupported as _unsupported
from ppml.client.onnx_tokens import TokenOps
from ppml.client.onnx_transformer import TransformerOps
from ppml.proto.domain.architecture import (
    MODEL_INPUT,
    Add,
    Affine,
    Architecture,
    AvgPool2d,
    Conv2d,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
    TokenInput,
)

_JOINS = frozenset({"Add", "MatMul", "Mul", "Concat"})  # ops that may take two activations
_INTEGER = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.INT32})
_SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice"})


class _GraphParser(TransformerOps, TokenOps):
    """Walks the graph's nodes in topological order, emitting one layer per op.

    Activations may feed several nodes, and :class:`Add` joins two of them
    (a residual connection); every other op takes one activation.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise UnsupportedModelError(
                f"the graph must have exactly one input and one output, "
                f"found {len(inputs)} inputs and {len(graph.output)} outputs"
            )
        self.opset = max(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1
        )
        self.input_name, self.output_name = inputs[0].name, graph.output[0].name
        self.input_shape = _declared_shape(inputs[0])
        self.token_ids = inputs[0].type.tensor_type.elem_type in _INTEGER  # token model
        self.vocab: int | None = None
        self.producer: dict[str, onnx.NodeProto] = {}
        self.shape_valued: set[str] = set()
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.act_nodes: list[onnx.NodeProto] = []
        self.values: dict[str, Value] = {}
        self.fused: set[int] = set()  # id() of nodes another handler has absorbed
        self.steps: list[_Step] = []
        self._classify(graph)

    def _classify(self, graph: onnx.GraphProto) -> None:
        """Sort tensors into constants, shape values and activations (nodes are topological)."""
        acts = {self.input_name}
        for node in graph.node:
            self.producer.update((o, node) for o in node.output)
            ins = [i for i in node.input if i]
            if node.op_type == "Constant":
                self.consts[node.output[0]] = _constant_value(node)
            elif node.op_type == "Identity" and ins[0] in self.consts:
                self.consts[node.output[0]] = self.consts[ins[0]]
            elif node.op_type == "Shape" or (
                node.op_type in _SHAPE_OPS
                and all(i in self.consts or i in self.shape_valued for i in ins)
            ):
                self.shape_valued.update(node.output)
            elif any(i in acts for i in ins):
                data = list(dict.fromkeys(i for i in ins if i in acts))
                if len([i for i in ins if i in acts]) > 1 and node.op_type not in _JOINS:
                    raise _unsupported(node, "combines several activations")
                shapes = [i for i in ins if i in self.shape_valued]
                if shapes and (node.op_type != "Reshape" or shapes != [node.input[1]]):
                    raise _unsupported(node, "uses a tensor's shape as data")
                acts.update(o for o in node.output if o)
                for name in data:
                    self.consumers[name].append(node)
                self.act_nodes.append(node)
            elif any(i in self.shape_valued for i in ins):
                raise _unsupported(
                    node,
                    "computes from x.shape at run time; give the model static sizes "
                    "(module attributes) so that its export has constant shapes",
                )
            else:
                raise _unsupported(
                    node,
                    "computes a value from constants at run time (export with constant folding)",
                )

    def parse(self) -> tuple[list[_Step], Shape]:
        """Emit every activation node's layer; returns the layers and the output's full shape."""
        handlers: dict[str, Callable[[onnx.NodeProto, Value], tuple[str, Value]]] = {
            "Gemm": self._gemm,
            "MatMul": self._matmul,
            "Conv": self._conv,
            "Relu": self._relu,
            "AveragePool": self._pool,
            "MaxPool": self._pool,
            "GlobalAveragePool": self._global_pool,
            "Flatten": self._flatten,
            "Reshape": self._reshape,
            "BatchNormalization": self._batchnorm,
            "Add": self._add,
            "Dropout": self._skip,
            "Identity": self._skip,
            "Gather": self._gather,
            "Concat": self._concat,
            **self.transformer_handlers(),
        }
        self.values[self.input_name] = (MODEL_INPUT, self.input_shape)
        for node in self.act_nodes:
            if id(node) in self.fused:
                continue
            first = next((i for i in node.input if i in self.values), None)
            if (
                self.token_ids
                and self.input_name in node.input
                and not (node.op_type == "Gather" and list(node.input).index(self.input_name) == 1)
            ):
                raise _unsupported(node, "reads the token ids: only an embedding (table[ids]) may")
            if node.op_type not in handlers or first is None:
                raise _unsupported(node)
            for extra in node.output[1:]:
                if extra and (self.consumers.get(extra) or extra == self.output_name):
                    raise _unsupported(node, f"with its extra output {extra!r} used")
            name, value = handlers[node.op_type](node, self.values[first])
            self.values[name] = value
        return self.steps, self._output_shape()

    def _output_shape(self) -> Shape:
        """The output's shape, once every layer is known to lead to it."""
        index, shape = self.values[self.output_name]
        if index == MODEL_INPUT:
            raise UnsupportedModelError("the graph computes nothing: its output is its input")
        used = {s for step in self.steps for s in step.sources}
        unused = [i for i in range(len(self.steps)) if i != index and i not in used]
        if unused or index != len(self.steps) - 1:
            dead = self.steps[unused[0] if unused else -1].layer.describe()
            raise UnsupportedModelError(
                f"the graph computes a value its output never uses ({dead}); "
                "remove the unused branch"
            )
        return shape

    # -- helpers ---------------------------------------------------------------

    def _param(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        """Input ``index`` as a float64 constant, or None if it is omitted."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.consts:
            raise _unsupported(node, f"needs a constant for input {name!r}")
        return np.asarray(self.consts[name], dtype=np.float64)

    def _need(self, node: onnx.NodeProto, index: int) -> np.ndarray:
        value = self._param(node, index)
        if value is None:
            raise _unsupported(node, f"is missing input #{index}")
        return value

    def _emit(self, node: onnx.NodeProto, layer: Layer, params: dict[str, np.ndarray],
              sources: tuple[int, ...], shape: Shape) -> tuple[str, Value]:  # fmt: skip
        """Append a layer computing ``node``'s first output; returns that output's value."""
        self.steps.append(_Step(layer, params, sources))
        return node.output[0], (len(self.steps) - 1, shape)

    def _spatial(
        self, node: onnx.NodeProto, attrs: dict[str, Any], shape: Shape
    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """Checks a 4-D activation; returns (H, W), strides and symmetric pads."""
        if len(shape) != 4:
            raise _unsupported(node, f"on a {len(shape)}-D activation (only 2-D images)")
        pad_mode = attrs.get("auto_pad", b"NOTSET")
        pad_mode = pad_mode.decode() if isinstance(pad_mode, bytes) else pad_mode
        pads = list(attrs.get("pads", [0, 0, 0, 0])) if pad_mode == "NOTSET" else [0] * 4
        if pad_mode not in ("NOTSET", "VALID") or len(pads) != 4 or pads[:2] != pads[2:]:
            raise _unsupported(node, f"with asymmetric padding {pads} / auto_pad={pad_mode}")
        return (int(shape[2]), int(shape[3])), _pair(attrs.get("strides", [1, 1])), _pair(pads[:2])

    def _sole_producer(self, name: str) -> _Step | None:
        """The step computing ``name`` if a BatchNorm reading it may fold into it.

        That is a Linear/Conv2d whose output reaches ``name`` through skipped
        ops only, each tensor on the way read by one node and not the output.
        """
        while True:
            if len(self.consumers[name]) != 1 or name == self.output_name:
                return None
            node = self.producer.get(name)
            if node is None or node.op_type not in ("Dropout", "Identity"):
                break
            name = node.input[0]
        index = self.values[name][0]
        step = None if index == MODEL_INPUT else self.steps[index]
        return step if step is not None and isinstance(step.layer, Linear | Conv2d) else None

    # -- op handlers: each returns the output tensor's name and value ----------

    def _gemm(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        attrs, shape = _attrs(node), x[1]
        if attrs.get("transA", 0) or len(shape) != 2:
            raise _unsupported(node, "needs a 2-D activation and transA=0")
        b = self._need(node, 1)
        weight = (b if attrs.get("transB", 0) else b.T) * attrs.get("alpha", 1.0)
        c = self._param(node, 2)
        bias = None if c is None else _vector(node, c, weight.shape[0]) * attrs.get("beta", 1.0)
        return self._linear(node, node.output[0], x, weight, bias)

    def _matmul(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        """``x @ W`` (+ a constant bias Add) on the last dim: a Linear; or of two activations."""
        if node.input[1] in self.values or node.input[0] not in self.values:
            return self._matmul_join(node, x)
        weight, out, bias = self._need(node, 1).T, node.output[0], None
        users = self.consumers[out]
        if len(users) == 1 and users[0].op_type == "Add" and out != self.output_name:
            add = users[0]
            other = add.input[1] if add.input[0] == out else add.input[0]
            if other in self.consts:
                bias = _vector(add, np.asarray(self.consts[other], np.float64), weight.shape[0])
                out = add.output[0]
                self.fused.add(id(add))
        return self._linear(node, out, x, weight, bias)

    def _linear(
        self, node: onnx.NodeProto, out: str, x: Value, weight: np.ndarray,
        bias: np.ndarray | None,
    ) -> tuple[str, Value]:  # fmt: skip
        src, shape = x
        if len(shape) < 2 or weight.ndim != 2 or weight.shape[1] != shape[-1]:
            raise _unsupported(node, f"has weight {weight.shape} for input {shape}")
        params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        layer = Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        _, value = self._emit(node, layer, params, (src,), (*shape[:-1], weight.shape[0]))
        return out, value

    def _conv(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        attrs, weight, (src, shape) = _attrs(node), self._need(node, 1), x
        (h, w), stride, pad = self._spatial(node, attrs, shape)
        groups = int(attrs.get("group", 1))
        if weight.ndim != 4 or shape[1] != weight.shape[1] * groups:
            raise _unsupported(node, f"has weight {weight.shape} for input {shape}")
        kernel, dil = _pair(weight.shape[2:]), _pair(attrs.get("dilations", [1, 1]))
        if tuple(attrs.get("kernel_shape", kernel)) != kernel:
            raise _unsupported(node, "has a kernel_shape that disagrees with its weight")
        bias = self._param(node, 2)
        out = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip((h, w), pad, dil, kernel, stride, strict=True)
        ]
        layer = Conv2d(
            int(shape[1]), weight.shape[0], kernel, stride, pad, dil, groups, bias=bias is not None
        )
        params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        return self._emit(node, layer, params, (src,), (shape[0], weight.shape[0], *out))

    def _pool(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        attrs, (src, shape) = _attrs(node), x
        (h, w), stride, pad = self._spatial(node, attrs, shape)
        kernel = _pair(attrs["kernel_shape"])
        if attrs.get("ceil_mode", 0):
            raise _unsupported(node, "with ceil_mode=1 is not supported")
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise _unsupported(node, "with dilation is not supported")
        if any(2 * p > k for p, k in zip(pad, kernel, strict=True)):
            raise _unsupported(node, "with padding larger than half the kernel")
        is_avg = node.op_type == "AveragePool"
        if is_avg and any(pad) and not attrs.get("count_include_pad", 0):
            raise _unsupported(node, "with padding and count_include_pad=0 is not supported")
        out = [
            (n + 2 * p - k) // s + 1 for n, p, k, s in zip((h, w), pad, kernel, stride, strict=True)
        ]
        layer = (AvgPool2d if is_avg else MaxPool2d)(kernel, stride, pad)
        return self._emit(node, layer, {}, (src,), (shape[0], shape[1], *out))

    def _global_pool(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        """``GlobalAveragePool`` (torch's ``AdaptiveAvgPool2d(1)``): one window over the image."""
        src, shape = x
        (h, w), _, _ = self._spatial(node, {}, shape)
        layer = AvgPool2d((h, w), (h, w))
        return self._emit(node, layer, {}, (src,), (shape[0], shape[1], 1, 1))

    def _relu(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        return self._emit(node, ReLU(), {}, (x[0],), x[1])

    def _add(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        """A residual connection (two activations of one shape), or a constant :class:`Bias`."""
        other = node.input[1] if len(node.input) == 2 else ""
        if node.input[0] not in self.values:
            other = node.input[0]
        if other in self.consts:
            return self._bias(node, x, self.consts[other])
        if other not in self.values:
            raise _unsupported(node, "adds something other than an activation or a constant")
        y = self.values[other]
        if x[1] != y[1]:
            raise _unsupported(node, f"adds activations of shapes {x[1]} and {y[1]} (no broadcast)")
        return self._emit(node, Add(), {}, (x[0], y[0]), x[1])

    def _flatten(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        axis = _attrs(node).get("axis", 1)
        if axis % len(x[1]) != 1:
            raise _unsupported(node, f"with axis={axis} (only axis=1)")
        return self._flat(node, x)

    def _flat(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        src, shape = x
        return self._emit(
            node, Flatten(), {}, (src,), (shape[0], math.prod(int(d) for d in shape[1:]))
        )

    def _reshape(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        shape = x[1]
        target = self._shape_value(node, node.input[1])[0]
        features = math.prod(int(d) for d in shape[1:])
        if _attrs(node).get("allowzero", 0) and 0 in target:
            target = (-2, -2)  # a literal zero-sized reshape: never a flatten
        if (
            len(target) == 2
            and target != (-1, -1)
            and (
                (target[0] in (0, shape[0]) and target[1] in (-1, features))
                or target == (-1, features)
            )
        ):
            return self._flat(node, x)
        head = 0 if target and target[0] == shape[0] else target[0] if target else -2
        if isinstance(head, str) or any(isinstance(d, str) for d in target[1:]):
            raise _unsupported(node, f"to {list(target)} (only the batch first, static sizes)")
        return self._static_reshape(node, x, (head, *(int(d) for d in target[1:])))

    def _batchnorm(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        attrs, (src, shape) = _attrs(node), x
        if attrs.get("training_mode", 0) or len(shape) < 2:
            raise _unsupported(node, "in training mode or on a 1-D activation")
        gamma, beta, mean, var = (self._need(node, i) for i in range(1, 5))
        scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
        shift = beta - mean * scale
        if scale.shape != (shape[1],):
            raise _unsupported(node, f"has {scale.shape} statistics for {shape[1]} channels")
        target = self._sole_producer(node.input[0])
        if target is not None:  # fold into the preceding Conv2d / Linear
            w, b = target.params["weight"], target.params.get("bias", np.zeros_like(scale))
            target.params = {
                "weight": w * scale.reshape(-1, *[1] * (w.ndim - 1)),
                "bias": b * scale + shift,
            }
            assert isinstance(target.layer, Linear | Conv2d)
            target.layer = replace(target.layer, bias=True)
            return node.output[0], x
        ashape = (int(shape[1]),) + (1,) * (len(shape) - 2)
        params = {"scale": scale.reshape(ashape), "shift": shift.reshape(ashape)}
        return self._emit(node, Affine(ashape), params, (src,), shape)

    def _skip(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        training = self._param(node, 2) if node.op_type == "Dropout" else None
        if training is not None and training.any():
            raise _unsupported(node, "in training mode")
        return node.output[0], x

    def _shape_value(self, user: onnx.NodeProto, name: str) -> tuple[tuple[Dim, ...], bool]:
        """Symbolic value of a shape tensor: its elements and whether it is a scalar."""
        if name in self.consts:
            arr = np.asarray(self.consts[name])
            if arr.dtype.kind not in "iu" or arr.ndim > 1:
                raise _unsupported(user, f"has a non-integer shape constant {name!r}")
            return tuple(int(v) for v in arr.reshape(-1)), arr.ndim == 0
        node = self.producer[name]
        attrs, op = _attrs(node), node.op_type
        args = [self._shape_value(node, i) for i in node.input[1 if op == "Shape" else 0 :] if i]
        if op == "Shape" and node.input[0] in self.values:
            dims = self.values[node.input[0]][1]
            return dims[attrs.get("start", 0) : attrs.get("end", len(dims))], False
        if op in ("Cast", "Identity"):
            return args[0]
        if op == "Gather" and attrs.get("axis", 0) == 0 and not args[0][1]:
            picked = tuple(args[0][0][int(i)] for i in args[1][0])
            return picked, args[1][1]
        if op == "Unsqueeze" and args[0][1]:
            return args[0][0], False
        if op == "Squeeze" and len(args[0][0]) == 1:
            return args[0][0], True
        if op == "Concat" and attrs.get("axis") in (0, -1):
            return tuple(d for a in args for d in a[0]), False
        if op == "Slice" and len(args) >= 3 and not args[0][1] and _plain_slice(args[1:]):
            return args[0][0][int(args[1][0][0]) : int(args[2][0][0])], False
        raise _unsupported(node, "in a shape computation is not supported")


def _plain_slice(args: list[tuple[tuple[Dim, ...], bool]]) -> bool:
    """Whether Slice's (starts, ends[, axes[, steps]]) are one-element, axis 0, step 1."""
    singles = all(len(a[0]) == 1 for a in args)
    return (
        singles
        and args[2:3] in ([], [((0,), False)], [((-1,), False)])
        and (args[3:4] in ([], [((1,), False)]))
    )


def _declared_shape(value: onnx.ValueInfoProto) -> Shape:
    """The graph input's shape; the batch dim may be symbolic, the others must be fixed."""
    dims = value.type.tensor_type.shape.dim
    if not value.type.tensor_type.HasField("shape") or len(dims) < 2:
        raise ValueError(f"graph input {value.name!r} needs a declared shape (batch, ...)")
    rest = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
    if any(d is None or d <= 0 for d in rest):
        raise ValueError(
            f"graph input {value.name!r} has symbolic non-batch dimensions {rest}; "
            "only the batch dimension may be dynamic"
        )
    batch = dims[0].dim_value if dims[0].HasField("dim_value") else (dims[0].dim_param or "N")
    return (batch, *(int(d) for d in rest if d is not None))


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
        return np.asarray(onnx.helper.get_attribute_value(attr))
    raise _unsupported(node, f"with attribute {attr.name!r}")


def _pair(values: Any) -> tuple[int, int]:
    a, b = (int(v) for v in values)
    return (a, b)


def _vector(node: onnx.NodeProto, value: np.ndarray, size: int) -> np.ndarray:
    """A bias as a ``(size,)`` vector (scalars broadcast, ``(1, size)`` is squeezed)."""
    if value.size == 1:
        return np.full(size, float(value.reshape(-1)[0]))
    if value.size == size and value.shape[-1] == size:
        return value.reshape(size)
    raise _unsupported(node, f"has a bias of shape {value.shape} for {size} features")


def parse_onnx(
    model: onnx.ModelProto, pad_id: int = 0
) -> tuple[Architecture, dict[str, np.ndarray]]:
    """A loaded ONNX model -> (public architecture, float64 weights by parameter name).

    A graph whose input is integer is a token model (:mod:`ppml.proto.domain.tokens`):
    its architecture takes the one-hot ids, sequences padded with ``pad_id``.
    """
    parser = _GraphParser(model)
    steps, out_shape = parser.parse()
    input_shape = tuple(int(d) for d in parser.input_shape[1:])
    tokens = None
    if parser.token_ids:
        if parser.vocab is None or len(input_shape) != 1:
            raise UnsupportedModelError(
                f"an integer input of shape {input_shape} must be (batch, length) token ids "
                "read by an embedding"
            )
        tokens = TokenInput(parser.vocab, input_shape[0], pad_id)
        try:
            tokens.check()
        except ValueError as exc:
            raise UnsupportedModelError(str(exc)) from None
        input_shape = tokens.input_shape
    chain = all(step.sources == (i - 1,) for i, step in enumerate(steps))
    weights = {
        f"{index}.{name}": np.ascontiguousarray(value, dtype=np.float64)
        for index, step in enumerate(steps)
        for name, value in step.params.items()
    }
    arch = Architecture(
        layers=tuple(step.layer for step in steps),
        input_shape=input_shape,
        output_shape=tuple(int(d) for d in out_shape[1:]),
        meta={"producer": f"{model.producer_name} {model.producer_version}".strip()},
        inputs=() if chain else tuple(step.sources for step in steps),
        tokens=tokens,
    )
    return arch, weights
