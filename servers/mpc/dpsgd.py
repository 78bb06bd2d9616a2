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

**Clipping.** ``f_i = min(1, C' / sqrt(s_i))`` with ``C' = C (1 - 2^-7)``:
the margin absorbs the approximation below, so a clipped gradient's norm
stays under ``C``. With ``t = s / C'^2``, the copies ``t / 64^j``
(``j = 0..5``) go through *one* CrypTen ``inv_sqrt`` (stacked, so the
Newton iterations cost the rounds of one); one stacked comparison
``s > C'^2 64^j`` (against public values, no product) picks the copy that
lies in ``[1, 64)``, where ``inv_sqrt`` is accurate to within 0.5 %, and
``t^-1/2 = (t / 64^j)^-1/2 / 8^j``. Each ``delta_i`` is multiplied by that
root (in ``(1/8, 1]``, full precision) and only then by the public, exact
``8^-j`` (:func:`clip`). Every product that matters stays small (CrypTen's
two-party truncation fails with a probability that grows with the value:
about ``|x| / 2^32`` for a product of value ``x``), and the rounding is an
absolute ``2^-16`` per coordinate, not a relative error that grows with the
norm. The clipped sum of a layer's gradients is ``(f * delta)^T A`` and
``sum_i f_i delta_i``. The squared norms themselves are products: keep
per-example norms within ~100 C (the usual regime) for them to be reliable.

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
from ppml.servers.mpc.crypten_compat import crypten
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


CLIP_MARGIN = 2**-7  # clip to C (1 - margin): room for the inverse square root's error
_STAGES = 6  # t / 64^j for j < 6: t up to 2^36, past 2^31 (any product of two secrets)
# stage weights: row 0 keeps delta (not clipped), row j + 1 holds (t / 64^j)^-1/2, worth 8^-j
STAGE_SCALES = (1.0, *(8.0**-j for j in range(_STAGES)))


def clip_stage_weights(squared_norms: Any, clip_norm: float) -> Any:
    """Secret ``(7, B)`` weights ``w`` with ``sum_k w[k] STAGE_SCALES[k] = min(1, C' / sqrt(s))``.

    ``C' = C (1 - CLIP_MARGIN)``; ``squared_norms`` is a secret ``(B,)``
    tensor; ``t = s / C'^2`` below ``2^36``. The row in use multiplies a
    value below 64; rows not in use may overflow into garbage, and are
    multiplied by an exact 0. Per example at most one row is non-zero: row
    0 (= 1) when ``s <= C'^2``, else the row of the stage whose copy lies in
    ``[1, 64)``, holding its inverse square root in ``(1/8, 1]`` (full
    relative precision). Rounds: one ``inv_sqrt``, one comparison and one
    multiplication, whatever ``s``.
    """
    bound2 = (clip_norm * (1 - CLIP_MARGIN)) ** 2
    s = squared_norms
    # s / 64^j by integer division, then / C'^2: the product is small in the row that is used
    # (CrypTen's two-party truncation fails with a probability that grows with the value)
    stages = crypten.stack([s.div(64**j) if j else s for j in range(_STAGES)])
    roots = stages.mul(1.0 / bound2).inv_sqrt()  # row j accurate where 64^j <= t < 64^(j+1)
    thresholds = torch.tensor([bound2 * 64.0**j for j in range(_STAGES)]).unsqueeze(1)
    above = crypten.stack([s] * _STAGES).gt(thresholds)  # nested: above[j] implies above[j-1]
    chosen = above - crypten.cat([above[1:], above[:1] * 0])  # one-hot: the stage t is in
    # comparisons come back as integers (scale 1): select in one product with fixed-point values
    selectors = crypten.cat([1 - above[:1], chosen])
    return selectors * crypten.cat([roots[:1] * 0 + 1, roots])


def clip_factors(squared_norms: Any, clip_norm: float) -> Any:
    """Secret ``min(1, C' / sqrt(s))`` per example (see :func:`clip_stage_weights`)."""
    weights = clip_stage_weights(squared_norms, clip_norm)
    return weights.mul(torch.tensor(STAGE_SCALES).unsqueeze(1)).sum(0)


def clip(delta: Any, weights: Any) -> Any:
    """``f_i delta_i`` for ``(B, out)`` ``delta``: each stage's product, then its public scale.

    Multiplying ``delta`` by the stage's root before the (exact, power of two)
    scale keeps every product small and its rounding an absolute ``2^-16``
    per coordinate, whatever the norm.
    """
    products = weights.unsqueeze(2) * delta.unsqueeze(0)  # (7, B, out), one round
    return products.mul(torch.tensor(STAGE_SCALES).reshape(-1, 1, 1)).sum(0)


def clipped_gradient_sums(
    kinds: tuple[str, ...], modules: list[Any], x: Any, target: Any, loss: str, clip_norm: float
) -> list[tuple[Any, str, Any]]:
    """``(module, parameter name, secret sum of clipped per-example gradients)``, no noise."""
    with crypten.no_grad():
        output, tape = _forward(kinds, modules, x)
        dense = _backward(tape, OUTPUT_GRADIENT[loss](output, target))
        squared = None
        for module, a, delta in dense:
            inputs = a.square().sum(1) + (1 if module.bias is not None else 0)
            term = delta.square().sum(1) * inputs
            squared = term if squared is None else squared + term
        weights = clip_stage_weights(squared, clip_norm)
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
