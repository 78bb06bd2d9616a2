"""Spline tables (:mod:`.spline`): GELU, tanh, sigmoid within 1e-2 everywhere; exp, reciprocal.

Each table was fitted greedily by :func:`.spline_fit.fit` on a ``2^-6``
grid of breakpoints (so every breakpoint is exact in fixed point), with a
fit tolerance 5 % under the bound: the outer pieces are the function's
asymptotes (GELU: 0 and ``x``; tanh: -1 and 1; sigmoid: 0 and 1; exp: 0)
from the innermost grid point where the asymptote is within tolerance on the
whole tail; between them (from the domain's edge where there is no
asymptote), each piece is the minimax line (slope by ternary search,
intercept centring the error) over the longest grid interval within
tolerance, its coefficients rounded (GELU, tanh, sigmoid: 6 decimals; exp,
reciprocal: slope to ``2^-16``, intercept to 7 decimals) before the error is
measured. tests/unit/test_fast_spline.py checks every table, as the ring
computes it, against float64 on a dense grid, the tails, the breakpoints
and the ring's extremes, and refits two of them.

Tails. GELU: ``|GELU(x) - x| = x Phi(-x)`` for ``x >= 2.703125`` and
``|GELU(x)| = |x| Phi(x)`` for ``x <= -2.703125`` both decrease away from the
edge (8.2e-3 there, 0 in the limit); tanh: ``1 - tanh(|x|) <= 9.2e-3`` for
``|x| >= 2.6875``; sigmoid: ``sigmoid(-|x|) <= 9.4e-3`` for ``|x| >=
4.65625``.

Bounds (absolute, all real inputs the gate supports, ``|x| < 2^31`` at the
defaults), approximation plus coefficient rounding (``<= 5 * 2^-17 + 2^-33``
on inner pieces, 0 on the exact outer ones); the truncation after the gate
adds ``< 2^-16``:

==========  ===========  ======  ====================  ==================
function    breakpoints  pieces  bound (fit)           on
==========  ===========  ======  ====================  ==================
GELU        8            9       1e-2 (9.5e-3)         all reals
tanh        10           11      1e-2 (9.5e-3)         all reals
sigmoid     6            7       1e-2 (9.5e-3)         all reals
exp         17           18      1e-3 (9.5e-4)         ``x <= 0``
reciprocal  20           21      1e-3 (9.5e-4)         ``[1, 64]``
==========  ===========  ======  ====================  ==================

exp and reciprocal are for softmax (not yet planned): ``exp(x - max)`` has
``x - max <= 0`` (and is 0 below -6.96875, where ``e^x < 9.5e-4``; at -16
the table gives 0 against 1.1e-7), and the row sum of those is in ``[1,
n]`` for ``n`` entries, so a reciprocal on ``[1, 64]`` covers rows of up to
64 tokens. Their fits round each slope to a multiple of ``2^-16`` before
centring the intercept, so the ring table has no slope-rounding error (which
would be up to ``64 * 2^-17 = 4.9e-4`` for the reciprocal). For a softmax
entry ``p_i = e_i / s`` (``s >= 1``, ``n`` entries) computed as ``E_i R(S)``
with ``|E_j - e_j| <= 1e-3`` and ``|R(S) - 1/S| <= 1e-3``, the error is at
most about ``1e-3`` (reciprocal) ``+ 1e-3`` (the entry's exp) ``+ n 1e-3
p_i`` (the sum's error, relative to ``s >= 1``): small for peaked rows,
up to ``n 1e-3`` relative for flat ones. A Newton step (two products) would
square the reciprocal's relative error if that is too coarse. (Not yet
measured in a softmax: nothing plans it.)

Key size does not depend on the table (spline.py: 1,624 bytes per element at
the default depth); evaluation costs one DCF evaluation per breakpoint plus
one, so fewer breakpoints are faster, not smaller.
"""

from __future__ import annotations

import math

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

EXP = Spline(
    "exp",
    (
        -6.96875,
        -4.796875,
        -3.765625,
        -3.09375,
        -2.59375,
        -2.1875,
        -1.859375,
        -1.578125,
        -1.328125,
        -1.109375,
        -0.90625,
        -0.734375,
        -0.578125,
        -0.421875,
        -0.28125,
        -0.15625,
        -0.03125,
    ),
    (
        (0.0, 0.0),
        (0.0033721923828125, 0.0235041),
        (0.0144500732421875, 0.0766233),
        (0.0330047607421875, 0.1465138),
        (0.0588226318359375, 0.2263974),
        (0.0922088623046875, 0.3129565),
        (0.1327972412109375, 0.4017983),
        (0.1798858642578125, 0.4893566),
        (0.2344512939453125, 0.5754399),
        (0.2961883544921875, 0.6574637),
        (0.3656463623046875, 0.7344615),
        (0.4408416748046875, 0.8027355),
        (0.519317626953125, 0.8603874),
        (0.607147216796875, 0.9110301),
        (0.70416259765625, 0.9520151),
        (0.804046630859375, 0.9801927),
        (0.911102294921875, 0.9968156),
        (0.9845428466796875, 0.9999401),
    ),
    1e-3,
    (-math.inf, 0.0),
)
RECIPROCAL = Spline(
    "reciprocal",
    (
        1.078125,
        1.171875,
        1.28125,
        1.40625,
        1.5625,
        1.734375,
        1.9375,
        2.1875,
        2.484375,
        2.859375,
        3.328125,
        3.921875,
        4.6875,
        5.703125,
        7.09375,
        9.0625,
        11.984375,
        16.609375,
        24.53125,
        39.546875,
    ),
    (
        (-0.9275360107421875, 1.9268547),
        (-0.79150390625, 1.7801035),
        (-0.666015625, 1.633008),
        (-0.5550079345703125, 1.4907844),
        (-0.455108642578125, 1.3501712),
        (-0.3690032958984375, 1.2157402),
        (-0.2975921630859375, 1.091877),
        (-0.2359466552734375, 0.9723815),
        (-0.1840057373046875, 0.8587866),
        (-0.140777587890625, 0.7513347),
        (-0.1050872802734375, 0.6492782),
        (-0.0766143798828125, 0.5545191),
        (-0.0543975830078125, 0.4673939),
        (-0.0373992919921875, 0.3877102),
        (-0.02471923828125, 0.3153842),
        (-0.0155487060546875, 0.2503283),
        (-0.0092010498046875, 0.1927868),
        (-0.0050201416015625, 0.1426556),
        (-0.0024566650390625, 0.1000795),
        (-0.00103759765625, 0.0653719),
        (-0.000396728515625, 0.0404259),
    ),
    1e-3,
    (1.0, 64.0),
)

SPLINES: dict[str, Spline] = {s.name: s for s in (GELU, TANH, SIGMOID, EXP, RECIPROCAL)}
SPLINE_GATES: dict[str, SplineGate] = {name: SplineGate(s) for name, s in SPLINES.items()}
