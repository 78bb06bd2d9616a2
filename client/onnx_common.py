"""What the ONNX parser's modules share: the error, the supported ops, a parsed value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ppml.proto.domain.architecture import Layer

Dim = int | str  # a str is a symbolic (batch) dimension
Shape = tuple[Dim, ...]  # an activation's full shape, batch dimension first
Value = tuple[int, Shape]  # an activation: the step that computes it (MODEL_INPUT: none), its shape

SUPPORTED_OPS = (
    "Gemm, MatMul (+ Add) with a constant on the last dim, Conv, Relu, AveragePool, MaxPool, "
    "GlobalAveragePool, Flatten, Reshape (batch first, static), Transpose (batch fixed), "
    "BatchNormalization, Add of two activations (residual) or of a constant (bias), "
    "MatMul of two activations, Softmax and LayerNormalization (last axis), Gelu (or its Erf "
    "form), Tanh, Sigmoid, Mul/Div by a scalar constant, ReduceMean over one axis, "
    "Gather (an embedding of integer token ids, or x[:, i]), Concat of activations, "
    "Dropout, Identity"
)


class UnsupportedModelError(ValueError):
    """The model uses a layer or a graph structure that the MPC servers cannot run."""


def label(node: onnx.NodeProto) -> str:
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


def unsupported(node: onnx.NodeProto, why: str = "is not supported") -> UnsupportedModelError:
    return UnsupportedModelError(f"{label(node)} {why}; supported: a graph of {SUPPORTED_OPS}")


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class Step:
    """One emitted layer, its sources and its float64 parameters (mutable until folding is done)."""

    layer: Layer
    params: dict[str, np.ndarray]
    sources: tuple[int, ...]
