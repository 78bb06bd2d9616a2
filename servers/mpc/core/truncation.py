"""Exact fixed-point truncation on shares, with the dealer's help, for any number of parties.

Fixed point keeps 16 fractional bits in the ring ``Z_2^64``; every product
(``mul``, ``matmul``, ``conv``) is at scale ``2^32`` and must be divided by
``2^16`` on the shares. CrypTen does that in a way that can fail silently:

* 2 parties divide their shares locally (SecureML). The result is wrong by
  about ``2^48`` ring units (``2^32`` in real units) whenever the shares
  wrap, with probability about ``|x| / 2^64`` for an encoded ``x``, i.e.
  ``|v| / 2^32`` for a product of real value ``v``;
* 3 or more parties correct the shares' wrap count with the dealer's
  ``wraps``, which ignores the carry of the masked value ``x + r``: the same
  failure, with the same probability.

A training job makes millions of such products, and a model whose
activations reach ``~10^5`` diverges in most runs with nothing to tell the
user (issue 18, finding 5). This module replaces the division by a public
integer (``ArithmeticSharedTensor.div_(int)``) with a protocol that has no
large-error event at all for inputs in range.

Protocol, for shares of ``x`` with ``|x| < 2^62`` (a product of real value
``|v| < 2^30``) and a public divisor ``d``:

1. the dealer draws a uniform ``r`` in ``Z_2^64`` (every party's share comes
   from its keyed stream with the dealer, :mod:`~ppml.servers.mpc.randomness`)
   and deals additive shares of ``q = floor(r / d)`` and of ``m = msb(r)``,
   reading ``r`` as an unsigned integer (party 0 receives its part, the
   others draw theirs; :func:`dealer_trunc`);
2. the parties open ``z = x + 2^62 + r`` (one all-reduce round). ``z`` is
   uniform, so it reveals nothing;
3. with ``x' = x + 2^62`` in ``[0, 2^63)``: ``x' = z - r + 2^64 w`` over the
   integers, with the wrap ``w = m (1 - msb(z))`` (``w = 1`` needs
   ``r > 2^64 - x' > 2^63`` and then ``z < x' < 2^63``; ``w = 0`` with
   ``m = 1`` gives ``z >= r >= 2^63``). ``w`` is linear in the shares of
   ``m`` because ``msb(z)`` is public;
4. each party outputs its share of ``floor(z / d) - q + w floor(2^64 / d)``
   minus ``floor(2^62 / d)`` (party 0 adds the public terms).

The result is ``floor(x / d)`` up to one unit (the borrow between the low
parts of ``z`` and ``r``; one more unit when ``d`` does not divide
``2^62``): about ``2^-16`` in real units, never more, with probability 0 of
a larger error while ``|x| < 2^62``. Outside that range the product has
already left the fixed-point format's headroom (products need ``|v| < 2^31``
in every engine), and the result is wrong, as it is in plaintext
fixed point.

Cost per truncated element: one opened ring element per party (in the
round the division already ends) and 16 bytes from the dealer to party 0;
the other parties draw their shares locally.

Scope: :func:`install` patches ``ArithmeticSharedTensor.div_`` for every
public integer divisor (and integral floats and integer tensors) while the
provider is the dealer (``TTP``). Other providers (the insecure ``TFP``,
tests only) keep CrypTen's division. A non-uniform integer tensor divisor is
applied as a product with its public reciprocal, which then truncates by
the scale through this protocol.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ppml.servers.mpc.core.crypten_compat import crypten

FUNCTION = "trunc"  # the dealer's function name
OFFSET = 1 << 62  # x + OFFSET lies in [0, 2^63) for |x| < 2^62
RING = 1 << 64
MAX_DIVISOR = 1 << 62

_original_div: Any = None


def _signed(value: int) -> int:
    """``value`` mod ``2^64`` as a two's-complement int64."""
    value %= RING
    return value - RING if value >= 1 << 63 else value


def _unsigned(tensor: torch.Tensor) -> np.ndarray:
    """The ring elements of ``tensor`` as unsigned integers, flattened (1-d even for a scalar)."""
    return tensor.contiguous().reshape(-1).numpy().view(np.uint64)


def _tensor(values: np.ndarray, size: Any) -> torch.Tensor:
    """Unsigned ring elements back as an int64 tensor of ``size``."""
    return torch.from_numpy(np.ascontiguousarray(values).view(np.int64)).reshape(size)


def check_divisor(divisor: Any) -> int:
    """A public divisor the protocol serves: an int in ``[2, 2^62]`` (raises ``ValueError``)."""
    if isinstance(divisor, bool) or not isinstance(divisor, int):
        raise ValueError("a truncation divisor must be an int")
    if not 2 <= divisor <= MAX_DIVISOR:
        raise ValueError("a truncation divisor must lie in [2, 2^62]")
    return divisor


