"""Transformer encoders through the ONNX parser: every op a layer, anything else refused by node."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ppml.client.model_export import UnsupportedModelError, export_model, plaintext_forward
from ppml.proto.domain.architecture import (
    GELU,
    Bias,
    LayerNorm,
    Linear,
    MatMul,
    Mean,
    Reshape,
    Scale,
    Sigmoid,
    Softmax,
    Tanh,
    Transpose,
)
from ppml.training.transformer import bert_tiny_like, digits_transformer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _close(model: nn.Module, x: torch.Tensor) -> None:
    arch, weights = export_model(model, x[:1])
    assert list(weights) == list(arch.parameter_shapes())
    with torch.no_grad():
        expected = model.eval()(x).double()
    torch.testing.assert_close(plaintext_forward(arch, weights, x), expected, atol=1e-5, rtol=1e-5)


def test_digits_transformer_exports_every_block() -> None:
    model = digits_transformer()
    arch, _ = export_model(model, torch.zeros(1, 8, 8))
    kinds = [type(layer) for layer in arch.layers]
    assert kinds[:2] == [Linear, Bias] and arch.layers[1] == Bias((8, 16))
    assert kinds.count(Linear) == 8 and kinds.count(MatMul) == 2  # embed, q k v out, ffn x2, head
    scale = arch.layers[kinds.index(Scale)]
    assert isinstance(scale, Scale) and math.isclose(scale.factor, 1 / math.sqrt(8), rel_tol=1e-6)
    assert Reshape((8, 2, 8)) in arch.layers and Transpose((1, 0, 2)) in arch.layers
    assert kinds.count(LayerNorm) == 2 and GELU() in arch.layers and Softmax() in arch.layers
    assert arch.layers[-2] == Mean(0) and arch.output_shape == (10,)
    qk = kinds.index(MatMul)
    assert all(isinstance(arch.layers[s], Transpose) for s in arch.sources(qk))
    _close(model, torch.randn(5, 8, 8))


def test_bert_tiny_like_exports_at_a_small_size() -> None:
    model = bert_tiny_like(seq=6, hidden=8, heads=2, ffn=16, layers=2)
    arch, _ = export_model(model, torch.zeros(1, 6, 8))
    assert [type(layer) for layer in arch.layers].count(LayerNorm) == 4
    assert arch.input_shape == (6, 8) and arch.output_shape == (2,)
    _close(model, torch.randn(3, 6, 8))


def test_bert_tiny_like_has_bert_tinys_shape() -> None:
    model = bert_tiny_like()
    assert model.position.shape == (128, 128) and len(model.layers) == 2
    assert model.layers[0].attention.heads == 2 and model.layers[0].ffn[0].out_features == 512


class _Pointwise(nn.Module):
    """tanh, sigmoid, scalar Mul and Div, a broadcast constant Add, a static reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.offset = nn.Parameter(torch.randn(1, 6))
        self.act = nn.Sequential(nn.Tanh(), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.fc(x) * 3.0 / 2.0 + self.offset)
        return y.reshape(-1, 2, 3, 6).mean(2)


def test_pointwise_ops_scale_and_bias() -> None:
    arch, _ = export_model(_Pointwise(), torch.zeros(1, 6, 4))
    assert arch.layers == (
        Linear(4, 6), Scale(3.0), Scale(0.5), Bias((1, 6)), Tanh(), Sigmoid(),
        Reshape((2, 3, 6)), Mean(1),
    )  # fmt: skip
    assert arch.output_shape == (2, 6)
    _close(_Pointwise(), torch.randn(4, 6, 4))


def _graph_bytes(nodes: list, x_shape: list, y_shape: list, consts: dict[str, np.ndarray],
                 opset: int = 17) -> bytes:  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model.SerializeToString()


def test_handwritten_gelu_op_and_reduce_mean_with_axes_input() -> None:
    data = _graph_bytes(
        [
            helper.make_node("Gelu", ["x"], ["g"]),
            helper.make_node("ReduceMean", ["g", "axes"], ["y"], keepdims=0),
        ],
        ["n", 3, 4],
        ["n", 4],
        {"axes": np.array([1], dtype=np.int64)},
        opset=20,
    )
    arch, _ = export_model(data)
    assert arch.layers == (GELU(), Mean(0))
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    expected = nn.functional.gelu(x).mean(1)
    torch.testing.assert_close(plaintext_forward(arch, {}, x), expected)


def test_a_division_by_sqrt2_without_erf_is_a_scale() -> None:
    data = _graph_bytes(
        [helper.make_node("Div", ["x", "c"], ["y"])],
        ["n", 4],
        ["n", 4],
        {"c": np.array(math.sqrt(2), dtype=np.float32)},
    )
    (layer,) = export_model(data)[0].layers
    assert isinstance(layer, Scale) and math.isclose(layer.factor, 1 / math.sqrt(2), rel_tol=1e-6)


