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


def to_torch(architecture: arch.Architecture, weights: dict[str, torch.Tensor]) -> nn.Sequential:
    """A PyTorch Sequential with ``weights`` (names ``"{layer}.{param}"``) loaded."""
    model = nn.Sequential(*arch.build_modules(architecture, nn, AffineLayer))
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    return model.eval()


@dataclass(frozen=True)
class ExportedModel:
    """Weights reconstructed from every server's shares, on the owner's side only."""

    meta: ModelMeta
    weights: dict[str, torch.Tensor]

    def to_torch(self) -> nn.Sequential:
        return to_torch(self.meta.architecture, self.weights)
