"""The ONNX parser's handlers for token models (a mixin of ``onnx_graph._GraphParser``).

* ``Gather(table[V, D], ids)`` on the graph's integer input (torch's
  ``nn.Embedding``): the client sends each sequence one-hot, ``(length, V)``,
  so the lookup is a token-wise :class:`Linear` ``(V -> D)`` without bias
  whose weight is the table transposed (:mod:`ppml.proto.domain.tokens`).
  Only embeddings may read the ids.
* ``Gather`` of an activation at a scalar constant index on a sample axis
  (``x[:, 0]``, CLS pooling): a :class:`Select`.
* ``Concat`` of activations along a sample axis: a chain of two-input
  :class:`Concat` layers.
"""

from __future__ import annotations

import numpy as np
import onnx

from ppml.client.onnx_common import Shape, Step, Value, attrs, unsupported
from ppml.proto.domain.architecture import MODEL_INPUT, Layer
from ppml.proto.domain.layers import Concat, Linear, Select


class TokenOps:
    """Handlers for Gather (embedding, CLS pooling) and Concat."""

    consts: dict[str, np.ndarray]
    values: dict[str, Value]
    input_name: str
    steps: list[Step]
    vocab: int | None  # the embeddings' table size once one is parsed; None for no embedding

    def _emit(self, node: onnx.NodeProto, layer: Layer, params: dict[str, np.ndarray],
              sources: tuple[int, ...], shape: Shape) -> tuple[str, Value]:  # fmt: skip
        raise NotImplementedError

    def _gather(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        if node.input[1] == self.input_name:
            return self._embedding(node, x)
        index = self.consts.get(node.input[1])
        if node.input[0] not in self.values or index is None or np.asarray(index).ndim != 0:
            raise unsupported(node, "gathers other than one constant index of an activation")
        src, shape = self.values[node.input[0]]
        axis = int(attrs(node).get("axis", 0)) % len(shape)
        if axis == 0:
            raise unsupported(node, "over the batch axis")
        size = int(shape[axis])
        position = int(index)
        if not -size <= position < size:
            raise unsupported(node, f"picks entry {position} of an axis of {size}")
        layer = Select(axis - 1, position % size)
        return self._emit(node, layer, {}, (src,), (*shape[:axis], *shape[axis + 1 :]))

    def _embedding(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        """``table[ids]``: a token-wise Linear on the one-hot ids."""
        table = self.consts.get(node.input[0])
        if table is None or np.asarray(table).ndim != 2 or int(attrs(node).get("axis", 0)) != 0:
            raise unsupported(node, "reads the token ids other than as an embedding table[ids]")
        table = np.asarray(table, dtype=np.float64)
        vocab, dim = table.shape
        if self.vocab is not None and self.vocab != vocab:
            raise unsupported(node, f"has a table of {vocab} tokens, another one has {self.vocab}")
        self.vocab = vocab
        shape = x[1]
        layer = Linear(vocab, dim, bias=False)
        return self._emit(node, layer, {"weight": table.T}, (MODEL_INPUT,), (*shape, dim))

    def _concat(self, node: onnx.NodeProto, x: Value) -> tuple[str, Value]:
        if any(i not in self.values for i in node.input) or len(node.input) < 2:
            raise unsupported(node, "joins something other than two or more activations")
        first = self.values[node.input[0]]
        axis = int(attrs(node)["axis"]) % len(first[1])
        if axis == 0:
            raise unsupported(node, "over the batch axis")
        name, value = node.output[0], first
        for other in node.input[1:]:
            src, shape = self.values[other]
            try:
                out = Concat(axis - 1).join_shapes((_sample(value[1]), _sample(shape)))
            except ValueError as exc:
                raise unsupported(node, str(exc)) from None
            name, value = self._emit(node, Concat(axis - 1), {}, (value[0], src), (shape[0], *out))
        return name, value


def _sample(shape: Shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape[1:])
