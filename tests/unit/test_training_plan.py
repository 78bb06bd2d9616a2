"""The public batch order, loss/output checks and the plaintext training twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ppml.proto.domain.jobs import LOSSES, TrainingSpec
from ppml.training.batches import BatchPlan
from ppml.training.losses import LossMismatch, accuracy_kind, check_fits
from ppml.training.plaintext import train_plaintext
from ppml.training.standardize import VARIANCE_FLOOR, standardizer

# ---------------------------------------------------------------- batch plan


@pytest.mark.parametrize(
    ("rows", "batch_size", "batches"),
    [(10, 3, 4), (9, 3, 3), (1, 8, 1), (7, 7, 1), (7, 1, 7), (100, 32, 4)],
)
def test_batches_partition_each_epochs_permutation(
    rows: int, batch_size: int, batches: int
) -> None:
    plan = BatchPlan(rows, batch_size, seed=7)
    assert plan.batches_per_epoch == batches
    for epoch in range(3):
        order = plan.permutation(epoch)
        assert order.dtype == np.int64
        assert sorted(order.tolist()) == list(range(rows))  # every row exactly once
        parts = [plan.indices(epoch * batches + b) for b in range(batches)]
        np.testing.assert_array_equal(np.concatenate(parts), order)
        sizes = [len(p) for p in parts]
        assert sizes[:-1] == [batch_size] * (batches - 1)
        assert sizes[-1] == rows - batch_size * (batches - 1)
        assert 0 < sizes[-1] <= batch_size


def test_last_batch_is_shorter() -> None:
    plan = BatchPlan(10, 4, seed=0)
    assert [len(plan.indices(s)) for s in range(3)] == [4, 4, 2]
    assert len(plan.indices(3)) == 4  # next epoch starts with a full batch


def test_same_seed_gives_the_same_order() -> None:
    a, b = BatchPlan(50, 8, seed=3), BatchPlan(50, 8, seed=3)
    for step in range(20):
        np.testing.assert_array_equal(a.indices(step), b.indices(step))


def test_different_seeds_and_epochs_give_different_orders() -> None:
    plan = BatchPlan(50, 8, seed=3)
    orders = [plan.permutation(epoch).tolist() for epoch in range(4)]
    assert len({tuple(o) for o in orders}) == 4
    assert orders[0] != list(range(50))  # actually shuffled
    assert BatchPlan(50, 8, seed=4).permutation(0).tolist() != orders[0]


def test_permutation_does_not_depend_on_batch_size() -> None:
    np.testing.assert_array_equal(
        BatchPlan(30, 4, seed=1).permutation(2), BatchPlan(30, 7, seed=1).permutation(2)
    )


def test_locate() -> None:
    plan = BatchPlan(10, 4, seed=0)  # 3 batches per epoch
    assert [plan.locate(s) for s in range(7)] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
        (2, 0),
    ]
    assert plan.locate(3 * 5 + 1) == (5, 1)


def test_locate_matches_the_training_spec_counts() -> None:
    spec = TrainingSpec(("d",), epochs=3, batch_size=4, lr=0.1)
    plan = BatchPlan(10, spec.batch_size, 0)
    assert plan.batches_per_epoch == spec.batches_per_epoch(10)
    assert plan.locate(spec.steps_total(10) - 1) == (2, 2)


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize(
    ("loss", "output_shape", "num_classes"),
    [
        ("cross_entropy", (3,), 3),
        ("cross_entropy", (2,), 2),
        ("mse", (4,), 4),
        ("binary_cross_entropy", (1,), 2),
    ],
)
def test_check_fits_accepts(loss: str, output_shape: tuple[int, ...], num_classes: int) -> None:
    check_fits(loss, output_shape, num_classes)


@pytest.mark.parametrize(
    ("loss", "output_shape", "num_classes", "needles"),
    [
        ("cross_entropy", (2,), 3, ["(3,)", "(2,)", "3 classes"]),
        ("cross_entropy", (1,), 2, ["(2,)", "(1,)"]),
        ("cross_entropy", (3, 1), 3, ["(3,)", "(3, 1)"]),
        ("mse", (10,), 3, ["mse", "(3,)", "(10,)"]),
        ("binary_cross_entropy", (1,), 3, ["2 classes", "has 3"]),
        ("binary_cross_entropy", (2,), 2, ["(1,)", "(2,)"]),
        ("hinge", (2,), 2, ["hinge", *LOSSES]),
        ("", (2,), 2, ["unknown loss"]),
    ],
)
def test_check_fits_rejects_with_the_sizes(
    loss: str, output_shape: tuple[int, ...], num_classes: int, needles: list[str]
) -> None:
    with pytest.raises(LossMismatch) as excinfo:
        check_fits(loss, output_shape, num_classes)
    for needle in needles:
        assert needle in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_accuracy_kind() -> None:
    assert accuracy_kind((3,), 3) == "argmax"
    assert accuracy_kind((2,), 2) == "argmax"
    assert accuracy_kind((1,), 2) == "sign"
    for output_shape, classes in [((1,), 3), ((4,), 3), ((2, 1), 2)]:
        with pytest.raises(LossMismatch, match=f"{classes}-class"):
            accuracy_kind(output_shape, classes)


# ---------------------------------------------------------------- plaintext twin


def _blobs(rows: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(rows) % 2
    centres = np.where(labels[:, None] == 1, 2.0, -2.0)
    return centres + rng.normal(0.0, 0.5, (rows, 2)), labels


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2))


def _ce(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        out = model(torch.as_tensor(x, dtype=torch.float32))
        return float(nn.functional.cross_entropy(out, torch.as_tensor(y)))


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        out = model(torch.as_tensor(x, dtype=torch.float32))
    return float((out.argmax(1).numpy() == y).mean())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("standardize", [False, True])
def test_train_plaintext_reduces_loss_and_leaves_the_input_alone(standardize: bool) -> None:
    x, y = _blobs()
    model = _model()
    before = _state(model)
    spec = TrainingSpec(
        ("d",), epochs=5, batch_size=16, lr=0.2, momentum=0.5, seed=1, standardize=standardize
    )
    initial_loss = _ce(model, x, y)
    trained = train_plaintext(model, x, y, spec, num_classes=2)
    assert trained is not model
    assert _ce(trained, x, y) < 0.5 * initial_loss
    assert _accuracy(trained, x, y) == 1.0
    assert not trained.training  # returned in eval mode
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name])  # the argument is untouched
    if standardize:
        assert isinstance(trained, nn.Sequential) and len(trained) == 2


def test_train_plaintext_is_deterministic_for_a_seed() -> None:
    x, y = _blobs()
    spec = TrainingSpec(("d",), epochs=2, batch_size=8, lr=0.1, seed=5)
    a = train_plaintext(_model(), x, y, spec, 2)
    b = train_plaintext(_model(), x, y, spec, 2)
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, msg=name)
    c = train_plaintext(_model(), x, y, TrainingSpec(("d",), 2, 8, 0.1, seed=6), 2)
    assert not torch.equal(a.state_dict()["0.weight"], c.state_dict()["0.weight"])


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_train_plaintext_other_losses(loss: str) -> None:
    x, y = _blobs()
    torch.manual_seed(0)
    outputs = 1 if loss == "binary_cross_entropy" else 2
    model = nn.Sequential(nn.Linear(2, outputs))
    spec = TrainingSpec(("d",), epochs=5, batch_size=16, lr=0.2, loss=loss, seed=2)
    trained = train_plaintext(model, x, y, spec, 2)
    with torch.no_grad():
        out = trained(torch.as_tensor(x, dtype=torch.float32))
    predicted = (out[:, 0] > 0).long() if outputs == 1 else out.argmax(1)
    assert float((predicted.numpy() == y).mean()) == 1.0


def test_standardizer_gives_mean_zero_and_unit_std() -> None:
    rng = np.random.default_rng(1)
    features = torch.as_tensor(
        rng.normal([5.0, -300.0, 0.0], [10.0, 40.0, 3.0], (500, 3)), dtype=torch.float64
    )
    scale, shift = standardizer(features)
    out = features * scale + shift
    torch.testing.assert_close(out.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(
        out.std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=2e-3, rtol=0
    )


def test_standardizer_keeps_constant_features_finite() -> None:
    features = torch.tensor([[1.0, 3.0], [1.0, 5.0], [1.0, 7.0]])
    scale, shift = standardizer(features)
    assert torch.isfinite(scale).all() and torch.isfinite(shift).all()
    assert float(scale[0]) == pytest.approx(VARIANCE_FLOOR**-0.5, rel=1e-5)
    out = features * scale + shift
    assert torch.allclose(out[:, 0], torch.zeros(3), atol=1e-5)
