"""The ``dpsgd`` scenario of ``mpc_programs.py``: DP-SGD's MPC pieces against plaintext torch.

Every party runs the same program on the same public test values (encrypted
by rank 0); rank 0's result file carries the errors the test asserts on.
"""

from __future__ import annotations

from typing import Any

import torch

from ppml.servers.mpc.core.clipping import CLIP_MARGIN, clip_factors
from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.servers.mpc.training.dpsgd import add_own_noise, clipped_gradient_sums
from ppml.training.privacy import SecureRandom

NOISE_VALUES = 4000
NOISE_STD = 0.5  # each party's own std


def plain_model(seed: int) -> torch.nn.Sequential:
    """The test MLP in torch, weights from ``seed`` (public test weights, not secret randomness)."""
    gen = torch.Generator().manual_seed(seed)
    plain = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.8)
    return plain


def _models(seed: int) -> tuple[torch.nn.Sequential, list[Any]]:
    plain = plain_model(seed)
    layers = [crypten.nn.Linear(6, 5), crypten.nn.ReLU(), crypten.nn.Linear(5, 3)]
    for source, target in ((plain[0], layers[0]), (plain[2], layers[2])):
        for name in ("weight", "bias"):
            value = crypten.cryptensor(getattr(source, name).detach().clone(), src=0)
            target.set_parameter(name, value)
    for layer in layers:
        layer.encrypted = True  # as build_shared_model leaves a party's model
    return plain, layers


def plaintext_clipped_sums(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, loss: str, clip: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-example gradients by autograd, each clipped to ``clip``; their sums and the norms."""
    sums = [torch.zeros_like(p) for p in model.parameters()]
    norms = []
    for row in range(len(x)):
        model.zero_grad()
        out = model(x[row : row + 1])
        if loss == "cross_entropy":
            value = torch.nn.functional.cross_entropy(out, target[row : row + 1].argmax(1))
        else:
            value = torch.nn.functional.mse_loss(out, target[row : row + 1])
        value.backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        norms.append(norm)
        factor = min(1.0, clip / float(norm))
        sums = [s + factor * g for s, g in zip(sums, grads, strict=True)]
    return sums, torch.stack(norms)


def _clip_errors(loss: str, seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(10, 6, generator=gen) * 4 - 2
    target = torch.nn.functional.one_hot(torch.arange(10) % 3, 3).float()
    plain, layers = _models(seed)
    _, norms = plaintext_clipped_sums(plain, x, target, loss, 1.0)
    clip = float(norms.median())  # a bound that clips about half the examples
    # the MPC side aims at C (1 - margin); plaintext clipping at exactly that bound
    expected, _ = plaintext_clipped_sums(plain, x, target, loss, clip * (1 - CLIP_MARGIN))
    sums = clipped_gradient_sums(
        ("linear", "relu", "linear"),
        layers,
        crypten.cryptensor(x, src=0),
        crypten.cryptensor(target, src=0),
        loss,
        clip,
    )
    by_name = {(id(m), n): t.get_plain_text() for m, n, t in sums}
    order = [(layers[0], "weight"), (layers[0], "bias"), (layers[2], "weight"), (layers[2], "bias")]
    errors = {
        f"{loss}_param{i}_{name}": float((by_name[(id(m), name)] - e).abs().max())
        for i, ((m, name), e) in enumerate(zip(order, expected, strict=True))
    }
    errors[f"{loss}_clipped_examples"] = float((norms > clip).sum())
    errors[f"{loss}_unclipped_examples"] = float((norms <= clip).sum())
    errors[f"{loss}_max_norm"] = float(norms.max())
    return errors


# squared norms over C^2: both sides of 1 and of every stage boundary 64^j, up to 2^30
RATIOS = [0.0, 0.3, 0.97, 0.99, 1.01, 1.03, 2.0, 10.0, 63.0, 65.0, 300.0, 1e3, 4000.0, 4200.0,
          7e3, 1e4, 1e5, 2.6e5, 2.7e5, 1e6, 1.6e7, 1.7e7, 1e8, 1.07e9, 1.08e9]  # fmt: skip


def _factors() -> dict[str, list[float]]:
    """``min(1, C / sqrt(s))`` in MPC with ``C = 0.25`` over squared norms ``s``."""
    clip = 0.25
    s = torch.tensor(RATIOS, dtype=torch.float64) * clip**2
    opened = clip_factors(crypten.cryptensor(s, src=0), clip).get_plain_text()
    return {"factor": opened.tolist(), "norm": s.sqrt().tolist(), "clip": clip}


def _noise(world_size: int) -> dict[str, float]:
    """Open a zero tensor after every party added its own noise: its std and mean."""
    zero = crypten.cryptensor(torch.zeros(NOISE_VALUES), src=0)
    add_own_noise(zero, NOISE_STD, SecureRandom())
    opened = zero.get_plain_text().double()
    return {
        "noise_std": float(opened.std()),
        "noise_expected_std": NOISE_STD * world_size**0.5,
        "noise_mean": float(opened.mean()),
    }


def run(world_size: int) -> dict:
    errors: dict[str, float] = {}
    for loss, seed in (("cross_entropy", 1), ("mse", 2)):
        errors.update(_clip_errors(loss, seed))
    return {"errors": errors, "factors": _factors(), "noise": _noise(world_size)}
