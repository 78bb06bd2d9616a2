"""GELU, tanh and sigmoid as spline instances (:mod:`.spline`), each within 1e-2 everywhere.

Each table was fitted greedily on a ``2^-6`` grid of breakpoints (so every
breakpoint is exact in fixed point): the outer pieces are the function's
asymptotes (GELU: 0 and ``x``; tanh: -1 and 1; sigmoid: 0 and 1) from the
innermost grid point where the asymptote is within 0.0095 on the whole tail;
between them, each piece is the minimax line (slope by ternary search,
intercept centring the error) over the longest grid interval whose error
is at most 0.0095; coefficients rounded to 6 decimals, which the bound
includes (tests/unit/test_fast_spline.py checks it against float64 on a dense
grid, the tails, the breakpoints and the ring's extremes).

Tails. GELU: ``|GELU(x) - x| = x Phi(-x)`` for ``x >= 2.703125`` and
``|GELU(x)| = |x| Phi(x)`` for ``x <= -2.703125`` both decrease away from the
edge (8.2e-3 there, 0 in the limit); tanh: ``1 - tanh(|x|) <= 9.2e-3`` for
``|x| >= 2.6875``; sigmoid: ``sigmoid(-|x|) <= 9.4e-3`` for ``|x| >=
4.65625``.

Bounds (absolute, all real inputs the gate supports, ``|x| < 2^31`` at the
defaults), approximation plus coefficient rounding (``<= 5 * 2^-17 + 2^-33``
on inner pieces, 0 on the exact outer ones); the truncation after the gate
adds ``< 2^-16``:

=========  ===========  ======  ==============================
function   breakpoints  pieces  bound (approximation, rounded)
=========  ===========  ======  ==============================
GELU       8            9       1e-2 (fit 9.5e-3)
tanh       10           11      1e-2 (fit 9.5e-3)
sigmoid    6            7       1e-2 (fit 9.5e-3)
=========  ===========  ======  ==============================

Key size does not depend on the table (spline.py: 1,624 bytes per element at
the default depth); evaluation costs one DCF evaluation per breakpoint plus
one, so fewer breakpoints are faster, not smaller.
"""

from __future__ import annotations

from ppml.servers.mpc.fast.spline import Spline, SplineGate

BOUND = 1e-2

GELU = Spline(
    "gelu",
    (-2.703125, -1.4375, -0.640625, -0.171875, 0.265625, 0.765625, 2.515625, 2.703125),
    (
        (0.0, 0.0),
        (-0.078177, -0.211115),
        (-0.073916, -0.223614),
        (0.198225, -0.049341),
        (0.536784, 0.008601),
        (0.870123, -0.079915),
        (1.095015, -0.244527),
        (1.030195, -0.090765),
        (1.0, 0.0),
    ),
    BOUND,
)

TANH = Spline(
    "tanh",
    (
        -2.6875,
        -1.578125,
        -1.015625,
        -0.5625,
        -0.015625,
        0.546875,
        0.984375,
        1.546875,
        2.625,
        2.6875,
    ),
    (
        (0.0, -1.0),
        (0.065327, -0.824347),
        (0.267076, -0.505729),
        (0.569928, -0.19871),
        (0.903691, -0.010915),
        (0.913419, 0.007969),
        (0.586924, 0.186109),
        (0.281449, 0.487188),
        (0.070763, 0.813154),
        (0.019538, 0.938282),
        (0.0, 1.0),
    ),
    BOUND,
)

SIGMOID = Spline(
    "sigmoid",
    (-4.65625, -2.375, -1.0625, 1.296875, 2.671875, 4.65625),
    (
        (0.0, 0.0),
        (0.033178, 0.154468),
        (0.130844, 0.386377),
        (0.227207, 0.5),
        (0.109118, 0.653231),
        (0.027838, 0.867114),
        (0.0, 1.0),
    ),
    BOUND,
)

SPLINES: dict[str, Spline] = {s.name: s for s in (GELU, TANH, SIGMOID)}
SPLINE_GATES: dict[str, SplineGate] = {name: SplineGate(s) for name, s in SPLINES.items()}
