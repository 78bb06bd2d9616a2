"""A transformer's smooth non-linearities (see :mod:`.layer_kind`), with their MPC approximations.

On torch tensors each kind is torch's own function (the reference). On
CrypTen ``MPCTensor`` s each is CrypTen's fixed-point approximation (16
fractional bits); every docstring states the approximation and its error
bound, measured against torch in float64 on the stated input range between
2 parties and CrypTen's dealer (2,000+ points spanning the range, edges
included: ``bench/transformer_layers.py``). Outside a stated range the error
grows as described: the range belongs to the model's documented operating
point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ppml.proto.domain.layer_kind import OpLayer, Shape, register

# LayerNorm's Newton-Raphson steps y <- y (1.5 - 0.5 v y^2) for 1/sqrt(v) after CrypTen's 3
EXTRA_NEWTON_STEPS = 3
_GELU_C = math.sqrt(2.0 / math.pi)


@register("softmax")
@dataclass(frozen=True)
class Softmax(OpLayer):
    """``softmax`` over the last dim (attention weights).

    CrypTen: subtracts the row's exact maximum (comparisons), then
    ``exp(z) ~ (1 + z/256)^256`` and a Newton-Raphson reciprocal of the row
    sum. Absolute error of each output <= 4e-3 (measured 3.2e-3) for rows of
    8 to 128 entries spanning at most 40 (z in [-40, 0]); a spread above 256
    breaks the exp approximation (attention scores are scaled by
    ``1/sqrt(d_head)`` before it).
    """

    def out_shape(self, shape: Shape) -> Shape:
        if not shape:
            raise ValueError("needs at least one dim")
        return shape

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        if plain:
            import torch

            return torch.softmax(xs[0], -1)
        return xs[0].softmax(-1)


@register("layer_norm")
@dataclass(frozen=True)
class LayerNorm(OpLayer):
    """Normalises the last dim (``size``) to mean 0, variance 1, then ``* weight + bias``.

    ``weight`` and ``bias`` ``(size,)`` are secret, ``eps`` public. CrypTen:
    exact mean and (biased) variance, then ``1/sqrt(var + eps)`` by CrypTen's
    ``inv_sqrt`` (an exp-based first guess and 3 Newton-Raphson steps) and
    ``EXTRA_NEWTON_STEPS`` = 3 more: relative error <= 1.5e-3 for
    ``var + eps`` in [0.03, 150] (measured 1.0e-3; 1.1e-4 in [0.1, 10]), so
    each normalised value ``(x - mean) / std`` is off by at most 1.5e-3 times
    its size (about 5e-3 for |value| <= 3). Below 0.03 the steps converge
    more slowly (5e-3 at 0.01, worse below); above about 200 the first guess
    is negative and the result is garbage: a row whose variance leaves the
    range is outside the model's operating point.
    """

    size: int
    eps: float = 1e-5

    def check(self) -> None:
        if self.size <= 0:
            raise ValueError("LayerNorm size must be positive")
        if not (math.isfinite(self.eps) and 0 <= self.eps <= 1.0):
            raise ValueError(f"LayerNorm eps must be in [0, 1], got {self.eps}")

    def params(self) -> dict[str, Shape]:
        return {"weight": (self.size,), "bias": (self.size,)}

    def out_shape(self, shape: Shape) -> Shape:
        if not shape or shape[-1] != self.size:
            raise ValueError(f"normalises a last dim of {self.size}, gets {shape}")
        return shape

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        x, weight, bias = xs[0], params["weight"], params["bias"]
        if plain:
            import torch

            return torch.nn.functional.layer_norm(x, (self.size,), weight, bias, self.eps)
        centred = x - x.mean(-1, keepdim=True)
        variance = (centred * centred).mean(-1, keepdim=True) + self.eps
        inv_std = variance.inv_sqrt()  # CrypTen's first guess and its 3 steps
        for _ in range(EXTRA_NEWTON_STEPS):
            inv_std = inv_std * (inv_std * inv_std * variance * -0.5 + 1.5)
        return centred * inv_std * weight + bias

    def describe(self) -> str:
        return f"LayerNorm({self.size})"


@register("gelu")
@dataclass(frozen=True)
class GELU(OpLayer):
    """``x * Phi(x)`` (torch's exact, erf form).

    CrypTen: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (CrypTen's
    erf is a Taylor series that diverges for |x| > ~2; this form is
    within 4.7e-4 of the erf form everywhere) with CrypTen's tanh: absolute
    error <= 2e-3 (measured 1.6e-3) over x in [-12, 12]; beyond, at most ``0.5 |x|`` times
    tanh's error (below).
    """

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        x = xs[0]
        if plain:
            import torch

            return torch.nn.functional.gelu(x)
        inner = (x + x * x * x * 0.044715) * _GELU_C
        return x * 0.5 * (inner.tanh() + 1)


@register("tanh")
@dataclass(frozen=True)
class Tanh(OpLayer):
    """``tanh``; CrypTen: ``2 sigmoid(2x) - 1``.

    Absolute error <= 6e-3 for any x (measured 4.7e-3 on [-12, 12]; beyond,
    both sides saturate).
    """

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        return xs[0].tanh()


@register("sigmoid")
@dataclass(frozen=True)
class Sigmoid(OpLayer):
    """``1 / (1 + exp(-x))``; CrypTen: exp of ``-|x|`` and 3 Newton-Raphson reciprocal steps.

    Absolute error <= 3e-3 for any x (measured 2.5e-3 on [-12, 12]; beyond,
    both sides saturate).
    """

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        return xs[0].sigmoid()
