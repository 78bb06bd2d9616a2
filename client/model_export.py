"""Export a plaintext model to its public architecture and its (still plaintext) weights.

The client secret-shares the weights afterwards; the servers only ever see the
:class:`~ppml.proto.domain.architecture.Architecture`. A torch module is checked layer
by layer, exported to ONNX in memory and parsed by the same code as an ONNX
file (:mod:`ppml.client.onnx_graph`), so both routes accept exactly the same
graphs. :func:`plaintext_forward` is the reference semantics of an architecture.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from torch import nn

from ppml.client.exported import to_torch
from ppml.client.input_checks import check_rows
from ppml.client.onnx_graph import UnsupportedModelError, parse_onnx
from ppml.proto.domain.architecture import Architecture
from ppml.proto.domain.tokens import one_hot

__all__ = ["UnsupportedModelError", "export_model", "plaintext_forward"]

_SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Embedding,
    nn.Identity,
    nn.LayerNorm,
    nn.GELU,
    nn.Softmax,
    nn.Tanh,
    nn.Sigmoid,
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
)
_SUPPORTED_NAMES = ", ".join(cls.__name__ for cls in _SUPPORTED_MODULES)


ModelSource = nn.Module | str | os.PathLike[str] | bytes  # a torch module or an ONNX model


def export_model(
    model: ModelSource,
    sample_input: torch.Tensor | None = None,
    pad_id: int | None = None,
) -> tuple[Architecture, dict[str, np.ndarray]]:
    """Return ``(architecture, weights)`` for a torch module or an ONNX model.

    Args:
        model: a ``torch.nn.Module``, or an ONNX model as a file path or as bytes.
        sample_input: an example input batch (batch dimension first) for tracing a
            torch module; optional when its first layer is a ``Linear`` (a row of
            zeros of its input width is used), required otherwise. For a token
            model (an ``nn.Embedding`` reading the input), integer token ids of
            shape ``(batch, length)``, ``length`` the model's maximum.
        pad_id: a token model's padding id (the SDK pads shorter sequences with
            it); by default the embedding's ``padding_idx``, else 0.

    Returns:
        The public architecture, and float64 weights keyed exactly like
        ``architecture.parameter_shapes()``, with those shapes. BatchNorm
        layers are folded into the preceding Conv2d/Linear where possible,
        else they become :class:`Affine` layers.

    Raises:
        UnsupportedModelError: a layer, an op or the graph's shape is not
            supported; the message names the offending layer or node.
        InputShapeMismatch: ``sample_input``'s rows do not fit the first layer.
        ValueError: missing/ill-shaped ``sample_input`` or unreadable ONNX.
    """
    if isinstance(model, nn.Module):
        sample_input = _sample_for(model, sample_input)
        check_supported_modules(model)
        proto = _torch_to_onnx(model, sample_input)
    elif isinstance(model, bytes | bytearray):
        proto = _load(lambda: onnx.load_from_string(bytes(model)))
    elif isinstance(model, str | os.PathLike):
        path = os.fspath(model)
        proto = _load(lambda: onnx.load(path))
    else:
        raise TypeError(f"cannot export a {type(model).__name__}: expected a module or ONNX")
    if pad_id is None:
        pad_id = _padding_idx(model) if isinstance(model, nn.Module) else 0
    arch, weights = parse_onnx(proto, pad_id)
    if isinstance(model, nn.Module):
        assert sample_input is not None
        arch = replace(arch, meta={**arch.meta, "source": f"torch:{type(model).__name__}"})
        _check_reproduces(model, arch, weights, sample_input)
    return arch, weights


def _padding_idx(model: nn.Module) -> int:
    """The first embedding's ``padding_idx`` (0 when it has none or there is none)."""
    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    index = None if embedding is None else embedding.padding_idx
    return 0 if index is None else int(index) % embedding.num_embeddings  # type: ignore[union-attr]


def _first_layer(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if next(m.children(), None) is None), None)


