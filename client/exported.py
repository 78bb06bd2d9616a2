"""A model reconstructed on its owner's machine, as plain PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ppml.proto.domain import architecture as arch
from ppml.proto.domain.architecture import ModelMeta


def to_torch(
    architecture: arch.Architecture,
    weights: dict[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A PyTorch module with ``weights`` (names ``"{layer}.{param}"``) loaded.

    A ``Sequential`` for a chain; for a graph (a residual network), a module
    whose children are named like a ``Sequential``'s (``arch.graph_class``).
    """
    model = arch.build_model(architecture, nn).to(dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=True)
    return model.eval()


@dataclass(frozen=True)
class ExportedModel:
    """Weights reconstructed from every server's shares, on the owner's side only."""

    meta: ModelMeta
    weights: dict[str, torch.Tensor]

    def to_torch(self) -> nn.Module:
        return to_torch(self.meta.architecture, self.weights)
