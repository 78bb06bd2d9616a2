"""The models the benchmarks measure, defined once."""

from __future__ import annotations

import torch


def network_a() -> torch.nn.Module:
    """SecureML "Network A": 784-128-128-10 with ReLU, fixed public weights (seed 0)."""
    torch.manual_seed(0)  # public: benchmark weights, not secrets
    return torch.nn.Sequential(
        torch.nn.Linear(784, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    ).eval()
