"""Truncation under load, new path against CrypTen's (run inside ``mpc_programs.py suite``).

Both checks make truncation wraps likely, so that CrypTen's own division
(2 parties: local; 3 parties: the dealer's carry-blind ``wraps``) fails
many times with certainty for practical purposes, while ppml's exact
truncation (:mod:`ppml.servers.mpc.core.truncation`) must never fail:

* :func:`element_errors`: 200,000 products of real value up to ``2^20``
  (encoded at scale ``2^32``) divided by ``2^16``; CrypTen fails each with
  probability about ``|v| / 2^32``, ~25 expected failures;
* :func:`large_activation_training`: 6 SGD steps (batch 256) of a 16-64-4
  MLP whose 56 idle hidden units sit at pre-activations around ``-1.4e6``
  (harmless in plaintext); ~28 failed truncations expected on CrypTen's
  path, each turning an idle unit into one of ``~4e9`` and wrecking the
  weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ppml.servers.mpc.core import truncation
from ppml.servers.mpc.core.crypten_compat import crypten

SCALE_BITS = 16
ELEMENTS = 200_000
MAGNITUDE = 2.0**20
STEPS, BATCH, IDLE, IDLE_WEIGHT = 6, 256, 56, -10_000.0


def _divide(values: np.ndarray, exact: bool) -> np.ndarray:
    """Share ``values`` (integers), divide them by ``2^16`` on the shares, open."""
    shared = crypten.mpc.primitives.ArithmeticSharedTensor(
        torch.from_numpy(values), precision=0, src=0
    )
    if exact:
        shared.div_(1 << SCALE_BITS)
    else:
        truncation._original_div(shared, 1 << SCALE_BITS)
    return shared.reveal().numpy()


def element_errors() -> dict[str, int]:
    """Failures (off by more than 2 units) of each path on the same large products."""
    rng = np.random.default_rng(21)  # public test values
    real = rng.uniform(-MAGNITUDE, MAGNITUDE, ELEMENTS)
    encoded = np.rint(real * 2.0 ** (2 * SCALE_BITS)).astype(np.int64)
    expected = encoded >> SCALE_BITS
    new = np.abs(_divide(encoded, exact=True) - expected)
    old = np.abs(_divide(encoded, exact=False) - expected)
    return {
        "new_failures": int((new > 2).sum()),
        "new_max_units": int(new.max()),
        "old_failures": int((old > 2).sum()),
    }


def _model_weights() -> list[torch.Tensor]:
    rng = np.random.default_rng(5)  # public test model
    w1 = rng.normal(0.0, 0.1, (64, 16))
    w1[64 - IDLE :] = IDLE_WEIGHT * (1.0 + 0.1 * rng.uniform(size=(IDLE, 16)))  # idle units
    b1 = rng.normal(0.0, 0.1, 64)
    w2, b2 = rng.normal(0.0, 0.3, (4, 64)), rng.normal(0.0, 0.1, 4)
    return [torch.from_numpy(a.astype(np.float32)) for a in (w1, b1, w2, b2)]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(6)
    x = rng.uniform(0.0, 16.0, (STEPS * BATCH, 16))  # digits-like features
    labels = (x[:, :4].argmax(1)).astype(np.int64)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels)


def _plain(lr: float) -> list[torch.Tensor]:
    w1, b1, w2, b2 = (t.clone().requires_grad_(True) for t in _model_weights())
    x, labels = _data()
    for step in range(STEPS):
        rows = slice(step * BATCH, (step + 1) * BATCH)
        out = (x[rows] @ w1.T + b1).relu() @ w2.T + b2
        loss = torch.nn.functional.cross_entropy(out, labels[rows])
        for p in (w1, b1, w2, b2):
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in (w1, b1, w2, b2):
                p -= lr * p.grad  # type: ignore[operator]
    return [p.detach() for p in (w1, b1, w2, b2)]


def _mpc(lr: float) -> list[torch.Tensor]:
    w1, b1, w2, b2 = _model_weights()
    layers = [crypten.nn.Linear(16, 64), crypten.nn.Linear(64, 4)]
    with torch.no_grad():
        layers[0].weight.copy_(w1)
        layers[0].bias.copy_(b1)
        layers[1].weight.copy_(w2)
        layers[1].bias.copy_(b2)
    model = crypten.nn.Sequential(layers[0], crypten.nn.ReLU(), layers[1])
    model.encrypt(src=0)
    model.train()
    x, labels = _data()
    one_hot = torch.nn.functional.one_hot(labels, 4).float()
    loss_fn = crypten.nn.CrossEntropyLoss()
    for step in range(STEPS):
        rows = slice(step * BATCH, (step + 1) * BATCH)
        out = model(crypten.cryptensor(x[rows], src=0))
        loss = loss_fn(out, crypten.cryptensor(one_hot[rows], src=0))
        model.zero_grad()
        loss.backward()
        model.update_parameters(lr)
    return [
        p.get_plain_text()
        for p in (layers[0].weight, layers[0].bias, layers[1].weight, layers[1].bias)
    ]


def large_activation_training(lr: float = 0.01) -> dict[str, Any]:
    """Largest |MPC - plaintext| weight after training, on ppml's path and on CrypTen's."""
    plain = _plain(lr)
    result: dict[str, Any] = {}
    for name, exact in (("new", True), ("old", False)):
        if not exact:
            truncation.uninstall()
        try:
            trained = _mpc(lr)
        finally:
            truncation.install()
        errors = [float((a - b).abs().max()) for a, b in zip(trained, plain, strict=True)]
        result[f"{name}_weight_errors"] = errors
        result[f"{name}_max_weight_error"] = max(errors)
    return result