def _floor_div(values: torch.Tensor, divisor: int) -> torch.Tensor:
    """``floor(u / divisor)`` of ring elements read as unsigned, as int64 (a shift for 2^k)."""
    if divisor & (divisor - 1) == 0:
        bits = divisor.bit_length() - 1
        return (values >> bits) & ((1 << (64 - bits)) - 1)  # logical shift
    return _tensor(_unsigned(values) // np.uint64(divisor), values.size())


def _ring(size: Any, generator: Any, device: Any = None) -> torch.Tensor:
    # looked up at call time: ppml's keyed-randomness patch replaces it
    return crypten.common.rng.generate_random_ring_element(size, generator=generator, device=device)


def dealer_trunc(server: Any, size: Any, divisor: int) -> torch.Tensor:
    """The dealer's ``trunc``: party 0's shares of ``floor(r / d)`` and ``msb(r)``, stacked.

    ``r`` is the sum of every party's next ring element; parties ``1..n-1``
    then draw their shares of ``q`` and of ``m`` (in that order) from their
    streams, exactly as :func:`truncate` does.
    """
    divisor = check_divisor(divisor)
    generators = server._get_generators(device=server.device)
    r_shares = [_ring(size, g) for g in generators]
    other_parts = [(_ring(size, g), _ring(size, g)) for g in generators[1:]]
    r = torch.stack(r_shares).sum(dim=0)  # wraps mod 2^64
    q = _floor_div(r, divisor)
    m = (r < 0).long()  # msb(r)
    for q_i, m_i in other_parts:
        q = q - q_i
        m = m - m_i
    return torch.stack([q, m])


def truncate(x: Any, divisor: int) -> Any:
    """Divide the ``ArithmeticSharedTensor`` ``x`` by the public ``divisor``, in place, exactly.

    Every party calls it at the same point of the protocol (CrypTen's
    ``div_``). Needs the dealer (provider ``TTP``).
    """
    divisor = check_divisor(divisor)
    share: torch.Tensor = x.share
    if share.nelement() == 0:
        return x
    comm = crypten.communicator.get()
    client = crypten.mpc.provider.ttp_provider.TTPClient.get()
    device = share.device
    generator = client.get_generator(device=device)
    size = share.size()
    r = _ring(size, generator, device)
    if comm.get_rank() == 0:
        q, m = client.ttp_request(FUNCTION, device, size, divisor)
    else:
        q = _ring(size, generator, device)
        m = _ring(size, generator, device)
    masked = share + r
    if comm.get_rank() == 0:
        masked = masked + OFFSET
    z = comm.all_reduce(masked)
    result = m * _signed(RING // divisor) * (z >= 0).long() - q  # (z >= 0) = 1 - msb(z)
    if comm.get_rank() == 0:
        result = result + _floor_div(z, divisor) - (OFFSET // divisor)
    x.share = result
    return x


def _dealer_present() -> bool:
    return str(getattr(crypten.cfg.mpc, "provider", "")) == "TTP"


def div_(self: Any, y: Any) -> Any:
    """``ArithmeticSharedTensor.div_``: public integer divisors go through :func:`truncate`."""
    if isinstance(y, float) and y.is_integer():
        y = int(y)
    if torch.is_tensor(y) and not torch.is_floating_point(y) and _dealer_present():
        values = y.unique()
        if values.numel() == 1:
            y = int(values.item())
        else:  # a public reciprocal, then the exact truncation by the scale
            return self.mul_(y.to(torch.float64).reciprocal())
    integral = torch.is_tensor(y) and torch.is_floating_point(y) and bool(y.frac().eq(0).all())
    if integral and _dealer_present():
        return div_(self, y.long())
    if isinstance(y, int) and not isinstance(y, bool) and _dealer_present():
        if y < 0:
            return div_(self, -y).neg_()
        if y == 1:
            return self
        if y <= MAX_DIVISOR:
            return truncate(self, y)
    return _original_div(self, y)


def install() -> None:
    """Route integer divisions through :func:`truncate`; give CrypTen's TTP server ``trunc``."""
    global _original_div
    arithmetic = crypten.mpc.primitives.arithmetic.ArithmeticSharedTensor
    if _original_div is None:
        _original_div = arithmetic.div_
    arithmetic.div_ = div_
    crypten.mpc.provider.ttp_provider.TTPServer.trunc = dealer_trunc


def uninstall() -> None:
    """Undo :func:`install` (tests only)."""
    global _original_div
    if _original_div is not None:
        crypten.mpc.primitives.arithmetic.ArithmeticSharedTensor.div_ = _original_div
        _original_div = None
