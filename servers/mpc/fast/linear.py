"""Linear layers with weights masked once: Linear and Conv2d (im2col) over Z_2^64.

Each layer ``F(W, x)`` is bilinear in the weight ``W`` and the input ``x``
(``x W^T`` for Linear, im2col(x) W^T for Conv2d). Setup, once per model:

* the dealer derives a uniform mask ``B`` per layer from the model's key
  (:func:`weight_mask`; it stores the key, never ``B`` or anything else) and
  gives each party additive shares of ``B``;
* the parties, holding additive shares ``W_i`` of ``W`` (from the model
  owner), open ``W^ = W - B`` to each other (one round, one-time), and keep
  ``W_i`` and ``W^``.

Per request, the input wire is public as ``x^ = x + r`` with ``r`` fresh and
uniform (the dealer made it and shared it); the dealer also shares
``F(B, r)``. Then, by bilinearity,::

    F(W, x) = F(W, x^) - F(W^, r) - F(B, r)
            = sum_i [ F(W_i, x^) - F(W^, r_i) - F(B, r)_i ]

so party ``i``'s share of the pre-activation is local: ``F(W_i, x^)`` online
(one ring matmul), and ``-F(W^, r_i) - F(B, r)_i`` before the input arrives.
Zero online rounds for the layer itself.

Why this is secure:

* ``W^``: each party knows its own ``W_i, B_i``; ``W^ = W - B_i - B_{1-i}`` with
  ``B_{1-i}`` uniform over the ring and unknown to it, so ``W^`` is uniform and
  independent of ``W``. ``B`` is reused for every request but never opened:
  the parties only ever see shares of it and of ``F(B, r)`` (fresh, uniform).
* ``x^ = x + r``: ``r`` uniform and fresh per request, so ``x^`` is uniform.
* the dealer never receives anything from the parties (not ``x^``, not
  ``W^``): it knows ``B`` and ``r``, which alone say nothing about ``W`` or
  ``x``. Knowing ``W^`` would give it ``W``; it must not collude with a party.

Ring matmuls use torch's int64 matmul (wraps modulo 2^64 like numpy's, and
vectorised: ~20x faster than numpy's non-BLAS int64 matmul at batch 64; see
bench/fast_engine.py). No randomness here except the dealer's keyed streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from ppml.servers.mpc.fast.prg import KeyedPRG, Ring


def ring_matmul(a: Ring, b: Ring) -> Ring:
    """``a @ b`` modulo 2^64 for 2-D int64 arrays (torch's vectorised int64 matmul)."""
    ta = torch.from_numpy(np.require(a, dtype=np.int64, requirements=["C", "W"]))
    tb = torch.from_numpy(np.require(b, dtype=np.int64, requirements=["W"]))
    return torch.matmul(ta, tb).numpy()


@dataclass(frozen=True)
class Linear:
    """``y = x W^T + b`` with ``W`` of shape (out_features, in_features).

    ``lead`` empty: one sample is a vector (any input of ``in_features``
    values, flattened). ``lead`` e.g. ``(tokens,)``: one sample is ``(*lead,
    in_features)`` and every row of it is mapped, ``(*lead, out_features)``
    out (a transformer's projections); the masked-weight scheme is unchanged,
    the rows are just more rows of one matmul.
    """

    in_features: int
    out_features: int
    bias: bool = True
    lead: tuple[int, ...] = ()

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (*self.lead, self.in_features)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (*self.lead, self.out_features)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    def apply(self, x: Ring, weight_t: Ring) -> Ring:
        """``x (batch, *lead, in) @ weight_t (in, out)``; weights come transposed (transpose)."""
        rows = ring_matmul(x.reshape(-1, self.in_features), weight_t)
        return rows.reshape(x.shape[0], *self.out_shape)

    def transpose(self, weight: Ring) -> Ring:
        """The layout :meth:`apply` wants: (in, out), C-contiguous."""
        return np.ascontiguousarray(weight.reshape(self.weight_shape).T)

    def bias_term(self, bias: Ring) -> Ring:
        """Bias broadcastable to the output (batch, out)."""
        return bias.reshape(self.out_features)


@dataclass(frozen=True)
class Conv2d:
    """2-D convolution on (batch, C, H, W) with square kernel, stride and zero padding."""

    in_channels: int
    out_channels: int
    kernel_size: int
    in_hw: tuple[int, int]
    stride: int = 1
    padding: int = 0
    bias: bool = True

    @property
    def out_hw(self) -> tuple[int, int]:
        k, s, p = self.kernel_size, self.stride, self.padding
        return ((self.in_hw[0] + 2 * p - k) // s + 1, (self.in_hw[1] + 2 * p - k) // s + 1)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.in_channels, *self.in_hw)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.out_channels, *self.out_hw)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        k = self.kernel_size
        return (self.out_channels, self.in_channels, k, k)

    def _im2col(self, x: Ring) -> Ring:
        """(batch*Ho*Wo, C*k*k) patches; zero padding keeps im2col linear in x."""
        p, k, s = self.padding, self.kernel_size, self.stride
        x = x.reshape(x.shape[0], *self.in_shape)
        if p:
            x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]  # (b, C, Ho, Wo, k, k)
        ho, wo = self.out_hw
        cols = win[:, :, :ho, :wo].transpose(0, 2, 3, 1, 4, 5)
        return np.ascontiguousarray(cols).reshape(-1, self.in_channels * k * k)

    def apply(self, x: Ring, weight_t: Ring) -> Ring:
        """Convolve ``x`` with the weight given as (C*k*k, out); output (batch, out, Ho, Wo)."""
        batch = x.shape[0]
        y = ring_matmul(self._im2col(x), weight_t)  # (b*Ho*Wo, out)
        return np.ascontiguousarray(
            y.reshape(batch, *self.out_hw, self.out_channels).transpose(0, 3, 1, 2)
        )

    def transpose(self, weight: Ring) -> Ring:
        return np.ascontiguousarray(weight.reshape(self.out_channels, -1).T)

    def bias_term(self, bias: Ring) -> Ring:
        return bias.reshape(self.out_channels, 1, 1)


WeightedOp = Linear | Conv2d


def weight_mask(model_key: bytes, index: int, op: WeightedOp) -> Ring:
    """The dealer's secret uniform mask ``B`` of layer ``index``, derived from the model key.

    Invariant: deterministic in (key, index, shape); independent across layers.
    """
    return KeyedPRG.derived(model_key, b"ppml.fast.weight-mask/%d" % index).ring(op.weight_shape)
