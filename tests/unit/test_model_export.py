"""Tests for ppml.client.model_export: torch/ONNX -> public architecture + weights."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ppml.client.model_export import UnsupportedModelError, export_model, plaintext_forward
from ppml.proto.domain.architecture import (
    Add,
    Affine,
    Architecture,
    AvgPool2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _randomize_batchnorm(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics, so folding is really exercised."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.uniform_(-1.0, 1.0)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)


def _onnx_bytes(model: nn.Module, x: torch.Tensor, dynamic_batch: bool = True) -> bytes:
    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (x,),
            buffer,  # type: ignore[arg-type]
            dynamo=False,
            opset_version=17,
            do_constant_folding=True,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=axes,
        )
    return buffer.getvalue()


def _export_and_check(
    model: nn.Module, x: torch.Tensor
) -> tuple[Architecture, dict[str, np.ndarray]]:
    """Export ``model``; check weights, semantics, and that the model is untouched."""
    training = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}

    arch, weights = export_model(model, x)

    assert [m.training for m in model.modules()] == training
    after = model.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    shapes = arch.parameter_shapes()
    assert list(weights) == list(shapes)
    assert {k: v.shape for k, v in weights.items()} == shapes
    assert all(v.dtype == np.float64 for v in weights.values())
    assert arch.input_shape == tuple(x.shape[1:])

    model.eval()
    with torch.no_grad():
        expected = model(x).double()
    for module, flag in zip(model.modules(), training, strict=True):
        module.training = flag
    got = plaintext_forward(arch, weights, x)
    assert got.dtype == torch.float64
    assert arch.output_shape == tuple(expected.shape[1:])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    return arch, weights


def test_mlp() -> None:
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    arch, _ = _export_and_check(model, torch.randn(4, 1, 8, 8))
    assert [type(layer) for layer in arch.layers] == [Flatten, Linear, ReLU, Linear, ReLU, Linear]
    assert arch.layers[1] == Linear(64, 32)
    assert arch.input_shape == (1, 8, 8) and arch.output_shape == (10,)


def test_cnn_with_batchnorm_pools_and_dropout() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.BatchNorm2d(6),  # after a ReLU: cannot be folded -> Affine
        nn.AvgPool2d(2),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 10),
    )
    _randomize_batchnorm(model)
    model.train()  # export must use eval semantics and restore this flag
    arch, weights = _export_and_check(model, torch.randn(3, 1, 8, 8))
    assert model.training
    assert [type(layer) for layer in arch.layers] == [
        Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, Affine, AvgPool2d, Flatten, Linear,
    ]  # fmt: skip
    assert arch.layers[0] == Conv2d(1, 4, (3, 3), padding=(1, 1))
    assert arch.layers[2] == MaxPool2d((2, 2), (2, 2))
    assert arch.layers[5] == Affine((6, 1, 1))
    assert weights["5.scale"].shape == (6, 1, 1)


def test_mlp_with_batchnorm1d_is_folded() -> None:
    model = nn.Sequential(
        nn.BatchNorm1d(10),  # first layer: nothing to fold into -> Affine (F,)
        nn.Linear(10, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 3, bias=False),
        nn.BatchNorm1d(3),
    )
    _randomize_batchnorm(model)
    arch, _ = _export_and_check(model, torch.randn(5, 10))
    assert [type(layer) for layer in arch.layers] == [Affine, Linear, ReLU, Linear]
    assert arch.layers[0] == Affine((10,))
    assert arch.layers[3] == Linear(16, 3, bias=True)  # the BatchNorm's shift became a bias


class _ViewNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = x.view(x.size(0), -1)
        return self.fc(x)


def test_view_flatten_and_dynamic_batch() -> None:
    model = _ViewNet()
    arch, weights = _export_and_check(model, torch.randn(1, 2, 8, 8))
    assert [type(layer) for layer in arch.layers] == [Conv2d, ReLU, Flatten, Linear]
    assert arch.layers[0].stride == (2, 2)
    x = torch.randn(6, 2, 8, 8)  # a batch size other than the sample's
    with torch.no_grad():
        torch.testing.assert_close(plaintext_forward(arch, weights, x), model(x).double())


def test_onnx_file_and_bytes(tmp_path: Path) -> None:
    model = _ViewNet().eval()
    x = torch.randn(2, 2, 8, 8)
    data = _onnx_bytes(model, x, dynamic_batch=False)  # view() folds to Reshape [2, -1]
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    with torch.no_grad():
        expected = model(x).double()
    for source in (path, str(path), data):
        arch, weights = export_model(source)
        assert arch.input_shape == (2, 8, 8) and arch.output_shape == (5,)
        assert {k: v.shape for k, v in weights.items()} == arch.parameter_shapes()
        torch.testing.assert_close(plaintext_forward(arch, weights, x), expected)


def test_handwritten_onnx_matmul_add_and_gemm_attributes() -> None:
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(size=(4, 3)), rng.normal(size=(3,))
    w2, b2 = rng.normal(size=(3, 2)), rng.normal(size=(1, 2))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm"),
            helper.make_node("Add", ["h0", "b1"], ["h1"], name="add"),
            helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
            helper.make_node("Identity", ["h2"], ["h3"], name="id"),
            helper.make_node(
                "Gemm", ["h3", "w2", "b2"], ["y"], name="gemm", transB=0, alpha=0.5, beta=2.0
            ),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [
            numpy_helper.from_array(a.astype(np.float32), name)
            for name, a in [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)]
        ],
    )
    arch, weights = export_model(helper.make_model(graph).SerializeToString())
    assert arch.layers == (Linear(4, 3), ReLU(), Linear(3, 2))
    x = rng.normal(size=(7, 4))
    f32 = [a.astype(np.float32).astype(np.float64) for a in (w1, b1, w2, b2)]
    expected = 0.5 * (np.maximum(x @ f32[0] + f32[1], 0) @ f32[2]) + 2.0 * f32[3]
    got = plaintext_forward(arch, weights, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_onnx_symbolic_feature_dim_is_rejected() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "features"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "features"])],
    )
    with pytest.raises(ValueError, match="symbolic"):
        export_model(helper.make_model(graph).SerializeToString())


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 4, batch_first=True)


class _RnnModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.encoder.rnn(x)
        return self.head(out[:, -1])


def test_lstm_is_rejected_by_layer_name() -> None:
    with pytest.raises(UnsupportedModelError, match=r"layer 'encoder\.rnn' \(LSTM\)") as info:
        export_model(_RnnModel(), torch.randn(2, 3, 4))
    assert "Linear" in str(info.value)  # the supported layers are listed


def test_elu_module_is_rejected_by_layer_name() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ELU())
    with pytest.raises(UnsupportedModelError, match=r"layer '1' \(ELU\)"):
        export_model(model, torch.randn(2, 4))


class _FunctionalElu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.elu(self.fc(x))


def test_functional_elu_is_rejected_by_onnx_node() -> None:
    with pytest.raises(UnsupportedModelError, match=r"node '/Elu' \(Elu\)"):
        export_model(_FunctionalElu(), torch.randn(2, 4))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x)


def test_residual_onnx_exports_as_a_graph() -> None:
    model = _Residual()
    arch, weights = export_model(_onnx_bytes(model, torch.randn(2, 4)))
    assert arch.layers == (Linear(4, 4), Add())
    assert arch.inputs == ((-1,), (-1, 0)) and not arch.is_chain  # x + fc(x)
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.allclose(plaintext_forward(arch, weights, x), model(x).double(), atol=1e-6)


class _Block(nn.Module):
    """A ResNet basic block: conv-bn-relu-conv-bn plus a shortcut, then relu."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.short(x))


