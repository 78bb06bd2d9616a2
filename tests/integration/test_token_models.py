"""A token model served between real processes (TLS, SDK): fast engine and CrypTen.

training/text.py's sentiment transformer (an ``nn.Embedding`` of 32 token
ids, a learned positional embedding, one encoder layer, the ``[CLS]``
token's output joined with the mean of all tokens' by a Concat, a head) is
trained here in plaintext on padded sequences, shared through the SDK
(exported from integer token ids) and served on 2 servers (the fast engine
runs every layer) and on 3 servers (CrypTen). Held-out sequences of 4 to 16
ids go in as ragged lists: the SDK pads them to 16 and sends them one-hot.
Encrypted predictions must match the plaintext model on the same padded ids
(argmax on at least 99.5 % of the rows, logits within
:data:`LOGIT_TOLERANCE`). An out-of-range id and a sequence longer than the
model raise :class:`InvalidTokens` before anything is sent, and the cluster
then still serves a correct prediction.
"""

from __future__ import annotations

import pytest
import torch

from ppml.client import Cluster, InvalidTokens
from ppml.client.deploy.local import LocalCluster
from ppml.training.text import TokenData, pad, sentiment_data, sentiment_transformer, train

# The encoder has the digits transformer's widths (tests/integration/
# test_transformer_inference.py, whose bound argument holds here on rows of 16 tokens:
# CrypTen's and the fast engine's softmax, LayerNorm and GELU bounds; Select, Mean and
# Concat add at most one truncation). Measured on this file's model: logits up to 7.1
# off by at most 0.014 on the fast engine (60 rows) and 0.013 on CrypTen (200 rows);
# 0.05 leaves ~3.5x headroom for the truncations' randomness.
LOGIT_TOLERANCE = 0.05
FAST_ROWS = 60  # the fast engine's dealer keys are the slow part on loopback
CRYPTEN_ROWS = 200


@pytest.fixture(scope="module")
def held_out() -> TokenData:
    return sentiment_data(CRYPTEN_ROWS, seed=7)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return train(sentiment_transformer(), sentiment_data(4000), steps=300)


def _check_served(
    cluster: Cluster, model_id: str, model: torch.nn.Module, data: TokenData, rows: int
) -> None:
    sequences = data.sequences[:rows]
    assert len({len(s) for s in sequences}) > 5  # variable lengths, as lists
    got = cluster.predict(model_id, sequences).double()
    with torch.no_grad():
        plain = model(pad(sequences, data.length)).double()
    agree = float((got.argmax(1) == plain.argmax(1)).float().mean())
    assert agree >= 0.995, agree
    error = (got - plain).abs().max().item()
    assert error < LOGIT_TOLERANCE, error
    labels = torch.from_numpy(data.labels[:rows])
    assert float((plain.argmax(1) == labels).float().mean()) > 0.9  # a real model


@pytest.fixture(scope="module")
def model_id(cluster2: Cluster, model: torch.nn.Module, held_out: TokenData) -> str:
    return cluster2.share_model(model, pad(held_out.sequences[:1], 16), name="sentiment")


def test_a_token_model_is_served_on_two_servers_by_the_fast_engine(
    cluster2: Cluster, model_id: str, model: torch.nn.Module, held_out: TokenData
) -> None:
    architecture = cluster2.get_model(model_id).architecture
    assert architecture.tokens is not None and architecture.tokens.vocab == 32
    kinds = [type(layer).__name__ for layer in architecture.layers]
    for kind in ("Select", "Concat", "Mean", "Softmax"):
        assert kind in kinds, kinds
    before = [r.fast_pool.hits + r.fast_pool.misses for r in cluster2.status()]
    _check_served(cluster2, model_id, model, held_out, FAST_ROWS)
    after = [r.fast_pool.hits + r.fast_pool.misses for r in cluster2.status()]
    assert after == [b + 1 for b in before]  # one fast job (pool hit or miss) per server


def test_a_token_model_is_served_on_three_servers(
    local3: LocalCluster, model: torch.nn.Module, held_out: TokenData
) -> None:
    with Cluster.from_config(local3.config_path) as cluster:
        model_id = cluster.share_model(model, pad(held_out.sequences[:1], 16))
        _check_served(cluster, model_id, model, held_out, CRYPTEN_ROWS)


def test_bad_token_ids_are_refused_and_the_cluster_keeps_serving(
    cluster2: Cluster, model_id: str, model: torch.nn.Module, held_out: TokenData
) -> None:
    with pytest.raises(InvalidTokens, match=r"row 1, position 2: token id 32 .*\[0, 32\)"):
        cluster2.predict(model_id, [[1, 5, 6], [1, 4, 32]])
    with pytest.raises(InvalidTokens, match=r"row 0 has 17 tokens.*at most 16"):
        cluster2.predict(model_id, [[1] + [5] * 16])
    sequences = held_out.sequences[:2]
    with torch.no_grad():
        plain = model(pad(sequences, 16))
    got = cluster2.predict(model_id, sequences)
    assert (got - plain).abs().max().item() < LOGIT_TOLERANCE
    assert torch.equal(got.argmax(1), plain.argmax(1))
