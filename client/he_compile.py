"""An owner's plaintext torch model as the plan a CKKS server evaluates.

:func:`compile_plan` reads an ``nn.Sequential`` (nested ones are flattened)
and returns a :class:`~ppml.proto.he.plan.HePlan`:

* an optional first ``nn.Conv2d``, with an ``nn.BatchNorm2d`` right after it
  folded into its weight and bias; a :class:`Square` must follow;
* :class:`Square` activations, which split the rest into segments;
* every segment is linear (Linear, Flatten, AvgPool2d, BatchNorm1d/2d with
  running statistics, Dropout, Dropout2d, Identity) and collapses into one
  affine map ``A x + c``, computed numerically in float64: ``c`` is the
  segment at 0 and column ``j`` of ``A`` is the segment at the unit vector
  ``e_j``, less ``c``, each evaluated on the shape the tensor has at that
  point of the model. Inputs to the first affine map after the convolution
  are therefore in torch's Flatten order, channel by channel;
* the model ends with an affine segment.

Anything else (ReLU, MaxPool2d, a custom module, ...) is refused with a
:class:`~ppml.proto.he.plan.PlanError` naming the layer: CKKS evaluates
polynomials only. The owner's model is not modified (a float64 copy is read).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ppml.proto.he.plan import MAX_WEIGHTS, Affine, Conv, HePlan, PlanError, Step
from ppml.proto.he.plan import Square as SquareStep
from ppml.training.poly_cnn import Square

__all__ = ["PlanError", "Square", "compile_plan"]

_LINEAR: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Flatten,
    nn.AvgPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
_SUPPORTED = (
    "a first Conv2d, Linear, Flatten, AvgPool2d, BatchNorm1d, BatchNorm2d, Dropout, "
    "Dropout2d, Identity and ppml.client.he_compile.Square"
)

_Layer = tuple[str, nn.Module]  # (name as in model.named_modules(), module)


def compile_plan(model: nn.Module, input_shape: tuple[int, ...]) -> HePlan:
    """The model as an :class:`HePlan` for inputs of ``input_shape`` (no batch axis).

    ``plan.forward(x)`` equals ``model.eval()(x)`` in float64 up to rounding.
    Raises :class:`PlanError` naming the first layer CKKS cannot evaluate.
    """
    shape = tuple(int(d) for d in input_shape)
    with torch.no_grad():
        layers = _leaves(copy.deepcopy(model).double().eval())
        if not layers:
            raise PlanError("the model has no layers")
        for name, module in layers:
            _check_supported(name, module)
        conv, start = _take_conv(layers, shape)
        shapes = _shapes(layers, shape)
        steps: list[Step] = []
        segment: list[_Layer] = []
        segment_start = start
        for i in range(start, len(layers)):
            if type(layers[i][1]) is Square:
                if segment:
                    steps.append(_collapse(segment, shapes[segment_start]))
                steps.append(SquareStep())
                segment, segment_start = [], i + 1
            else:
                segment.append(layers[i])
        if not segment:
            name, module = layers[-1]
            raise PlanError(
                f"layer {name} ({type(module).__name__}): the model must end with a linear "
                "layer (Linear), not an activation"
            )
        steps.append(_collapse(segment, shapes[segment_start]))
        return HePlan(shape, conv, tuple(steps))


def _leaves(module: nn.Module, prefix: str = "") -> list[_Layer]:
    """The modules in the order they run, nested ``nn.Sequential`` flattened."""
    if type(module) is not nn.Sequential:
        if any(True for _ in module.children()):
            where = f"layer {prefix}" if prefix else "the model"
            raise PlanError(
                f"{where} ({type(module).__name__}) is a container other than nn.Sequential: "
                "CKKS plans are read from nn.Sequential models only"
            )
        return [(prefix or "0", module)]
    out: list[_Layer] = []
    for name, child in module.named_children():
        out += _leaves(child, f"{prefix}.{name}" if prefix else name)
    return out


def _check_supported(name: str, module: nn.Module) -> None:
    kind = type(module)
    if kind in (Square, nn.Conv2d, *_LINEAR):
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and (
            module.running_mean is None or module.running_var is None
        ):
            raise PlanError(
                f"layer {name} ({kind.__name__}) has no running statistics "
                "(track_running_stats=False), so it is not an affine map at inference"
            )
        return
    raise PlanError(
        f"layer {name} ({kind.__name__}) cannot be evaluated under CKKS: use "
        "ppml.client.he_compile.Square as the activation (CKKS evaluates polynomials only; "
        f"supported layers: {_SUPPORTED})"
    )


def _shapes(layers: list[_Layer], input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shape (no batch axis) entering each layer, and the output's last."""
    x = torch.zeros((1, *input_shape), dtype=torch.float64)
    shapes = [input_shape]
    for name, module in layers:
        try:
            x = module(x)
        except (RuntimeError, ValueError, IndexError) as e:
            raise PlanError(
                f"layer {name} ({type(module).__name__}) does not accept a tensor of shape "
                f"{tuple(x.shape[1:])}: {e}"
            ) from None
        shapes.append(tuple(int(d) for d in x.shape[1:]))
    return shapes


