"""A torch model as a CKKS plan: the plan computes what the model computes, layers CKKS
cannot evaluate are refused by name, and the reference CNN trains to a useful accuracy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ppml.client.he_compile import PlanError, Square, compile_plan
from ppml.proto.he.plan import Affine, HePlan
from ppml.proto.he.plan import Square as SquareStep
from ppml.training.poly_cnn import mnist_shaped_digits, poly_cnn, train_poly_cnn


def _randomise_batch_norms(model: nn.Module, seed: int) -> None:
    """Running statistics and affine parameters away from the identity, as after training."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=gen))
                m.bias.data.copy_(torch.randn(n, generator=gen))


def _reference(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = copy.deepcopy(model).double().eval()(torch.from_numpy(x))
    return out.reshape(x.shape[0], -1).numpy()


def _conv_bn_pool() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 5, kernel_size=3, stride=(2, 1), padding=(1, 2)),
        nn.BatchNorm2d(5),
        Square(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(5 * 1 * 6, 12),
        nn.BatchNorm1d(12),
        Square(),
        nn.Identity(),
        nn.Linear(12, 4),
    )


def _nested_conv_without_bias() -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(2, 3, kernel_size=(2, 3), stride=2, padding=1, bias=False), Square()
        ),
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 3, 6)),
        Square(),
        Square(),
        nn.Linear(6, 2),
    )


def _dense() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(30, 16),
        nn.BatchNorm1d(16, affine=False),
        nn.Dropout(),
        Square(),
        nn.Linear(16, 8),
        Square(),
        nn.Linear(8, 3),
        nn.Identity(),
    )


def _pooled_image() -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 5), Square(), nn.Linear(5, 3))


MODELS = {
    "conv+batchnorm+avgpool": (_conv_bn_pool, (3, 6, 10)),
    "nested, conv without bias, two squares": (_nested_conv_without_bias, (2, 6, 5)),
    "dense": (_dense, (30,)),
    "no conv on an image": (_pooled_image, (1, 8, 8)),
    "poly cnn": (poly_cnn, (1, 28, 28)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_plan_forward_equals_the_model(name: str) -> None:
    make, shape = MODELS[name]
    torch.manual_seed(1)
    model = make()
    _randomise_batch_norms(model, seed=2)
    model.train()  # the owner's mode must not matter, nor change
    x = np.random.default_rng(3).uniform(-1, 1, size=(7, *shape))
    plan = compile_plan(model, shape)
    expected = _reference(model, x)
    assert model.training and next(model.parameters()).dtype == torch.float32
    np.testing.assert_allclose(plan.forward(x), expected, rtol=1e-9, atol=1e-9)
    assert isinstance(plan.steps[-1], Affine)
    assert plan.output_size == expected.shape[1]


def test_conv_layout_and_folded_batch_norm() -> None:
    torch.manual_seed(0)
    model = _conv_bn_pool()
    _randomise_batch_norms(model, seed=5)
    plan = compile_plan(model, (3, 6, 10))
    assert plan.conv is not None and plan.conv.stride == (2, 1) and plan.conv.padding == (1, 2)
    assert [type(s) for s in plan.steps] == [SquareStep, Affine, SquareStep, Affine]
    # the conv (batch norm folded in) alone equals torch's conv then batch norm
    x = np.random.default_rng(0).normal(size=(2, 3, 6, 10))
    head = copy.deepcopy(model[:2]).double().eval()
    with torch.no_grad():
        expected = head(torch.from_numpy(x)).reshape(2, -1).numpy()  # channel-major
    conv_only = HePlan(
        plan.input_shape,
        plan.conv,
        (Affine(np.eye(expected.shape[1]), np.zeros(expected.shape[1])),),
    )
    np.testing.assert_allclose(conv_only.forward(x), expected, rtol=1e-9, atol=1e-9)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


REFUSED = {
    "relu": (
        lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
        (4,),
        "layer 1 (ReLU)",
    ),
    "nested relu": (
        lambda: nn.Sequential(nn.Linear(4, 4), nn.Sequential(Square(), nn.ReLU()), nn.Linear(4, 2)),
        (4,),
        "layer 1.1 (ReLU)",
    ),
    "max pool": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 2, 3), Square(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 2)
        ),
        (1, 6, 6),
        "layer 2 (MaxPool2d)",
    ),
    "ends with a square": (
        lambda: nn.Sequential(nn.Linear(4, 4), Square()),
        (4,),
        "layer 1 (Square)",
    ),
    "container": (
        lambda: nn.Sequential(nn.Linear(4, 4), Square(), _Residual()),
        (4,),
        "layer 2 (_Residual)",
    ),
    "container model": (_Residual, (4,), "the model (_Residual)"),
    "avg pool after the conv": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 2, 3), nn.AvgPool2d(2), Square(), nn.Flatten(), nn.Linear(8, 2)
        ),
        (1, 6, 6),
        "layer 1 (AvgPool2d)",
    ),
    "second conv": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 2, 3), Square(), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.Linear(8, 2)
        ),
        (1, 6, 6),
        "layer 2 (Conv2d)",
    ),
    "grouped conv": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 2, 3, groups=2), Square(), nn.Flatten(), nn.Linear(32, 2)
        ),
        (2, 6, 6),
        "layer 0 (Conv2d)",
    ),
    "batch statistics": (
        lambda: nn.Sequential(
            nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False), Square(), nn.Linear(4, 2)
        ),
        (4,),
        "layer 1 (BatchNorm1d)",
    ),
    "wrong input shape": (
        lambda: nn.Sequential(nn.Linear(4, 4), Square(), nn.Linear(5, 2)),
        (4,),
        "layer 2 (Linear)",
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_layers_are_named(name: str) -> None:
    make, shape, where = REFUSED[name]
    with pytest.raises(PlanError) as raised:
        compile_plan(make(), shape)
    assert where in str(raised.value)


def test_relu_refusal_says_to_use_square() -> None:
    with pytest.raises(PlanError, match=r"Square as the activation .*polynomials"):
        compile_plan(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), (4,))


