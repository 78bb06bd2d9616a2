"""Make CrypTen 0.4.1 import and run on torch 2.13.

CrypTen 0.4.1 (the latest release) was written against torch 1.x/2.0. Import
``crypten`` through this module, never directly::

    from ppml.servers.mpc.core.crypten_compat import crypten

Each patch below is the smallest change that restores the behaviour ppml
relies on, and ``tests/unit/test_crypten_compat.py`` checks each one.

1. ``crypten/nn/onnx_converter.py`` does, at import time,
   ``from torch.onnx._internal.registration import registry``. That private
   module no longer exists in torch 2.13, so ``import crypten`` fails. The
   registry is only used by ``crypten.nn.from_pytorch`` to re-register ONNX
   symbolics; ppml never calls it (the client exports ONNX itself with
   ``torch.onnx.export(..., dynamo=False)``). We install a stand-in module
   whose ``registry`` raises a clear error if anything does touch it.

2. ``crypten.load`` calls ``torch.load`` whose default became
   ``weights_only=True``, which refuses CrypTen's pickles. ppml stores shares
   as raw int64 arrays and never uses ``crypten.load``; callers that must use
   it pass :func:`tensor_loader` as ``load_closure``, which only accepts
   plain tensors (never arbitrary pickles).

3. and 4. are for the plain-gloo baselines in ``bench/`` only (the servers
   no longer use gloo): :func:`set_process_group_timeout` sets the timeout
   torch's process groups read at ``init_process_group``, and
   :func:`csprng_seed` draws a seed from the OS CSPRNG for torch's default
   generator (which keeps 32 bits of it: never a secret stream's seed).

5. ``FixedPointEncoder.decode`` divides a negative encoding by ``scale - 1``
   (``tensor.div(self._scale - correction, ...)``), so ``get_plain_text``
   of a negative value ``v`` is off by exactly 1.0 with probability about
   ``|v| / 2^16`` (4 % of values in ``[-3000, -2000]``). ppml's own code
   decodes shares with :mod:`ppml.proto.shares`; the few CrypTen openings
   (validity bits, a count of rows) are of small non-negative values. The
   patch (:func:`exact_decode`, at import) divides in float64: exact up to
   float32 rounding.

Every server process and the dealer patch CrypTen further when they join an
epoch (``ppml.servers.mpc.session.install()``), never at import:
``ppml.servers.mpc.randomness.patches.install`` keys every random stream (AES-256-CTR
under 256-bit keys; its docstring lists each replaced name) and
``ppml.servers.mpc.network.transport.install`` makes ``crypten.init()`` use ppml's
mutual-TLS communicator instead of gloo.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import torch

_REGISTRATION = "torch.onnx._internal.registration"


class _RemovedRegistry:
    """Stand-in for torch's removed ONNX symbolic registry."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            "torch.onnx._internal.registration was removed in torch 2.13; "
            "crypten.nn.from_pytorch is unsupported here. Export the model with "
            "torch.onnx.export(..., dynamo=False) and use crypten.nn.from_onnx."
        )


def _install_registration_stub() -> None:
    try:
        __import__(_REGISTRATION)
    except ModuleNotFoundError:
        stub = types.ModuleType(_REGISTRATION)
        stub.registry = _RemovedRegistry()  # type: ignore[attr-defined]
        sys.modules[_REGISTRATION] = stub


def tensor_loader(f: Any, **kwargs: Any) -> torch.Tensor:
    """Load a saved plain tensor with ``weights_only=True`` (no pickled code)."""
    kwargs.pop("weights_only", None)
    obj = torch.load(f, weights_only=True, **kwargs)
    if not isinstance(obj, torch.Tensor):
        raise TypeError(f"expected a saved tensor, got {type(obj).__name__}")
    return obj


def set_process_group_timeout(seconds: float) -> None:
    """Timeout of the next ``crypten.init()``'s process groups (see patch 3)."""
    from datetime import timedelta

    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = timedelta(seconds=seconds)


def csprng_seed() -> int:
    """A uniformly random signed 64-bit seed from the OS CSPRNG."""
    return int.from_bytes(os.urandom(8), "big", signed=True)


def exact_decode(encoder: Any, tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``FixedPointEncoder.decode`` without CrypTen's off-by-one for negatives (patch 5)."""
    if tensor is None:
        return None
    if tensor.is_floating_point():
        raise TypeError("decode needs an integer tensor")
    if encoder._scale == 1:  # as CrypTen: integers stay integers
        return tensor.data
    return (tensor.double() / float(encoder._scale)).float()


_install_registration_stub()

import crypten  # noqa: E402  (must follow the stub)
import crypten.mpc  # noqa: E402

crypten.encoder.FixedPointEncoder.decode = exact_decode

__all__ = ["crypten", "csprng_seed", "set_process_group_timeout", "tensor_loader"]
