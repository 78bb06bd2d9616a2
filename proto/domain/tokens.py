"""A token model's public input: token ids, one-hot encoded on the client.

A model whose :attr:`Architecture.tokens` is set takes, per sample, a
sequence of integer token ids. The SDK pads every sequence to the model's
``length`` with ``pad_id`` (so the servers never learn a request's true
length), checks each id is in ``[0, vocab)``, and secret-shares the one-hot
encoding of shape ``(length, vocab)``: that is the architecture's
``input_shape``, and the model's first layer (an embedding) is a token-wise
:class:`~ppml.proto.domain.layers.Linear` ``(vocab -> d)`` without bias,
whose weight is the embedding table transposed. Vocabulary size, length and
pad id are public; the ids and the true lengths are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_VOCAB = 1 << 20


@dataclass(frozen=True)
class TokenInput:
    """Token ids in ``[0, vocab)``, sequences padded with ``pad_id`` to ``length``."""

    vocab: int
    length: int
    pad_id: int = 0

    def check(self) -> None:
        """ValueError if the fields are out of range."""
        if not 2 <= self.vocab <= MAX_VOCAB:
            raise ValueError(f"token vocab must lie in 2..{MAX_VOCAB}, got {self.vocab}")
        if self.length < 1:
            raise ValueError(f"token length must be positive, got {self.length}")
        if not 0 <= self.pad_id < self.vocab:
            raise ValueError(f"pad id {self.pad_id} is not a token id in [0, {self.vocab})")

    @property
    def input_shape(self) -> tuple[int, int]:
        """One sample's one-hot shape ``(length, vocab)``."""
        return (self.length, self.vocab)


def one_hot(ids: np.ndarray, vocab: int) -> np.ndarray:
    """``(batch, length)`` integer ids in ``[0, vocab)`` -> float64 ``(batch, length, vocab)``."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.zeros((*ids.shape, vocab), dtype=np.float64)
    np.put_along_axis(out, ids[..., None], 1.0, axis=-1)
    return out