def test_digits_are_mnist_shaped_and_split_the_same_way_each_time() -> None:
    train_x, train_y, test_x, test_y = mnist_shaped_digits()
    assert train_x.shape[1:] == test_x.shape[1:] == (1, 28, 28)
    assert train_x.dtype == test_x.dtype == np.float32
    assert train_x.min() >= 0.0 and train_x.max() <= 1.0
    rows = len(train_y) + len(test_y)
    assert rows == 1797 and abs(len(test_y) / rows - 0.25) < 0.01
    # stratified: every class keeps its share in the held-out part
    shares = np.bincount(test_y, minlength=10) / np.bincount(np.r_[train_y, test_y])
    assert np.all(np.abs(shares - 0.25) < 0.03)
    again = mnist_shaped_digits()
    np.testing.assert_array_equal(again[0], train_x)
    np.testing.assert_array_equal(again[3], test_y)
    assert not np.array_equal(mnist_shaped_digits(seed=1)[3], test_y)


def _largest_values(plan: HePlan, x: np.ndarray) -> list[float]:
    """max |value| after the convolution and after each step, over the rows of x."""
    assert plan.conv is not None
    width = plan.conv.weight.shape[0] * plan.conv_windows
    h = HePlan(plan.input_shape, plan.conv, (Affine(np.eye(width), np.zeros(width)),)).forward(x)
    found = [float(np.abs(h).max())]
    for step in plan.steps:
        h = h * h if isinstance(step, SquareStep) else h @ step.matrix.T + step.bias
        found.append(float(np.abs(h).max()))
    return found


def test_poly_cnn_trains_fast_to_a_useful_accuracy_with_moderate_values() -> None:
    train_x, train_y, test_x, test_y = mnist_shaped_digits()
    model = train_poly_cnn(train_x, train_y)  # ~1.5 s on one idle core
    plan = compile_plan(model, (1, 28, 28))
    logits = plan.forward(test_x.astype(np.float64))
    assert (logits.argmax(axis=1) == test_y).mean() >= 0.90
    # the default parameter set decodes |logit| < 2**9; keep every intermediate value small too
    assert np.abs(logits).max() < 2**8
    assert max(_largest_values(plan, test_x.astype(np.float64))) < 128


def test_training_is_repeatable() -> None:
    train_x, train_y, _, _ = mnist_shaped_digits()
    first = train_poly_cnn(train_x[:128], train_y[:128], epochs=1, seed=4)
    again = train_poly_cnn(train_x[:128], train_y[:128], epochs=1, seed=4)
    other = train_poly_cnn(train_x[:128], train_y[:128], epochs=1, seed=5)
    for a, b in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0].weight, other[0].weight)
