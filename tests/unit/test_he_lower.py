"""A CKKS plan lowered to slot operations computes the plan, in both layouts, on plain
slot vectors (``simulate``: no encryption); and plans survive their byte form."""

from __future__ import annotations

import contextlib
import io
import zipfile

import numpy as np
import pytest

from ppml.client.he_compile import compile_plan
from ppml.proto.he import layout
from ppml.proto.he.params import param_set
from ppml.proto.he.plan import Affine, Conv, HePlan, PlanError, Square
from ppml.servers.he.evaluate import CompiledPlan
from ppml.servers.he.lower import LinearOp, lower, simulate
from ppml.training.poly_cnn import mnist_shaped_digits, train_poly_cnn

SLOTS = 4096  # the default parameter set's N / 2


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return mnist_shaped_digits()


@pytest.fixture(scope="module")
def poly_cnn_plan(digits: tuple[np.ndarray, ...]) -> HePlan:
    train_x, train_y, _, _ = digits
    return compile_plan(train_poly_cnn(train_x, train_y), (1, 28, 28))


def _conv_plan() -> HePlan:
    """3 input channels, kernel 7, stride 3, padding 1 on 12x12: 3x3 windows, 147 positions."""
    rng = np.random.default_rng(7)
    conv = Conv(rng.normal(size=(3, 3, 7, 7)) / 10, rng.normal(size=3), (3, 3), (1, 1))
    return HePlan(
        (3, 12, 12),
        conv,
        (
            Square(),
            Affine(rng.normal(size=(8, 27)) / 5, rng.normal(size=8)),
            Square(),
            Affine(rng.normal(size=(5, 8)), rng.normal(size=5)),
        ),
    )


def _dense_plan() -> HePlan:
    rng = np.random.default_rng(8)
    return HePlan(
        (30,),
        None,
        (
            Affine(rng.normal(size=(16, 30)) / 4, rng.normal(size=16)),
            Square(),
            Affine(rng.normal(size=(3, 16)), rng.normal(size=3)),
        ),
    )


def _lowered_forward(plan: HePlan, mode: str, x: np.ndarray) -> tuple[np.ndarray, int]:
    """The plan's logits through lower + simulate, group by group, and the group count."""
    where = layout.input_layout(plan, mode, SLOTS)
    ops = lower(plan, where, SLOTS)
    features = layout.input_features(plan, x)
    parts = []
    groups = layout.groups(x.shape[0], where.images_per_group(SLOTS))
    for group in groups:
        rows = features[group.start : group.stop]
        out = simulate(ops, layout.pack(where, rows, SLOTS))
        parts.append(layout.unpack(where, out, len(group), plan.output_size))
    return np.concatenate(parts), len(groups)


def _rows(plan: HePlan, mode: str, rng: np.random.Generator) -> np.ndarray:
    """A few more rows than one group holds."""
    per_group = layout.input_layout(plan, mode, SLOTS).images_per_group(SLOTS)
    return rng.uniform(0, 1, size=(per_group + 3, *plan.input_shape))


