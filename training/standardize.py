"""Standardisation as every training path defines it: ``x * scale + shift``.

``scale = 1 / sqrt(var + VARIANCE_FLOOR)`` and ``shift = -mean * scale`` per
feature, with the population variance over all training rows. The MPC job
computes the same quantities on secret shares (``ppml.servers.mpc.training.trainer``);
this module is the plaintext definition.
"""

from __future__ import annotations

import torch

VARIANCE_FLOOR = 1e-2  # std = sqrt(var + VARIANCE_FLOOR): constant features stay finite


def standardizer(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` as the MPC job computes them (population variance plus a floor)."""
    mean = features.mean(0)
    variance = features.var(0, unbiased=False) + VARIANCE_FLOOR
    scale = variance.rsqrt()
    return scale, -mean * scale