def _sample_for(model: nn.Module, sample_input: torch.Tensor | None) -> torch.Tensor:
    """``sample_input``, checked against the first layer, or one made from a first Linear."""
    first = _first_layer(model)
    if sample_input is None:
        if isinstance(first, nn.Linear):
            return torch.zeros(1, first.in_features)
        if isinstance(first, nn.Embedding):
            raise ValueError(
                "a token model needs sample_input=, integer token ids of shape (batch, length), "
                "length the model's maximum, e.g. torch.zeros(1, 16, dtype=torch.long)"
            )
        raise ValueError(
            "a torch module whose first layer is not a Linear needs sample_input=, an example "
            "batch of shape (batch, ...), e.g. torch.zeros(1, 1, 28, 28)"
        )
    if sample_input.dim() < 2:
        raise ValueError(
            f"sample_input must be a batch of shape (batch, ...), got {tuple(sample_input.shape)}"
        )
    if isinstance(first, nn.Linear) and sample_input.dim() == 2:
        expected: tuple[int, ...] = (first.in_features,)
    elif isinstance(first, nn.Conv2d) and sample_input.dim() == 4:
        expected = (first.in_channels, *sample_input.shape[2:])
    else:
        return sample_input
    check_rows(expected, tuple(sample_input.shape), f"the model's first layer ({first})")
    return sample_input


def check_supported_modules(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` for the first unsupported leaf module.

    Composite modules (those with children) are not judged here: their
    ``forward`` may be any composition, which the ONNX parser checks op by op.
    A childless custom root module is likewise left to the ONNX parser.
    """
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue
        if module is model and not type(module).__module__.startswith("torch."):
            continue
        where = f"layer {name or '<root>'!r} ({type(module).__name__})"
        if not isinstance(module, _SUPPORTED_MODULES):
            raise UnsupportedModelError(
                f"{where} is not supported; supported layers: {_SUPPORTED_NAMES}"
            )
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and module.running_mean is None:
            raise UnsupportedModelError(
                f"{where} is not supported without running statistics (track_running_stats=False)"
            )


def _torch_to_onnx(model: nn.Module, sample_input: torch.Tensor) -> onnx.ModelProto:
    """Export in eval mode (batch dim dynamic); every module's training flag is restored."""
    flags = [(module, module.training) for module in model.modules()]
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # nn.Embedding(padding_idx)
            torch.onnx.export(
                model.eval(),
                (sample_input.detach(),),
                buffer,  # type: ignore[arg-type]
                dynamo=False,
                opset_version=17,
                do_constant_folding=True,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
    finally:
        for module, training in flags:
            module.training = training
    return onnx.load_from_string(buffer.getvalue())


def _check_reproduces(
    model: nn.Module, arch: Architecture, weights: dict[str, np.ndarray], x: torch.Tensor
) -> None:
    """Guard against a silent mismatch between the model and the exported chain."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        with torch.no_grad():
            expected = model.eval()(x).double()
    finally:
        for module, training in flags:
            module.training = training
    if arch.tokens is not None:
        x = torch.from_numpy(one_hot(x.numpy(), arch.tokens.vocab))
    got = plaintext_forward(arch, weights, x)
    error = (got - expected).abs().max().item() if got.shape == expected.shape else np.inf
    if not error <= 1e-3 * (1.0 + expected.abs().max().item()):
        raise UnsupportedModelError(
            f"the exported graph ({arch.describe()}) does not reproduce the model's output "
            f"(max abs error {error:.3g}); the model's forward uses unsupported operations"
        )


def _load(loader: Callable[[], onnx.ModelProto]) -> onnx.ModelProto:
    """Call ``loader``, turning a parse failure into a ValueError."""
    try:
        proto = loader()
    except (DecodeError, OSError) as exc:
        raise ValueError(f"not a readable ONNX model: {exc}") from exc
    if not isinstance(proto, onnx.ModelProto):
        raise ValueError("not a readable ONNX model")
    return proto


def plaintext_forward(
    arch: Architecture, weights: dict[str, np.ndarray], x: torch.Tensor
) -> torch.Tensor:
    """Run the layers in float64 torch: the reference for what the servers compute in MPC."""
    if tuple(x.shape[1:]) != arch.input_shape:
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not match (batch, "
            f"{', '.join(map(str, arch.input_shape))})"
        )
    params = {
        name: torch.as_tensor(np.asarray(value), dtype=torch.float64)
        for name, value in weights.items()
    }
    with torch.no_grad():
        return to_torch(arch, params, torch.float64)(x.detach().to(torch.float64))