@pytest.mark.parametrize("mode", layout.MODES)
def test_poly_cnn_lowered_equals_the_plan(
    mode: str, poly_cnn_plan: HePlan, digits: tuple[np.ndarray, ...]
) -> None:
    test_x = digits[2].astype(np.float64)
    per_group = layout.input_layout(poly_cnn_plan, mode, SLOTS).images_per_group(SLOTS)
    x = np.concatenate([test_x] * (-(-(per_group + 3) // len(test_x))))[: per_group + 3]
    got, groups = _lowered_forward(poly_cnn_plan, mode, x)
    assert groups >= 2
    np.testing.assert_allclose(got, poly_cnn_plan.forward(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", layout.MODES)
@pytest.mark.parametrize("make", [_conv_plan, _dense_plan], ids=["conv k7 s3 p1", "dense"])
def test_lowered_equals_the_plan(mode: str, make: object) -> None:
    assert callable(make)
    plan: HePlan = make()
    x = _rows(plan, mode, np.random.default_rng(9))
    got, groups = _lowered_forward(plan, mode, x)
    assert groups >= 2
    expected = plan.forward(x)
    assert np.abs(expected).max() > 1  # not a trivially small output
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_rotation_counts(poly_cnn_plan: HePlan) -> None:
    single = lower(poly_cnn_plan, layout.input_layout(poly_cnn_plan, "single", SLOTS), SLOTS)
    assert sum(op.rotations() for op in single if isinstance(op, LinearOp)) <= 60
    for plan in (poly_cnn_plan, _conv_plan()):
        batch = lower(plan, layout.input_layout(plan, "batch", SLOTS), SLOTS)
        conv = batch[0]
        assert isinstance(conv, LinearOp)
        assert conv.rotations() == 0


@pytest.mark.parametrize("make", [_conv_plan, _dense_plan], ids=["conv", "dense"])
def test_plan_bytes_round_trip(make: object) -> None:
    assert callable(make)
    plan: HePlan = make()
    again = HePlan.from_bytes(plan.to_bytes())
    assert again.input_shape == plan.input_shape
    assert [type(s) for s in again.steps] == [type(s) for s in plan.steps]
    if plan.conv is not None:
        assert again.conv is not None
        assert (again.conv.stride, again.conv.padding) == (plan.conv.stride, plan.conv.padding)
        np.testing.assert_array_equal(again.conv.weight, plan.conv.weight)
    x = np.random.default_rng(1).normal(size=(4, *plan.input_shape))
    np.testing.assert_array_equal(again.forward(x), plan.forward(x))


def _with(plan: HePlan, name: str, change: object) -> bytes:
    """The plan's bytes with one stored array replaced by ``change(array)``."""
    assert callable(change)
    with np.load(io.BytesIO(plan.to_bytes())) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[name] = change(arrays[name].copy())
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _nan_first(a: np.ndarray) -> np.ndarray:
    a.flat[0] = np.nan
    return a


@pytest.mark.parametrize(
    "data",
    [
        b"garbage",
        _with(_dense_plan(), "header", lambda h: np.frombuffer(b'{"magic": "other"}', np.uint8)),
        _with(_dense_plan(), "a0", _nan_first),
        _with(_dense_plan(), "b2", lambda b: b * np.inf),
        _with(_dense_plan(), "a2", lambda a: a[:, :-1]),
    ],
    ids=["garbage", "foreign magic", "nan weight", "infinite bias", "wrong shape"],
)
def test_bad_plan_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(PlanError):
        HePlan.from_bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"PK\x03\x04junk",
        _with(_conv_plan(), "conv_weight", _nan_first),
        _with(_conv_plan(), "conv_bias", lambda b: b * np.inf),
    ],
    ids=["empty", "broken zip", "nan conv weight", "infinite conv bias"],
)
def test_unreadable_or_non_finite_plans_are_refused(data: bytes) -> None:
    with pytest.raises(PlanError):
        HePlan.from_bytes(data)


def test_a_layer_with_only_zero_weights_is_refused_at_compile_time() -> None:
    plan = _conv_plan()
    assert plan.conv is not None
    weight = plan.conv.weight.copy()
    weight[1] = 0.0
    zeroed = HePlan(
        plan.input_shape,
        Conv(weight, plan.conv.bias, plan.conv.stride, plan.conv.padding),
        plan.steps,
    )
    with pytest.raises(PlanError, match="only zero weights"):
        CompiledPlan(zeroed, param_set("n8192-d5"), "batch")


def test_mutated_plan_bytes_are_refused_as_plan_errors_only() -> None:
    good = _conv_plan().to_bytes()
    rng = np.random.default_rng(7)
    for _ in range(400):
        data = bytearray(good[: len(good) - int(rng.choice([0, 0, 1, 17, len(good) // 2]))])
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
            data[int(pos)] = int(rng.integers(0, 256))
        with contextlib.suppress(PlanError):  # anything else would be an INTERNAL on a server
            HePlan.from_bytes(bytes(data))


def test_a_zip_bomb_is_refused_before_it_unpacks() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("header.npy", bytes(64 << 20))  # 64 MiB of zeros, ~64 KiB packed
    assert len(buf.getvalue()) < 1 << 20
    with pytest.raises(PlanError, match="unpacks to"):
        HePlan.from_bytes(buf.getvalue())
