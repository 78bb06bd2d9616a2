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
row recip.  63           64      1e-3 relative (9.5e-4)  ``[1, 130]``
==========  ===========  ======  ====================  ==================

``row_reciprocal`` (softmax's, nodes.py :class:`~.nodes.Softmax`) was fitted
with ``spline_fit.fit(lambda x: 1 / x, 1.0, 130.0, 9.5e-4, 2**-16,
relative=True)``: each piece's error is at most 9.5e-4 times the smallest
``1/x`` on it, so ``|g(s) - 1/s| <= 1e-3 / s`` on ``[1, 130]`` (a row of up
to 128 entries whose exps are each within 1e-3 sums to at most 128.2); its
absolute bound, at ``s = 1``, is 1e-3. Many breakpoints cost little there:
it runs once per row, not per entry.

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
ROW_RECIPROCAL = Spline(
    "row_reciprocal",
    (
        1.078125,
        1.171875,
        1.265625,
        1.375,
        1.484375,
        1.609375,
        1.75,
        1.890625,
        2.046875,
        2.21875,
        2.40625,
        2.609375,
        2.828125,
        3.078125,
        3.34375,
        3.640625,
        3.953125,
        4.296875,
        4.671875,
        5.078125,
        5.515625,
        6.0,
        6.53125,
        7.109375,
        7.734375,
        8.421875,
        9.15625,
        9.96875,
        10.84375,
        11.796875,
        12.828125,
        13.953125,
        15.171875,
        16.5,
        17.921875,
        19.46875,
        21.171875,
        22.984375,
        25.015625,
        27.125,
        29.5,
        31.921875,
        34.484375,
        37.40625,
        40.578125,
        43.90625,
        47.21875,
        51.40625,
        55.703125,
        59.734375,
        64.78125,
        68.96875,
        74.078125,
        80.546875,
        84.46875,
        89.046875,
        94.4375,
        100.96875,
        109.046875,
        112.109375,
        119.46875,
        121.5625,
        124.625,
    ),
    (
        (-0.9275360107421875, 1.9268547),
        (-0.79150390625, 1.7801035),
        (-0.6742401123046875, 1.6428506),
        (-0.5746307373046875, 1.5167393),
        (-0.489959716796875, 1.4004553),
        (-0.4185943603515625, 1.2945063),
        (-0.3550567626953125, 1.1922557),
        (-0.30224609375, 1.0999489),
        (-0.2584075927734375, 1.0170769),
        (-0.220184326171875, 0.9388577),
        (-0.1873016357421875, 0.8659235),
        (-0.159271240234375, 0.798504),
        (-0.1355133056640625, 0.7365412),
        (-0.1148681640625, 0.6781484),
        (-0.0971527099609375, 0.6236539),
        (-0.0821533203125, 0.5735078),
        (-0.069488525390625, 0.5274374),
        (-0.058868408203125, 0.4854674),
        (-0.0498199462890625, 0.4466035),
        (-0.042144775390625, 0.4107629),
        (-0.03570556640625, 0.37808),
        (-0.03021240234375, 0.3477889),
        (-0.0255126953125, 0.3195984),
        (-0.0215301513671875, 0.293596),
        (-0.0181884765625, 0.2698494),
        (-0.015350341796875, 0.2479056),
        (-0.012969970703125, 0.2278714),
        (-0.010955810546875, 0.2094346),
        (-0.009246826171875, 0.1924068),
        (-0.0078125, 0.1768563),
        (-0.0066070556640625, 0.1626392),
        (-0.005584716796875, 0.1495285),
        (-0.004730224609375, 0.1376155),
        (-0.003997802734375, 0.1265131),
        (-0.003387451171875, 0.1164554),
        (-0.00286865234375, 0.1071665),
        (-0.0024261474609375, 0.0985552),
        (-0.0020599365234375, 0.0908136),
        (-0.001739501953125, 0.0834522),
        (-0.0014801025390625, 0.0769792),
        (-0.001251220703125, 0.0707773),
        (-0.001068115234375, 0.0653934),
        (-0.00091552734375, 0.0605427),
        (-0.0007781982421875, 0.0558177),
        (-0.0006561279296875, 0.0512534),
        (-0.0005645751953125, 0.0475429),
        (-0.00048828125, 0.0442141),
        (-0.0004119873046875, 0.0406133),
        (-0.0003509521484375, 0.0374844),
        (-0.00030517578125, 0.0349544),
        (-0.0002593994140625, 0.0322263),
        (-0.0002288818359375, 0.0302713),
        (-0.0001983642578125, 0.028181),
        (-0.0001678466796875, 0.0259229),
        (-0.000152587890625, 0.0247165),
        (-0.0001373291015625, 0.0234481),
        (-0.0001220703125, 0.0221071),
        (-0.0001068115234375, 0.0206793),
        (-9.1552734375e-05, 0.0191453),
        (-7.62939453125e-05, 0.0174816),
        (-7.62939453125e-05, 0.0174772),
        (-7.62939453125e-05, 0.0174929),
        (-6.103515625e-05, 0.0156382),
        (-6.103515625e-05, 0.0156278),
    ),
    1e-3,
    (1.0, 130.0),
)
ROW_RECIPROCAL_RELATIVE = 1e-3  # |g(s) s - 1| on its domain (fit: 9.5e-4)

SPLINES: dict[str, Spline] = {
    s.name: s for s in (GELU, TANH, SIGMOID, EXP, RECIPROCAL, ROW_RECIPROCAL)
}
SPLINE_GATES: dict[str, SplineGate] = {name: SplineGate(s) for name, s in SPLINES.items()}
