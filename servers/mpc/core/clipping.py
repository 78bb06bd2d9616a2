"""Norm clipping on secret shares that no submitted value can bypass (DP-SGD and DP-FedAvg).

Fixed point keeps 16 fractional bits in the ring ``Z_2^64``, so a value is
any integer mod ``2^64`` and squaring it happens mod ``2^64`` too: a
coordinate of 65536 (encoded ``2^32``) squares to 0, and a square past
``2^47`` wraps negative. Every product is also truncated on the shares, and
two-party truncation is wrong by ``+-2^32`` (``2^48`` ring units) with
probability ``|product| / 2^32`` (see :mod:`~ppml.servers.mpc.training.standardize`).
A clip factor computed from such a norm lets the row through unclipped.

So the norm is only ever computed from values whose size is *checked*:

1. **Coordinates** (:func:`in_range`): a secret range test
   ``-b <= x < b`` of every coordinate, exact for every ring element
   (``x + b`` read as an unsigned integer must have its high bits 0: one
   binary conversion and an AND tree, :func:`_inside`). Out-of-range
   coordinates are set to 0 (a product with a 0/1 bit, exact: no
   truncation) and counted per row.
   ``b = coordinate_bound(width) <= 2^8``, so that a row's sum of squares is
   at most ``width * b^2 <= 2^30`` and each square fails with probability at
   most ``2^-16`` (an honest value ``v``: ``v^2 / 2^32``). DP-FedAvg counts
   in units of ``p``, the power of two at or above ``C`` (:func:`clipped_rows`).
2. **Squared norms** (:func:`clip_stage_weights`): the norm ``s`` must lie
   in ``(-1, S_MAX)`` with ``S_MAX = min(2^31, 2^35 C'^2)``. A failed
   truncation moves a sum below ``2^30`` by a multiple of ``2^32``: out of
   that range, never into it. DP-SGD's norms are products of two checked
   sums (``||delta||^2 (||a||^2 + 1)``), each of which is checked first
   (:func:`outside`) against caps whose product stays under ``2^30``.
3. **Rows**: a row (a participant's update, an example's gradient) with any
   out-of-range coordinate or sum, or a norm outside the range, gets weight
   exactly 0 (its clip weights times a 0/1 bit): it contributes nothing.
   Every other row is clipped to ``C' = C (1 - 2^-7)``.
4. **The factor** ``min(1, C' / sqrt(s))``: with ``t = s / C'^2``, the
   copies ``t / 64^j`` (``j = 0..5``) go through *one* CrypTen ``inv_sqrt``
   (stacked: the Newton iterations cost the rounds of one); the stacked
   comparison that also checks ``s`` picks the copy in ``[1, 64)``, where
   ``inv_sqrt`` is accurate to 0.5 % (inside the margin), and
   ``t^-1/2 = (t / 64^j)^-1/2 / 8^j``.

So one row moves the clipped sum by at most ``C`` whatever its shares hold.
The clip weights are applied to the row already divided by the stage's
power of 8 (:func:`clip`), so the product in use is the clipped value itself
(at most ``C``) and fails with probability at most ``C / 2^32`` per
coordinate; an honest row is clipped as before (the inverse square root's
0.5 %, inside the margin, and ``2^-16`` absolute per coordinate; in DP-SGD
that rounding of ``f delta`` is multiplied by ``a``, at most
``||a|| sqrt(out) 2^-16`` per example and layer, zero-mean). Rows that an
honest party would never send (a coordinate past the bound, a norm past
``sqrt(S_MAX)``) are dropped, not clipped.

Cost, per row of width ``d``: one range test of ``d`` values (about one
comparison each) and one product with bits (all rows in one call each),
plus 2 values (3 with a bad count) added to the stage comparison that
clipping already made; DP-SGD adds one comparison of ``2 (2 L + 1)`` values per
example for its per-layer sums.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ppml.servers.mpc.core.crypten_compat import crypten

CLIP_MARGIN = 2**-7  # clip to C (1 - margin): room for the inverse square root's error
COORDINATE_BITS = 8  # no coordinate of a clipped row reaches 2^8
SUM_BITS = 30  # every checked sum of squares is below 2^30: a failure (+-2^32) leaves the range
NORM_LIMIT = 2.0**31  # squared norms above this are failures (or absurd): the row is dropped
_STAGES = 6  # t / 64^j for j < 6: t = s / C'^2 up to 2^36
_MAX_T = 2.0**35  # t beyond this is dropped: the last stage is accurate up to 2^36
# stage weights: row 0 keeps delta (not clipped), row j + 1 holds (t / 64^j)^-1/2, worth 8^-j
STAGE_SCALES = (1.0, *(8.0**-j for j in range(_STAGES)))


def coordinate_bound(width: int) -> float:
    """Largest power of two ``b <= 2^8`` with ``width * b^2 <= 2^30``."""
    bits = (SUM_BITS - math.ceil(math.log2(max(width, 1)))) // 2
    return 2.0 ** min(COORDINATE_BITS, bits)


def squared_norm_limit(clip_norm: float) -> float:
    """``S_MAX``: the largest squared norm that is clipped rather than dropped."""
    return min(NORM_LIMIT, _MAX_T * (clip_norm * (1 - CLIP_MARGIN)) ** 2)


def _fixed(count: Any, like: Any) -> Any:
    """A scale-1 secret count re-encoded (exactly) with ``like``'s fixed-point scale."""
    return count + like.mul(0)


