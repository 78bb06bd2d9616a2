"""Spline tables (:mod:`.spline`): GELU, tanh, sigmoid within 1e-2 on |x| < 4096; exp, 1/x, rsqrt.

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
measured. GELU and exp are quadratic (``degree=2``): the same greedy walk
with, between the asymptotes, each piece the minimax parabola over the
longest grid interval within tolerance (:func:`.spline_fit.parabola`: a
linear programme on 2,000 points; ``a`` rounded to ``2^-16``, exact at ``f =
16``, then the minimax line for that ``a``, rounded to 10 decimals, before
the error is measured); made by ``table(exp, 0, 0.0, 9.5e-4, degree=2)`` and
``table(gelu, 0, x, 9.5e-3, degree=2, inner=5.1e-3)``: GELU's asymptotes
from the same edges as before (within 9.5e-3), its three parabolas within
5.1e-3, about the smallest tolerance for which the walk still needs three
(a greedy walk at 9.5e-3 also needs three, with errors up to 9.3e-3: the
same cost, and about 5x the BERT-tiny logit error of this one in float64,
5.4e-4 against 1.1e-4). A parabola follows a curve over a
far wider interval than a line (error ``~ w^3`` against ``w^2``), so GELU
needs 4 breakpoints instead of the linear table's 8 and exp 5 instead of 17,
each one DCF evaluation fewer per element (spline.py: with one more payload
lane, 3 AES blocks per level instead of 2, so exp's gate does half the work
and GELU's 5/6 of it). tests/unit/test_fast_spline.py checks every table, as
the ring computes it, against float64 on a dense grid, the tails, the
breakpoints and the ring's extremes, and refits two of them (sigmoid, exp).

Tails. GELU: ``|GELU(x) - x| = x Phi(-x)`` for ``x >= 2.703125`` and
``|GELU(x)| = |x| Phi(x)`` for ``x <= -2.703125`` both decrease away from the
edge (9.3e-3 there, 0 in the limit); tanh: ``1 - tanh(|x|) <= 9.2e-3`` for
``|x| >= 2.6875``; sigmoid: ``sigmoid(-|x|) <= 9.4e-3`` for ``|x| >=
4.65625``.

Ranges (each table's ``range_bits`` R: its gate's inputs must satisfy ``|x|
< 2^R``; spline.py, Range, says exactly what comes out beyond: a piece
applied to the true ``x``, that of ``x`` wrapped mod ``2^(R+2)`` if this lies
in the range, else the last or, under some masks, the first). A gate's DCF
depth is ``R + f + 2`` at full resolution (30 for R = 12 at ``f = 16``,
against 48 for the ReLU gates' ``|x| < 2^31``) and ``R + c + 2`` at
``2^-c`` (Resolution, below); its key and its walk shrink with it:

* GELU, tanh, sigmoid: ``R = 12`` (``|x| < 4096``): a pre-activation; every
  breakpoint is within 4.7 of 0 and the outer pieces are the asymptotes, so
  the range only bounds how far out they are exact.
* exp: ``R = 12``: softmax's ``x - max``, which is ``<= 0`` exactly (the row
  maximum is exact), so the range is a row's spread ``max - min <= 4096``;
  a wider row gets, for its entries below ``max - 4096``, some piece of the
  table applied to them in the ring (a parabola of such an input wraps mod
  ``2^64``: any value), so nothing is promised for that row. The last piece
  is a parabola (``domain`` ends at 0 on that side), used only on
  ``[-0.515625, 0]``; the input is never positive.
* reciprocal: ``R = 7`` (``|x| < 128``; its domain is ``[1, 64]``).
* row reciprocal: ``R = 8`` (``|s| < 256``): a row sum of at most 128 exps,
  each at most ``1 + 1e-3`` and at least 0, so ``s`` in ``[0, 128.2]`` for
  rows whose spread is in exp's range.
* rsqrt: ``R = 10`` (``var + eps < 1024``): LayerNorm's variance, ``>= 0``
  exactly (a sum of Beaver squares, truncated); above 160 nothing was
  promised before either (the last piece falls below 0 at 464); on ``[1024,
  3072)`` it gets the last piece or, under some masks, the first (the flat
  6.53), further out some piece applied to the true input.

Resolution (each table's ``comparison_bits`` c, spline.py, Resolution: the
comparisons drop the input's bits below ``2^-c``, and on ``[b - 2^-c, b)``
below each breakpoint ``b`` the gate may apply the piece to the right).
Chosen per table as the coarsest grid, among those its breakpoints lie on,
on which the right neighbour stays within the table's bound over those
windows (measured in float64 over each window, then checked in the ring by
tests/unit/test_fast_spline.py); the largest neighbour errors there:

* GELU, ``c = 6``: 9.67e-3 (at 2.6875, where ``x`` stands in for GELU;
  ``c = 8`` would give 9.38e-3);
* exp, ``c = 8``: 9.93e-4 (``c = 6`` would give 1.25e-3, over its bound);
* tanh, sigmoid, ``c = 10``: 9.62e-3 and 9.53e-3 (at ``c = 6``: 1.21e-2
  and 1.04e-2);
* reciprocal, row reciprocal, ``c = 10``: 9.86e-4 absolute and 9.29e-4
  relative;
* rsqrt: full resolution (its grid below 1 is ``2^-12``, and there the
  neighbour is 1.3e-3 relative off: over its bound).

The DCF depth drops by ``f - c``: GELU from 30 to 20, exp to 22, the
others by 6; about a third of GELU's evaluation, a fifth of exp's. The
headroom bit (spline.py, Comparisons) keeps the whole range: GELU's is
``[-4096, 4096)``.

Bounds (absolute, every real input in the gate's range), approximation plus
coefficient rounding (linear tables: ``<= 5 * 2^-17 + 2^-33`` on inner
pieces; quadratic: below ``1e-9``; 0 on the exact outer ones); the
truncation after the gate adds ``< 2^-16`` (by ``2f`` after a quadratic
one, gates.py :class:`~.gates.TruncTop`: the same bound). Measured, the
ring tables' largest errors are 9.28e-3 (GELU, at its asymptotes' edges
``+-2.703125``; 5.1e-3 between them) and 9.50e-4 (exp):

==========  ===========  ======  ======  ====================  ==================
function    breakpoints  pieces  degree  bound (fit)           on
==========  ===========  ======  ======  ====================  ==================
GELU        4            5       2       1e-2 (9.5e-3)         ``|x| < 4096``
tanh        10           11      1       1e-2 (9.5e-3)         ``|x| < 4096``
sigmoid     6            7       1       1e-2 (9.5e-3)         ``|x| < 4096``
exp         5            6       2       1e-3 (9.5e-4)         ``[-4096, 0]``
reciprocal  20           21      1       1e-3 (9.5e-4)         ``[1, 64]``
row recip.  63           64      1       1e-3 rel. (9.5e-4)    ``[1, 130]``
rsqrt       66           67      1       1e-3 rel. (9.5e-4)    ``[3/128, 160]``
==========  ===========  ======  ======  ====================  ==================

``rsqrt`` (LayerNorm's ``1 / sqrt(var + eps)``) was fitted with
``fit(lambda v: 1 / np.sqrt(v), 3 / 128, 1, 9.5e-4, 2**-16, relative=True,
step=2**-12, bracket=200)`` and ``fit(..., 1, 160, ..., step=2**-6)`` (the
breakpoint at 1 joins them; slopes are multiples of ``2^-16``); then a flat
first piece below ``3/128`` (the fitted first piece's value there, 6.5264886),
so the output never exceeds 6.53 for any input and a nearly flat row
(variance under 3/128: nothing is promised) gets a bounded factor. Relative
error ``<= 1e-3`` on ``[3/128, 160]`` (absolute ``<= 7e-3``, at ``3/128``):
it covers CrypTen's stated LayerNorm range ``[0.03, 150]``.
"""

