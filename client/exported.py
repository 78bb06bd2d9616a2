"""A model reconstructed on its owner's machine, as plain PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ppml.proto import architecture as arch
from ppml.proto.architecture import ModelMeta


class AffineLayer(nn.Module):
    """``x * scale + shift`` (a folded BatchNorm, or the standardising first layer)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(shape))
        self.shift = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _module(layer: arch.Layer) -> nn.Module:
    match layer:
        case arch.Linear():
            return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
        case arch.Conv2d():
            return nn.Conv2d(
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=layer.groups,
                bias=layer.bias,
            )
        case arch.ReLU():
            return nn.ReLU()
        case arch.AvgPool2d():
            return nn.AvgPool2d(layer.kernel_size, stride=layer.stride, padding=layer.padding)
        case arch.MaxPool2d():
            return nn.MaxPool2d(layer.kernel_size, stride=layer.stride, padding=layer.padding)
        case arch.Flatten():
            return nn.Flatten()
        case arch.Affine():
            return AffineLayer(layer.shape)
    raise TypeError(f"unsupported layer {layer!r}")


def to_torch(architecture: arch.Architecture, weights: dict[str, torch.Tensor]) -> nn.Sequential:
    """A PyTorch Sequential with ``weights`` (names ``"{layer}.{param}"``) loaded."""
    model = nn.Sequential(*(_module(layer) for layer in architecture.layers))
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    return model.eval()


@dataclass(frozen=True)
class ExportedModel:
    """Weights reconstructed from every server's shares, on the owner's side only."""

    meta: ModelMeta
    weights: dict[str, torch.Tensor]

    def to_torch(self) -> nn.Sequential:
        return to_torch(self.meta.architecture, self.weights)