def _take_conv(layers: list[_Layer], input_shape: tuple[int, ...]) -> tuple[Conv | None, int]:
    """The first convolution (BatchNorm2d folded in) and the index of the layer after it."""
    for name, module in layers[1:]:
        if type(module) is nn.Conv2d:
            raise PlanError(
                f"layer {name} (Conv2d): only the first layer may be a convolution under CKKS"
            )
    name, first = layers[0]
    if not isinstance(first, nn.Conv2d):
        return None, 0
    _check_conv(name, first, input_shape)
    weight = first.weight.detach().numpy().astype(np.float64)
    bias = (
        first.bias.detach().numpy().astype(np.float64)
        if first.bias is not None
        else np.zeros(weight.shape[0])
    )
    start = 1
    if start < len(layers) and type(layers[start][1]) is nn.BatchNorm2d:
        weight, bias = _fold_batch_norm(layers[start][1], weight, bias)
        start += 1
    if start < len(layers) and type(layers[start][1]) is not Square:
        after, module = layers[start]
        raise PlanError(
            f"layer {after} ({type(module).__name__}): under CKKS the convolution must be "
            "followed by BatchNorm2d at most, then Square; put linear layers after the Square"
        )
    if start == len(layers):
        raise PlanError(f"layer {name} (Conv2d): the model must end with a linear layer (Linear)")
    stride, padding = first.stride, first.padding
    assert isinstance(padding, tuple)
    conv = Conv(weight, bias, (int(stride[0]), int(stride[1])), (int(padding[0]), int(padding[1])))
    return conv, start


def _check_conv(name: str, conv: nn.Conv2d, input_shape: tuple[int, ...]) -> None:
    problem = None
    if len(input_shape) != 3:
        problem = f"needs a (channels, height, width) input, not {input_shape}"
    elif conv.groups != 1:
        problem = "groups must be 1"
    elif tuple(conv.dilation) != (1, 1):
        problem = "dilation must be 1"
    elif conv.padding_mode != "zeros":
        problem = "padding_mode must be 'zeros'"
    elif isinstance(conv.padding, str):
        problem = "padding must be an int or a pair of ints, not a string"
    if problem:
        raise PlanError(f"layer {name} (Conv2d): {problem}")


def _fold_batch_norm(
    bn: nn.Module, weight: np.ndarray, bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Conv then BatchNorm2d (running statistics) as one conv: scale each output channel."""
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.running_mean is not None and bn.running_var is not None
    mean = bn.running_mean.numpy().astype(np.float64)
    scale = 1.0 / np.sqrt(bn.running_var.numpy().astype(np.float64) + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.detach().numpy().astype(np.float64)
        shift = bn.bias.detach().numpy().astype(np.float64)
    else:
        shift = np.zeros_like(mean)
    return weight * scale[:, None, None, None], (bias - mean) * scale + shift


def _collapse(segment: Sequence[_Layer], shape: tuple[int, ...]) -> Affine:
    """A run of linear layers as ``A x + c``: its value at 0 and at each unit vector."""
    n = int(np.prod(shape))
    with torch.no_grad():
        zero = _run(segment, torch.zeros((1, *shape), dtype=torch.float64))
        m = zero.shape[1]
        if n * m > MAX_WEIGHTS:
            name, module = segment[0]
            raise PlanError(
                f"the linear layers from layer {name} ({type(module).__name__}) make a "
                f"{m}x{n} matrix; at most {MAX_WEIGHTS} weights are served in CKKS mode"
            )
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
        columns = _run(segment, basis) - zero  # (n, m): row j is A e_j
    return Affine(columns.T.numpy().copy(), zero[0].numpy().copy())


def _run(segment: Sequence[_Layer], x: torch.Tensor) -> torch.Tensor:
    for _, module in segment:
        x = module(x)
    return x.reshape(x.shape[0], -1)
