"""A transformer's layer kinds in the domain and on the wire: shapes, checks, torch semantics."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from ppml.proto.domain import architecture as arch
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.wire import serde
from ppml.v1 import common_pb2


def _attention() -> arch.Architecture:
    """One attention head over 4 tokens of 6 features, a residual, LayerNorm, GELU, pooling."""
    return arch.Architecture(
        layers=(
            arch.Linear(6, 6),  # 0: (4, 6) embedding, per token
            arch.Bias((4, 6)),  # 1: positional embedding
            arch.Linear(6, 6),  # 2: q
            arch.Linear(6, 6),  # 3: k
            arch.Transpose((1, 0)),  # 4: kᵀ (6, 4)
            arch.MatMul(),  # 5: q kᵀ (4, 4)
            arch.Scale(1 / math.sqrt(6)),  # 6
            arch.Softmax(),  # 7
            arch.MatMul(),  # 8: weights @ x (4, 6)
            arch.Add(),  # 9: residual
            arch.LayerNorm(6),  # 10
            arch.GELU(),  # 11
            arch.Reshape((2, 12)),  # 12
            arch.Tanh(),  # 13
            arch.Sigmoid(),  # 14
            arch.Mean(0),  # 15: (12,)
            arch.Linear(12, 3),  # 16
        ),
        input_shape=(4, 6),
        output_shape=(3,),
        inputs=(
            (-1,), (0,), (1,), (1,), (3,), (2, 4), (5,), (6,), (7, 1), (8, 1), (9,), (10,),
            (11,), (12,), (13,), (14,), (15,),
        ),
    )  # fmt: skip


def test_transformer_architecture_round_trip_and_shapes() -> None:
    a = _attention()
    msg = common_pb2.Architecture.FromString(serde.architecture_to_proto(a).SerializeToString())
    back = serde.architecture_from_proto(msg)
    assert back == a and back.inputs == a.inputs
    shapes = arch.layer_shapes(back)
    assert shapes[4] == (6, 4) and shapes[5] == (4, 4) and shapes[8] == (4, 6)
    assert shapes[12] == (2, 12) and shapes[15] == (12,) and shapes[-1] == (3,)
    params = back.parameter_shapes()
    assert params["1.bias"] == (4, 6)
    assert params["10.weight"] == (6,) and params["10.bias"] == (6,)
    assert "MatMul[2, 4]" in back.describe() and "Scale(0.4082)" in back.describe()


def test_torch_model_of_the_layers_is_torchs_own_functions() -> None:
    a = _attention()
    torch.manual_seed(0)
    weights = {n: torch.randn(s, dtype=torch.float64) for n, s in a.parameter_shapes().items()}
    model = arch.build_model(a, nn).double()
    model.load_state_dict(weights)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    w = {k: v for k, v in weights.items()}
    fn = nn.functional

    def lin(i: int, h: torch.Tensor) -> torch.Tensor:
        return fn.linear(h, w[f"{i}.weight"], w[f"{i}.bias"])

    h1 = lin(0, x) + w["1.bias"]
    scores = lin(2, h1) @ lin(3, h1).transpose(1, 2) / math.sqrt(6)
    h9 = torch.softmax(scores, -1) @ h1 + h1
    h10 = fn.layer_norm(h9, (6,), w["10.weight"], w["10.bias"], 1e-5)
    h15 = torch.sigmoid(torch.tanh(fn.gelu(h10).reshape(3, 2, 12))).mean(1)
    torch.testing.assert_close(model(x), lin(16, h15), rtol=1e-12, atol=1e-12)


def _layer_msg(layer: arch.Layer, **fields: Any) -> common_pb2.Layer:
    msg = serde.layer_to_proto(layer)
    sub = getattr(msg, layer.KIND)
    for name, value in fields.items():
        if isinstance(value, tuple):
            del getattr(sub, name)[:]
            getattr(sub, name).extend(value)
        else:
            setattr(sub, name, value)
    return msg


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (_layer_msg(arch.Transpose((1, 0)), perm=(0, 0)), r"perm \[0, 0\] is not a permutation"),
        (_layer_msg(arch.Transpose((1, 0)), perm=(0,)), "is not a permutation of 2"),
        (_layer_msg(arch.Reshape((2, 3)), shape=(2, 0)), "must be positive"),
        (_layer_msg(arch.Reshape((2, 3)), shape=()), "must be positive"),
        (_layer_msg(arch.Scale(0.5), factor=0.0), r"size in \[2\^-16, 2\^16\]"),
        (_layer_msg(arch.Scale(0.5), factor=math.inf), r"size in \[2\^-16, 2\^16\]"),
        (_layer_msg(arch.Scale(0.5), factor=-1e6), r"size in \[2\^-16, 2\^16\], got -1000000"),
        (_layer_msg(arch.LayerNorm(4), size=0), "size must be positive"),
        (_layer_msg(arch.LayerNorm(4), eps=-1.0), r"eps must be in \[0, 1\]"),
        (_layer_msg(arch.LayerNorm(4), eps=math.nan), r"eps must be in \[0, 1\]"),
        (_layer_msg(arch.LayerNorm(4), eps=2.0), r"eps must be in \[0, 1\]"),
        (_layer_msg(arch.Bias((4,)), shape=()), "Bias shape must be positive"),
        (_layer_msg(arch.Mean(0), axis=-1), "a sample dim >= 0"),
    ],
)
def test_layer_from_proto_rejects(msg: common_pb2.Layer, message: str) -> None:
    with pytest.raises(PpmlError, match=f"layer 3: .*{message}") as excinfo:
        serde.layer_from_proto(msg, 3)
    assert excinfo.value.code == ErrorCode.INVALID_MODEL


@pytest.mark.parametrize(
    ("layer", "shapes", "message"),
    [
        (arch.MatMul(), ((4, 6), (4, 6)), r"cannot multiply \(4, 6\) by \(4, 6\)"),
        (arch.MatMul(), ((2, 4, 6), (3, 6, 4)), "cannot multiply"),
        (arch.MatMul(), ((6,), (6,)), "cannot multiply"),
        (arch.MatMul(), ((4, 6),), "takes 2 inputs, gets 1"),
        (arch.Transpose((1, 0)), ((2, 3, 4),), r"permutes 2 dims, gets \(2, 3, 4\)"),
        (arch.Reshape((5, 5)), ((4, 6),), r"cannot reshape \(4, 6\) to \(5, 5\)"),
        (arch.Bias((4, 6)), ((6,),), "does not broadcast"),
        (arch.Bias((3, 6)), ((4, 6),), "does not broadcast"),
        (arch.Mean(2), ((4, 6),), r"has no axis 2 in \(4, 6\)"),
        (arch.LayerNorm(4), ((4, 6),), r"normalises a last dim of 4, gets \(4, 6\)"),
        (arch.Linear(4, 2), ((6, 5),), r"expects \(\.\.\., 4\), gets \(6, 5\)"),
        (arch.Softmax(), ((),), "needs at least one dim"),
    ],
)
def test_shape_errors_name_both_shapes(
    layer: arch.Layer, shapes: tuple[tuple[int, ...], ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        layer.join_shapes(shapes)


def test_linear_applies_to_the_last_dim() -> None:
    assert arch.Linear(6, 2).out_shape((4, 6)) == (4, 2)
    assert arch.Linear(6, 2).out_shape((3, 4, 6)) == (3, 4, 2)
    assert arch.Bias((1, 6)).out_shape((4, 6)) == (4, 6)  # broadcasting over tokens


def test_architecture_from_proto_names_a_bad_graph_of_new_kinds() -> None:
    a = _attention()
    bad = replace(a, inputs=(*a.inputs[:5], (2,), *a.inputs[6:]))  # MatMul given one input
    with pytest.raises(PpmlError, match=r"layer 5 \(MatMul\) takes 2 input"):
        serde.architecture_from_proto(serde.architecture_to_proto(bad))
