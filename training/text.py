"""A text-like token data set and a small token transformer, generated here (no downloads).

:func:`sentiment_data` draws sequences of word ids from a *public* seeded
generator (it is data, not secrets): id 0 pads, id 1 is ``[CLS]`` (every
sequence starts with it), and every other id is a word with a public score
in {-2, -1, 1, 2}. A sequence is ``[CLS]`` and 3 to ``length - 1`` words (4
to ``length`` ids); its label is 1 when the sum of its words' scores is
positive (a sentiment-like bag of words: the label needs the tokens, not
their order; with a ``not`` negating the next word, tried here, this
1-layer model stalled at 93 %). Sequences whose sum is 0 are left out.
:func:`pad` pads them with the pad id to the model's length, exactly what
the SDK sends for them.

:class:`TokenClassifier` is ``nn.Embedding`` (``padding_idx`` the pad id), a
learned positional embedding, :class:`~ppml.training.transformer.EncoderLayer`
blocks, and a head on the ``[CLS]`` token's output joined with the mean of
all tokens' (CLS pooling, mean pooling, a Concat). Padding is part of its
input: it is trained on padded sequences and attends to the pads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ppml.training.transformer import EncoderLayer

PAD, CLS = 0, 1
WORDS_FROM = 2  # the first word id
SCORES = (-2, -1, 1, 2)


@dataclass(frozen=True)
class TokenData:
    """Sequences (ragged lists of ids, each starting with ``[CLS]``) and their labels."""

    sequences: list[list[int]]
    labels: np.ndarray  # (rows,), 0 or 1
    vocab: int
    length: int  # the longest a sequence may be


def word_scores(vocab: int, seed: int = 0) -> np.ndarray:
    """Each id's score (0 for pad and ``[CLS]``), drawn from a public seeded generator."""
    scores = np.random.default_rng(seed).choice(SCORES, size=vocab)
    scores[:WORDS_FROM] = 0
    return scores


def label_of(sequence: list[int], scores: np.ndarray) -> int:
    """1 if the words' scores sum above 0, else 0."""
    return int(_total(sequence, scores) > 0)


def _total(sequence: list[int], scores: np.ndarray) -> int:
    return sum(int(scores[token]) for token in sequence)


def sentiment_data(rows: int, vocab: int = 32, length: int = 16, seed: int = 0) -> TokenData:
    """``rows`` sequences of 4 to ``length`` ids (``[CLS]`` first) and their labels."""
    if vocab <= WORDS_FROM or length < 4:
        raise ValueError(f"needs vocab > {WORDS_FROM} and length >= 4")
    scores = word_scores(vocab)
    rng = np.random.default_rng(seed + 1)
    sequences: list[list[int]] = []
    labels: list[int] = []
    while len(sequences) < rows:
        words = rng.integers(WORDS_FROM, vocab, size=int(rng.integers(3, length)))
        sequence = [CLS, *words.tolist()]
        if _total(sequence, scores) == 0:
            continue
        sequences.append(sequence)
        labels.append(label_of(sequence, scores))
    return TokenData(sequences, np.asarray(labels, dtype=np.int64), vocab, length)


def pad(sequences: list[list[int]], length: int, pad_id: int = PAD) -> torch.Tensor:
    """``(rows, length)`` int64 ids: each sequence followed by ``pad_id`` up to ``length``."""
    out = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
    return out


class TokenClassifier(nn.Module):
    """Embedding, positional embedding, encoder layers, ``[CLS]`` and mean pooling, head.

    Input ``(batch, length)`` token ids; output ``(batch, classes)`` logits.
    """

    def __init__(self, vocab: int, length: int, dim: int, heads: int, ffn: int,
                 layers: int, classes: int, pad_id: int = PAD) -> None:  # fmt: skip
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=pad_id)
        self.position = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.layers = nn.Sequential(*(EncoderLayer(length, dim, heads, ffn) for _ in range(layers)))
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.embed(ids) + self.position)
        return self.head(torch.cat([x[:, 0], x.mean(1)], dim=-1))


def sentiment_transformer(vocab: int = 32, length: int = 16) -> TokenClassifier:
    """Width 16, 2 heads, FFN 32, 1 layer, 2 classes."""
    return TokenClassifier(vocab, length, 16, 2, 32, 1, 2)


def train(model: nn.Module, data: TokenData, steps: int = 400, seed: int = 0) -> nn.Module:
    """Adam on padded batches of 128 (plaintext, seconds on a CPU); returns it in eval mode."""
    torch.manual_seed(seed)
    x, y = pad(data.sequences, data.length), torch.from_numpy(data.labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(steps):
        index = torch.randint(0, len(x), (128,), generator=torch.Generator().manual_seed(step))
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x[index]), y[index]).backward()
        optimiser.step()
    return model.eval()
