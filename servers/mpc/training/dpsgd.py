"""One DP-SGD step on secret shares: per-example clipping and each party's own noise.

The public parameters and their accounting are in
:mod:`ppml.training.privacy.dpsgd`; this module runs the mechanism inside
CrypTen, for chains of ``linear``, ``relu`` and ``flatten`` layers (the
kinds in ``DP_LAYER_KINDS``, refused otherwise at job start).

**Per-example norms without per-example gradients.** A linear layer's
gradient for example ``i`` is ``delta_i a_i^T`` (plus ``delta_i`` for the
bias), with ``a_i`` its input and ``delta_i`` the loss gradient at its
output, so ``||g_i||^2 = ||delta_i||^2 (||a_i||^2 + 1)``. The forward pass
keeps every ``a``, the backward pass every ``delta``; summed over layers this
gives each example's squared norm ``s_i`` from ``(B,)``-sized secrets only.

**Clipping** (:mod:`~ppml.servers.mpc.core.clipping`, shared with DP-FedAvg).
``f_i = min(1, C' / sqrt(s_i))`` with ``C' = C (1 - 2^-7)``: the margin
absorbs the approximations, so a clipped gradient's norm stays under ``C``.
The data owner chooses the rows and targets, so nothing is squared before it
is checked: every coordinate of every ``a`` and ``delta`` must lie within
``coordinate_bound`` (at most 2^8), each example's ``||a||^2`` per layer
within ``INPUT_CAP`` and ``||delta||^2`` within ``DELTA_CAP`` (all layers
together), and ``s_i`` within ``(-1, S_MAX)``; an example failing any check
(a crafted row, or a rare failed truncation) gets clip weight 0 and adds
nothing. The checks cost one range test of every ``a`` and ``delta``
coordinate, one comparison of the per-layer sums and a few products with 0/1
bits per step. The clipped sum of a layer's gradients is
``(f * delta)^T A`` and ``sum_i f_i delta_i``, both from the checked values.

**Noise.** Each party draws ``N(0, s^2)`` per coordinate from its own
:class:`~ppml.training.privacy.SecureRandom` with
``s = per_server_noise_std(z * C, n)``, encodes it with the tensor's
fixed-point encoder and adds it to *its own share*: the shared value then
carries the sum of all ``n`` draws, and no party knows the others'. Then the
sum is divided by the batch size and handed to CrypTen's SGD (momentum and
weight decay apply to the noised gradient, as in Opacus). Nothing is opened
here beyond CrypTen's masked values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ppml.proto.domain.architecture import Architecture
from ppml.servers.mpc.core.clipping import (
    clip,
    clip_stage_weights,
    coordinate_bound,
    in_range,
    outside,
)
from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.training.privacy import SecureRandom, per_server_noise_std
from ppml.training.privacy.dpsgd import DP_LAYER_KINDS

# d(per-example loss)/d(output): the batch losses are means of these per-example losses
OUTPUT_GRADIENT: dict[str, Callable[[Any, Any], Any]] = {
    "cross_entropy": lambda out, y: out.softmax(1) - y,
    "binary_cross_entropy": lambda out, y: out.sigmoid() - y,
    "mse": lambda out, y: (out - y).mul(2.0 / int(out.size(1))),
}


@dataclass
class _Tape:
    """What the backward pass needs from the forward pass, layer by layer."""

    kind: str
    module: Any
    saved: Any  # linear: its input; relu: the 0/1 mask; flatten: the input shape


def _forward(kinds: tuple[str, ...], modules: list[Any], x: Any) -> tuple[Any, list[_Tape]]:
    tape: list[_Tape] = []
    a = x
    for kind, module in zip(kinds, modules, strict=True):
        if kind == "linear":
            tape.append(_Tape(kind, module, a))
            a = module(a)
        elif kind == "relu":
            mask = a.gt(0)
            tape.append(_Tape(kind, module, mask))
            a = a * mask
        else:  # flatten
            tape.append(_Tape(kind, module, tuple(a.size())))
            a = a.reshape(a.size(0), -1)
    return a, tape


def _backward(tape: list[_Tape], delta: Any) -> list[tuple[Any, Any, Any]]:
    """``(module, input, delta)`` of every linear layer, last layer first."""
    dense: list[tuple[Any, Any, Any]] = []
    first_linear = next(i for i, t in enumerate(tape) if t.kind == "linear")
    for index in range(len(tape) - 1, first_linear - 1, -1):
        entry = tape[index]
        if entry.kind == "linear":
            dense.append((entry.module, entry.saved, delta))
            if index > first_linear:
                delta = delta.matmul(entry.module.weight)
        elif entry.kind == "relu":
            delta = delta * entry.saved
        else:
            delta = delta.reshape(*entry.saved)
    return dense


# caps on each example's ||a||^2 per layer and ||delta||^2 summed over layers: every
# product ||delta||^2 (||a||^2 + 1) and their sum stay below 2^30 (see clipping.py)
INPUT_CAP = 2.0**15  # ||a|| up to 181
DELTA_CAP = 2.0**14  # ||delta|| up to 128, all layers together


def _checked_clip_weights(
    dense: list[tuple[Any, Any, Any]], clip_norm: float
) -> tuple[Any, list[tuple[Any, Any, Any]]]:
    """Clip weights from checked values, and ``dense`` with out-of-range coordinates zeroed.

    Every ``a`` and ``delta`` coordinate is range-checked (one comparison),
    then each layer's ``||a||^2`` and ``||delta||^2`` and the total
    ``sum ||delta||^2`` (another comparison) before they are multiplied, so
    the squared norm cannot wrap; an example failing any check gets weight 0.
    """
    tensors = [a for _, a, _ in dense] + [delta for _, _, delta in dense]
    kept, bad = in_range(tensors, [coordinate_bound(int(t.size(1))) for t in tensors])
    layers = len(dense)
    inputs = [a.square().sum(1) for a in kept[:layers]]
    deltas = [delta.square().sum(1) for delta in kept[layers:]]
    total_delta = deltas[0]
    for value in deltas[1:]:
        total_delta = total_delta + value
    caps = [INPUT_CAP] * layers + [DELTA_CAP] * (layers + 1)
    bad = bad + outside([*inputs, *deltas, total_delta], caps)
    squared = None
    for (module, _, _), a2, delta2 in zip(dense, inputs, deltas, strict=True):
        term = delta2 * (a2 + 1 if module.bias is not None else a2)
        squared = term if squared is None else squared + term
    weights = clip_stage_weights(squared, clip_norm, bad)
    checked = [
        (module, a, delta)
        for (module, _, _), a, delta in zip(dense, kept[:layers], kept[layers:], strict=True)
    ]
    return weights, checked


def clipped_gradient_sums(
    kinds: tuple[str, ...], modules: list[Any], x: Any, target: Any, loss: str, clip_norm: float
) -> list[tuple[Any, str, Any]]:
    """``(module, parameter name, secret sum of clipped per-example gradients)``, no noise."""
    with crypten.no_grad():
        output, tape = _forward(kinds, modules, x)
        dense = _backward(tape, OUTPUT_GRADIENT[loss](output, target))
        weights, dense = _checked_clip_weights(dense, clip_norm)
        sums: list[tuple[Any, str, Any]] = []
        for module, a, delta in dense:
            clipped = clip(delta, weights)
            sums.append((module, "weight", clipped.t().matmul(a)))
            if module.bias is not None:
                sums.append((module, "bias", clipped.sum(0)))
    return sums


def add_own_noise(tensor: Any, std: float, rng: SecureRandom) -> None:
    """Add this party's ``N(0, std^2)`` draws, fixed-point encoded, to its share of ``tensor``."""
    if std == 0:
        return
    shape = tuple(tensor.size())
    noise = torch.from_numpy(rng.normal(tensor.nelement(), std).reshape(shape))
    tensor.share = tensor.share + tensor.encoder.encode(noise)


class DpSgdStep:
    """Sets every parameter's ``.grad`` to its clipped, noised, batch-averaged gradient."""

    def __init__(self, architecture: Architecture, loss: str, clip_norm: float, noise: float):
        self.kinds = tuple(layer.KIND for layer in architecture.layers)
        if not set(self.kinds) <= set(DP_LAYER_KINDS) or "linear" not in self.kinds:
            raise ValueError(f"DP-SGD cannot train layers {self.kinds}")
        self.loss = loss
        self.clip_norm = clip_norm
        parties = crypten.communicator.get().get_world_size()
        self.noise_std = per_server_noise_std(noise * clip_norm, parties)
        self._rng = SecureRandom()

    def gradients(self, model: Any, x: Any, target: Any) -> None:
        modules = list(model._modules.values())
        batch = int(x.size(0))
        for module, name, total in clipped_gradient_sums(
            self.kinds, modules, x, target, self.loss, self.clip_norm
        ):
            add_own_noise(total, self.noise_std, self._rng)
            getattr(module, name).grad = total.div(batch)