from __future__ import annotations

import math

from ppml.servers.mpc.fast.spline import Spline, SplineGate

BOUND = 1e-2
ACTIVATION_RANGE_BITS = 12  # GELU, tanh, sigmoid: inputs |x| < 4096 (module doc, Ranges)
EXP_RANGE_BITS = 12  # softmax's x - max in (-4096, 0]
GELU_COMPARISON_BITS = 6  # comparisons resolve 2^-6 (module doc, Resolution)
EXP_COMPARISON_BITS = 8
LINEAR_COMPARISON_BITS = 10  # tanh, sigmoid, the reciprocals

GELU = Spline(
    "gelu",
    (-2.703125, -0.921875, 0.921875, 2.703125),
    (
        (0.0, 0.0, 0.0),
        (-0.024993896484375, -0.1833053311, -0.3171289185),
        (0.348968505859375, 0.5, 0.0049827088),
        (-0.024993896484375, 1.1833053311, -0.3171289185),
        (0.0, 1.0, 0.0),
    ),
    BOUND,
    range_bits=ACTIVATION_RANGE_BITS,
    comparison_bits=GELU_COMPARISON_BITS,
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
    range_bits=ACTIVATION_RANGE_BITS,
    comparison_bits=LINEAR_COMPARISON_BITS,
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
    range_bits=ACTIVATION_RANGE_BITS,
    comparison_bits=LINEAR_COMPARISON_BITS,
)

