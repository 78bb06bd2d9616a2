"""Element-wise reductions of the tensors the parties exchange (all_reduce, reduce)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.distributed import ReduceOp

_REDUCE: dict[Any, Callable[[torch.Tensor, torch.Tensor], Any]] = {
    ReduceOp.SUM: torch.Tensor.add_,
    ReduceOp.BXOR: torch.Tensor.bitwise_xor_,
    ReduceOp.BAND: torch.Tensor.bitwise_and_,
    ReduceOp.BOR: torch.Tensor.bitwise_or_,
    ReduceOp.PRODUCT: torch.Tensor.mul_,
}


def combine(tensors: list[torch.Tensor], op: Any, own: int) -> torch.Tensor:
    """``tensors`` (by rank; ``tensors[own]`` is the caller's) reduced with ``op``.

    Integer ops (sum mod 2^64, xor, and, or, product) are exact and order-free,
    so they accumulate into a received tensor (no copy); floating-point tensors
    are combined in rank order, so every party gets the same bits.
    """
    reduce_ = _REDUCE.get(op)
    if reduce_ is None:
        raise ValueError(f"unsupported reduce op {op}")
    if tensors[0].is_floating_point() or tensors[0].is_complex() or len(tensors) < 2:
        result = tensors[0].clone()
        rest = tensors[1:]
    else:
        first = 1 if own == 0 else 0  # a received tensor, ours to overwrite
        result = tensors[first]
        rest = [t for rank, t in enumerate(tensors) if rank != first]
    for tensor in rest:
        reduce_(result, tensor)
    return result