class _Shaped(nn.Module):
    """Reads ``x.shape``: the batch size passes through, the rest is static."""

    def __init__(self, computed: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.computed = computed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if self.computed:
            return y.reshape(x.shape[0], x.shape[1] * 2, -1)
        return y.reshape(x.shape[0], x.shape[1], 2, 2)


def test_reshape_to_the_batch_read_from_x_shape() -> None:
    arch, _ = export_model(_Shaped(computed=False), torch.zeros(1, 3, 4))
    assert arch.layers == (Linear(4, 4), Reshape((3, 2, 2)))
    _close(_Shaped(computed=False), torch.randn(2, 3, 4))


def test_a_computed_dynamic_shape_is_refused_by_node() -> None:
    with pytest.raises(UnsupportedModelError, match=r"'/Mul' \(Mul\) computes from x\.shape"):
        export_model(_Shaped(computed=True), torch.zeros(1, 3, 4))


class _Fn(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.fc(x))


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda y: torch.softmax(y, 1), r"\(Softmax\) over an axis other than the last"),
        (lambda y: y.transpose(0, 1), r"\(Transpose\) with perm \[1, 0, 2\] moves the batch"),
        (lambda y: y.mean(1, keepdim=True), r"\(ReduceMean\) over other than one axis"),
        (lambda y: y.mean((1, 2)), r"\(ReduceMean\) over other than one axis"),
        (lambda y: y.mean(0), r"\(ReduceMean\) over the batch axis"),
        (lambda y: torch.erf(y), r"\(Erf\) is not supported"),
        (lambda y: y * y, r"\(Mul\) multiplies two activations"),
        (lambda y: y * torch.arange(4.0), r"\(Mul\) multiplies by something other than a scalar"),
        (lambda y: 2.0 / y, r"\(Reciprocal\) is not supported"),
        (lambda y: y * 1e-6, r"\(Mul\) Scale factor must have a size in"),
        (lambda y: nn.functional.gelu(y, approximate="tanh"), r"\(Pow\)|\(Tanh\)|\(Mul\)"),
        (lambda y: nn.functional.layer_norm(y, (3, 4)), r"\(LayerNormalization\) over axes"),
    ],
)
def test_unsupported_transformer_ops_are_refused_by_node(
    fn: Callable[[torch.Tensor], torch.Tensor], message: str
) -> None:
    with pytest.raises(UnsupportedModelError, match=message):
        export_model(_Fn(fn), torch.zeros(2, 3, 4))


def test_softmax_before_opset_13_defaults_to_axis_1() -> None:
    def graph(opset: int) -> bytes:
        node = helper.make_node("Softmax", ["x"], ["y"], name="sm")
        return _graph_bytes([node], ["n", 3, 4], ["n", 3, 4], {}, opset=opset)

    assert export_model(graph(13))[0].layers == (Softmax(),)
    with pytest.raises(UnsupportedModelError, match=r"'sm' \(Softmax\) over an axis other"):
        export_model(graph(11))  # softmax over 3 x 4 values at once


def test_an_identity_transpose_emits_no_layer() -> None:
    data = _graph_bytes(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 2]),
            helper.make_node("Tanh", ["t"], ["y"]),
        ],
        ["n", 3, 4],
        ["n", 3, 4],
        {},
    )
    assert export_model(data)[0].layers == (Tanh(),)


def test_a_constant_left_of_an_activation_matmul_is_refused() -> None:
    data = _graph_bytes(
        [helper.make_node("MatMul", ["w", "x"], ["y"], name="left")],
        ["n", 3, 4],
        ["n", 2, 4],
        {"w": np.ones((2, 3), dtype=np.float32)},
    )
    with pytest.raises(UnsupportedModelError, match=r"'left' \(MatMul\) multiplies a constant"):
        export_model(data)


def test_a_constant_per_batch_row_is_refused() -> None:
    data = _graph_bytes(
        [helper.make_node("Add", ["x", "c"], ["y"], name="per_row")],
        [2, 4],
        [2, 4],
        {"c": np.ones((2, 4), dtype=np.float32)},
    )
    with pytest.raises(UnsupportedModelError, match=r"'per_row' \(Add\) adds a constant of shape"):
        export_model(data)


def _onnx_bytes(model: nn.Module, x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (x,), buffer, dynamo=False, opset_version=17,  # type: ignore[arg-type]
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )  # fmt: skip
    return buffer.getvalue()


def test_the_onnx_file_of_a_transformer_parses_like_the_module() -> None:
    model = digits_transformer()
    from_module, _ = export_model(model, torch.zeros(1, 8, 8))
    from_file, _ = export_model(_onnx_bytes(model, torch.zeros(1, 8, 8)))
    assert from_file.layers == from_module.layers and from_file.inputs == from_module.inputs