EXP = Spline(
    "exp",
    (-6.96875, -3.78125, -2.265625, -1.265625, -0.515625),
    (
        (0.0, 0.0, 0.0),
        (0.00299072265625, 0.0384129664, 0.1243410631),
        (0.0258026123046875, 0.2082325413, 0.4421736224),
        (0.0877838134765625, 0.4864683942, 0.7562279935),
        (0.208221435546875, 0.7885489147, 0.9474514635),
        (0.3890533447265625, 0.9797835479, 0.9994455231),
    ),
    1e-3,
    (-math.inf, 0.0),
    range_bits=EXP_RANGE_BITS,
    comparison_bits=EXP_COMPARISON_BITS,
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
    range_bits=7,  # |x| < 128
    comparison_bits=LINEAR_COMPARISON_BITS,
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
    range_bits=8,  # a row sum of at most 128 exps (each <= 1 + 1e-3): |s| < 256
    comparison_bits=LINEAR_COMPARISON_BITS,
)
RSQRT = Spline(
    "rsqrt",
    (
        0.0234375,
        0.02685546875,
        0.03076171875,
        0.03515625,
        0.040283203125,
        0.046142578125,
        0.052978515625,
        0.060791015625,
        0.06982421875,
        0.080078125,
        0.092041015625,
        0.105712890625,
        0.12158203125,
        0.1396484375,
        0.160400390625,
        0.184326171875,
        0.2119140625,
        0.24365234375,
        0.280029296875,
        0.322021484375,
        0.370361328125,
        0.42578125,
        0.489501953125,
        0.56298828125,
        0.6474609375,
        0.74462890625,
        0.856201171875,
        0.984619140625,
        1.0,
        1.140625,
        1.296875,
        1.484375,
        1.703125,
        1.953125,
        2.234375,
        2.5625,
        2.9375,
        3.375,
        3.875,
        4.453125,
        5.109375,
        5.875,
        6.75,
        7.75,
        8.90625,
        10.234375,
        11.765625,
        13.515625,
        15.53125,
        17.84375,
        20.484375,
        23.5,
        27.015625,
        31.0625,
        35.625,
        40.90625,
        46.953125,
        53.859375,
        61.71875,
        70.828125,
        80.875,
        92.3125,
        104.59375,
        119.046875,
        135.71875,
        154.15625,
    ),
    (
        (0.0, 6.5264886),
        (-125.750732421875, 9.4737714),
        (-102.55038452148438, 8.8511005),
        (-83.79501342773438, 8.2746431),
        (-68.45002746582031, 7.7353019),
        (-55.82135009765625, 7.2268929),
        (-45.45271301269531, 6.7485972),
        (-36.96229553222656, 6.2990878),
        (-30.048690795898438, 5.8790012),
        (-24.43853759765625, 5.4875829),
        (-19.864852905273438, 5.1214479),
        (-16.1297607421875, 4.7779049),
        (-13.09051513671875, 4.4567569),
        (-10.623809814453125, 4.1570808),
        (-8.630355834960938, 3.8788646),
        (-7.0083160400390625, 3.6188295),
        (-5.687164306640625, 3.3754407),
        (-4.6132659912109375, 3.1480024),
        (-3.7430572509765625, 2.9361134),
        (-3.0366058349609375, 2.7383922),
        (-2.462188720703125, 2.5535271),
        (-1.996856689453125, 2.3812999),
        (-1.6199493408203125, 2.220917),
        (-1.313751220703125, 2.0711161),
        (-1.0651702880859375, 1.9312544),
        (-0.8636474609375, 1.8008551),
        (-0.7003631591796875, 1.6793463),
        (-0.567962646484375, 1.5660521),
        (-0.5058441162109375, 1.5058328),
        (-0.4527740478515625, 1.4519892),
        (-0.3725738525390625, 1.3605956),
        (-0.3057708740234375, 1.2739355),
        (-0.249237060546875, 1.1900412),
        (-0.202880859375, 1.1111421),
        (-0.1655120849609375, 1.0382222),
        (-0.135009765625, 0.9700883),
        (-0.109954833984375, 0.905926),
        (-0.0894317626953125, 0.845656),
        (-0.072662353515625, 0.7890966),
        (-0.05902099609375, 0.7362622),
        (-0.0479736328125, 0.6871095),
        (-0.038970947265625, 0.6411312),
        (-0.0316162109375, 0.5979527),
        (-0.02569580078125, 0.5580188),
        (-0.0208740234375, 0.5206758),
        (-0.016937255859375, 0.4856369),
        (-0.0137481689453125, 0.4530164),
        (-0.0111541748046875, 0.4225162),
        (-0.009063720703125, 0.3942761),
        (-0.007354736328125, 0.3677504),
        (-0.0059814453125, 0.3432667),
        (-0.0048675537109375, 0.320479),
        (-0.0039520263671875, 0.2989784),
        (-0.003204345703125, 0.2787916),
        (-0.0026092529296875, 0.2603379),
        (-0.0021209716796875, 0.2429654),
        (-0.0017242431640625, 0.2267589),
        (-0.00140380859375, 0.2117395),
        (-0.0011444091796875, 0.1978001),
        (-0.0009307861328125, 0.1846356),
        (-0.000762939453125, 0.1727943),
        (-0.0006256103515625, 0.1617337),
        (-0.000518798828125, 0.1519496),
        (-0.00042724609375, 0.1424271),
        (-0.0003509521484375, 0.1333876),
        (-0.0002899169921875, 0.1251576),
        (-0.0002593994140625, 0.1205448),
    ),
    7e-3,
    (3 / 128, 160.0),
    range_bits=10,  # var + eps < 1024
)
ROW_RECIPROCAL_RELATIVE = 1e-3  # |g(s) s - 1| on its domain (fit: 9.5e-4)

SPLINES: dict[str, Spline] = {
    s.name: s for s in (GELU, TANH, SIGMOID, EXP, RECIPROCAL, ROW_RECIPROCAL, RSQRT)
}
SPLINE_GATES: dict[str, SplineGate] = {name: SplineGate(s) for name, s in SPLINES.items()}