def _inside(values: Any, bounds: torch.Tensor) -> Any:
    """Secret scale-1 bits: 1 where ``-b <= x < b`` (``b`` a power of two), exact on the ring.

    With ``2b = 2^K`` ring units, ``y = x + b`` lies in ``[0, 2^K)`` as an
    unsigned integer exactly when ``x`` is in range: one binary conversion
    (CrypTen's adder), a local shift of each share by ``K``, and a test that
    the ``64 - K`` high bits are all 0 (an AND tree on the packed word).
    Half what two comparisons ``x < b``, ``-x < b`` cost (two adders).
    """
    from crypten.mpc.ptype import ptype

    encoded = (bounds * 2.0**16).long()  # b in ring units
    shifts = torch.log2(2 * encoded.double()).round().long()  # K
    shifted = (values + bounds)._to_ptype(ptype.binary)
    shifted.share = shifted.share >> shifts  # XOR shares: each shifts alone
    shifted._tensor = shifted._tensor.eq(0)
    bits = shifted._to_ptype(ptype.arithmetic, bits=1)  # as CrypTen's _ltz converts its bit
    bits.encoder._scale = 1
    return bits


def in_range(tensors: Sequence[Any], bounds: Sequence[float]) -> tuple[list[Any], Any]:
    """``tensors`` (each ``(R, w)``) with every coordinate outside ``[-b, b)`` set to 0,
    and each row's number of such coordinates (a secret scale-1 ``(R,)`` count).

    One range test (:func:`_inside`) of all coordinates at once, exact for
    any ring element; the zeroing multiplies by 0/1 bits, with no truncation.
    """
    flat = crypten.cat([t.reshape(-1) for t in tensors])
    bound = torch.cat(
        [torch.full((t.nelement(),), float(b)) for t, b in zip(tensors, bounds, strict=True)]
    )
    inside = _inside(flat, bound)
    kept_flat = flat * inside
    kept, bad, start = [], None, 0
    for t in tensors:
        size = t.nelement()
        kept.append(kept_flat[start : start + size].reshape(*t.size()))
        rows = (1 - inside[start : start + size]).reshape(*t.size()).sum(1)
        bad = rows if bad is None else bad + rows
        start += size
    return kept, bad


def outside(values: Sequence[Any], caps: Sequence[float]) -> Any:
    """Per row, how many secret ``(R,)`` ``values`` lie outside ``[-1, cap]`` (scale-1 count)."""
    rows = [v + 1 for v in values] + [cap - v for v, cap in zip(values, caps, strict=True)]
    bits = crypten.stack(rows).ge(0)
    return (1 - bits).sum(0)


