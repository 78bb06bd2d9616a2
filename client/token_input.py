"""A token model's input on the client: checked, padded and one-hot encoded ids.

:func:`encode_tokens` turns a batch of token-id sequences into what the
servers take (:mod:`ppml.proto.domain.tokens`): each sequence padded with the
model's pad id to its full length, so the servers never learn a request's
true length, then one-hot ``(length, vocab)``. Everything is checked before
anything is sent; a bad id or a sequence too long raises
:class:`~ppml.client.errors.InvalidTokens` naming the row and position.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ppml.client.errors import InvalidTokens
from ppml.proto.domain.tokens import TokenInput, one_hot

TokenRows = torch.Tensor | np.ndarray | Sequence[Sequence[int]]


def encode_tokens(rows: TokenRows, tokens: TokenInput, what: str = "the model") -> np.ndarray:
    """``rows`` (a batch of sequences of ids, ragged or not) -> float64 ``(batch, length, vocab)``.

    Raises InvalidTokens for an empty batch, a sequence longer than
    ``tokens.length``, an id that is not an integer or not in ``[0, vocab)``.
    """
    sequences = _sequences(rows, what)
    ids = np.full((len(sequences), tokens.length), tokens.pad_id, dtype=np.int64)
    for row, sequence in enumerate(sequences):
        if len(sequence) > tokens.length:
            raise InvalidTokens(
                f"row {row} has {len(sequence)} tokens, but {what} takes at most "
                f"{tokens.length}; nothing was sent"
            )
        for position, token in enumerate(sequence):
            if not _is_integer(token) or not 0 <= int(token) < tokens.vocab:
                raise InvalidTokens(
                    f"row {row}, position {position}: token id {token!r} is not an integer in "
                    f"[0, {tokens.vocab}) ({what}'s vocabulary); nothing was sent"
                )
        ids[row, : len(sequence)] = [int(t) for t in sequence]
    return one_hot(ids, tokens.vocab)


def _sequences(rows: TokenRows, what: str) -> list[Sequence[Any]]:
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    if isinstance(rows, np.ndarray):
        if rows.ndim != 2 or rows.dtype.kind not in "iu":
            raise InvalidTokens(
                f"{what} takes token ids: a batch of sequences of integers, e.g. an integer "
                f"array (batch, length), not a {rows.dtype} array of shape {rows.shape}"
            )
        return list(rows)
    if isinstance(rows, str | bytes) or not isinstance(rows, Sequence) or not rows:
        raise InvalidTokens(f"{what} takes token ids: a non-empty batch of sequences of integers")
    out: list[Sequence[Any]] = []
    for row, sequence in enumerate(rows):
        if isinstance(sequence, str | bytes) or not isinstance(sequence, Sequence | np.ndarray):
            raise InvalidTokens(f"row {row} is not a sequence of token ids: {sequence!r:.60}")
        out.append(sequence)
    return out


def _is_integer(token: object) -> bool:
    """An int (numpy's too), not a bool or a float, however integral."""
    return isinstance(token, numbers.Integral) and not isinstance(token, bool | np.bool_)