class _TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.Sequential(_Block(4, 4, 1), _Block(4, 8, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def test_resnet_exports_as_a_graph_with_batchnorm_folded() -> None:
    model = _TinyResNet()
    _randomize_batchnorm(model)
    arch, weights = export_model(model, torch.randn(2, 1, 8, 8))
    kinds = [type(layer).__name__ for layer in arch.layers]
    assert kinds.count("Add") == 2 and kinds.count("Conv2d") == 6
    assert "Affine" not in kinds  # every BatchNorm folded into its convolution
    assert AvgPool2d((4, 4), (4, 4)) in arch.layers  # the global pool
    add = kinds.index("Add")
    assert arch.sources(add) == (add - 1, 1)  # the identity skip: from the stem's ReLU
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x).double()
    assert torch.allclose(plaintext_forward(arch, weights, x), expected, atol=1e-5)


class _SharedConv(nn.Module):
    """A BatchNorm whose convolution also feeds the skip: it cannot fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_batchnorm_on_a_shared_activation_stays_an_affine_layer() -> None:
    model = _SharedConv()
    _randomize_batchnorm(model)
    arch, weights = export_model(model, torch.randn(2, 2, 5, 5))
    assert [type(layer) for layer in arch.layers] == [Conv2d, Affine, Add]
    assert arch.inputs == ((-1,), (0,), (1, 0))
    x = torch.randn(3, 2, 5, 5)
    with torch.no_grad():
        assert torch.allclose(
            plaintext_forward(arch, weights, x), model.eval()(x).double(), atol=1e-5
        )


class _Product(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


def test_product_of_two_activations_is_rejected_by_node() -> None:
    with pytest.raises(UnsupportedModelError, match=r"node '/Mul' \(Mul\) multiplies two"):
        export_model(_onnx_bytes(_Product(), torch.randn(2, 4)))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2, ceil_mode=True), nn.AvgPool2d(2, ceil_mode=True)])
def test_ceil_mode_pooling_is_rejected(pool: nn.Module) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), pool)
    with pytest.raises(UnsupportedModelError, match="ceil_mode"):
        export_model(model, torch.randn(2, 1, 7, 7))


def test_export_restores_mixed_training_flags() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(), nn.Linear(4, 2))
    model.train()
    model[2].eval()
    flags = [m.training for m in model.modules()]
    before = [p.detach().clone() for p in model.parameters()]
    export_model(model, torch.randn(3, 4))
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_module_needs_sample_input_unless_its_first_layer_is_linear() -> None:
    with pytest.raises(ValueError, match="sample_input"):
        export_model(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Flatten()))
    arch, _ = export_model(nn.Linear(2, 2))
    assert arch.input_shape == (2,)


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + y


def test_a_graph_with_two_inputs_is_rejected_before_anything_is_sent() -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TwoInputs().eval(), (torch.randn(1, 4), torch.randn(1, 4)), buffer,  # type: ignore[arg-type]
            dynamo=False, opset_version=17, input_names=["x", "y"], output_names=["out"],
        )  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="exactly one input and one output, found 2"):
        export_model(buffer.getvalue())