def clip_stage_weights(squared_norms: Any, clip_norm: float, bad: Any | None = None) -> Any:
    """Secret ``(7, B)`` weights ``w`` with ``sum_k w[k] STAGE_SCALES[k] = min(1, C' / sqrt(s))``,
    and ``w = 0`` for a row whose ``s`` lies outside ``(-1, S_MAX)`` or whose ``bad`` count
    (secret, scale 1) is not 0.

    ``C' = C (1 - CLIP_MARGIN)``; ``squared_norms`` is a secret ``(B,)``
    tensor; ``t = s / C'^2`` at most ``2^35`` in a kept row. The row in use
    multiplies a value below 64; rows not in use may overflow into garbage,
    and are multiplied by an exact 0. Per example at most one row is
    non-zero: row 0 (= 1) when ``s <= C'^2``, else the row of the stage whose
    copy lies in ``[1, 64)``, holding its inverse square root in ``(1/8, 1]``
    (full relative precision). Rounds: one ``inv_sqrt``, one comparison and
    three multiplications by bits, whatever ``s``.
    """
    bound2 = (clip_norm * (1 - CLIP_MARGIN)) ** 2
    s = squared_norms
    # s / 64^j by integer division, then / C'^2: the product is small in the row that is used
    # (CrypTen's two-party truncation fails with a probability that grows with the value)
    stages = crypten.stack([s.div(64**j) if j else s for j in range(_STAGES)])
    roots = stages.mul(1.0 / bound2).inv_sqrt()  # row j accurate where 64^j <= t < 64^(j+1)
    checks = [s - bound2 * 64.0**j for j in range(_STAGES)]  # s > C'^2 64^j
    checks += [s + 1, squared_norm_limit(clip_norm) - s]  # and -1 < s < S_MAX
    if bad is not None:
        checks.append(0.5 - _fixed(bad, s))  # no bad coordinate or sum
    passed = crypten.stack(checks).gt(0)
    above = passed[:_STAGES]  # nested: above[j] implies above[j-1]
    keep = passed[_STAGES] * passed[_STAGES + 1]
    if bad is not None:
        keep = keep * passed[_STAGES + 2]
    chosen = above - crypten.cat([above[1:], above[:1] * 0])  # one-hot: the stage t is in
    # comparisons come back as integers (scale 1): select in one product with fixed-point values
    selectors = crypten.cat([1 - above[:1], chosen]) * keep.unsqueeze(0)
    return selectors * crypten.cat([roots[:1] * 0 + 1, roots])


def clip_factors(squared_norms: Any, clip_norm: float) -> Any:
    """Secret ``min(1, C' / sqrt(s))`` per example, 0 when ``s`` is out of range
    (see :func:`clip_stage_weights`)."""
    weights = clip_stage_weights(squared_norms, clip_norm)
    return weights.mul(torch.tensor(STAGE_SCALES).unsqueeze(1)).sum(0)


def clip(delta: Any, weights: Any) -> Any:
    """``f_i delta_i`` for ``(B, out)`` ``delta`` (checked: see :func:`in_range`).

    Each stage's copy of ``delta`` is divided by its public power of 8 first
    (locally), then multiplied by the stage's root: the product in use is the
    clipped value itself (at most ``C``), so it stays small whatever
    ``delta``, and its rounding is an absolute ``2^-16`` per coordinate.
    """
    copies = crypten.stack([delta] + [delta.div(8**j) if j else delta for j in range(_STAGES)])
    return (weights.unsqueeze(2) * copies).sum(0)  # (7, B, out), one round


def clipped_rows(x: Any, clip_norm: float) -> Any:
    """Each row of secret ``(m, d)`` ``x`` clipped to ``C'``, or 0 if out of range.

    Coordinates are checked against ``coordinate_bound(d) * p`` and the norm
    computed on ``x / p``, with ``p`` the power of two at or above ``C``
    (1 when ``C <= 1``): bounds scale with ``C``, so a large ``C`` does not
    drop honest updates.
    """
    scale = 2 ** max(0, math.ceil(math.log2(clip_norm)))
    (kept,), bad = in_range([x], [coordinate_bound(int(x.size(1))) * scale])
    scaled = kept.div(scale) if scale > 1 else kept
    weights = clip_stage_weights(scaled.square().sum(1), clip_norm / scale, bad)
    return clip(kept, weights)
