"""Token models: the Select and Concat layers, the token input on the wire, the parser's
embedding / CLS / Concat patterns, the SDK's encoding of token ids, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ppml.client import InputShapeMismatch, InvalidTokens
from ppml.client.model_export import export_model, plaintext_forward
from ppml.client.onnx_graph import UnsupportedModelError
from ppml.client.token_input import encode_tokens
from ppml.proto.domain import architecture as arch
from ppml.proto.domain.tokens import TokenInput, one_hot
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.wire import serde
from ppml.servers.mpc.fast.service.spec import fast_model
from ppml.servers.mpc.rep3.service.spec import unsupported as rep3_unsupported
from ppml.servers.store.jobs import graph_refusal
from ppml.training.text import pad, sentiment_data, sentiment_transformer

V, L, D = 12, 6, 4
TOKENS = TokenInput(V, L, 0)


# ---------------------------------------------------------------- layers


def test_select_drops_its_axis_and_refuses_a_missing_entry() -> None:
    assert arch.Select(1, 2).out_shape((5, 3, 4)) == (5, 4)
    with pytest.raises(ValueError, match="no entry 3"):
        arch.Select(1, 3).out_shape((5, 3, 4))
    with pytest.raises(ValueError):
        arch.Select(-1, 0).check()
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(arch.Select(0, 1).forward((x,), {}, True), x[:, 1])


def test_concat_joins_two_inputs_along_a_sample_axis() -> None:
    assert arch.Concat(0).join_shapes(((3, 4), (2, 4))) == (5, 4)
    assert arch.Concat(1).join_shapes(((3, 4), (3, 1))) == (3, 5)
    for shapes in (((3, 4), (2, 5)), ((3, 4), (3, 4, 1)), ((3,),)):
        with pytest.raises(ValueError):
            arch.Concat(0).join_shapes(shapes)  # type: ignore[arg-type]
    a, b = torch.ones(2, 3, 4), torch.zeros(2, 1, 4)
    assert arch.Concat(0).forward((a, b), {}, True).shape == (2, 4, 4)


# ---------------------------------------------------------------- wire


def _token_arch(
    tokens: TokenInput | None = TOKENS, shape: tuple[int, ...] = (L, V)
) -> arch.Architecture:
    layers = (arch.Linear(V, D, bias=False), arch.Select(0, 0), arch.Linear(D, 2))
    return arch.Architecture(layers, shape, (2,), tokens=tokens)


def test_a_token_architecture_round_trips_through_bytes() -> None:
    a = _token_arch(TokenInput(V, L, 3))
    msg = serde.architecture_to_proto(a)
    back = serde.architecture_from_proto(type(msg).FromString(msg.SerializeToString()))
    assert back == a and back.tokens == TokenInput(V, L, 3)
    assert (
        serde.architecture_from_proto(serde.architecture_to_proto(_token_arch(None))).tokens is None
    )


@pytest.mark.parametrize(
    "tokens, shape",
    [
        (TokenInput(1, L, 0), (L, 1)),  # a vocabulary of one
        (TokenInput(V, L, V), (L, V)),  # the pad id outside it
        (TokenInput(V, 0, 0), (1, V)),  # no length
        (TokenInput(V, L, 0), (L + 1, V)),  # input shape not (length, vocab)
    ],
)
def test_a_bad_token_input_is_an_invalid_model(tokens: TokenInput, shape: tuple[int, ...]) -> None:
    msg = serde.architecture_to_proto(_token_arch(tokens, shape))
    with pytest.raises(PpmlError) as info:
        serde.architecture_from_proto(msg)
    assert info.value.code == ErrorCode.INVALID_MODEL


def test_token_models_are_refused_for_training_and_by_the_replicated_engine() -> None:
    assert "token ids" in (graph_refusal(_token_arch()) or "")
    assert "token model" in (rep3_unsupported(_token_arch()) or "")
    assert graph_refusal(_token_arch(None)) is not None  # a Select is served only anyway


# ---------------------------------------------------------------- parser


class _Bag(nn.Module):
    """Embedding, CLS pooling and mean pooling joined by a Concat, a head."""

    def __init__(self, pad_id: int | None = 0) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D, padding_idx=pad_id)
        self.position = nn.Parameter(torch.randn(L, D))
        self.head = nn.Linear(2 * D, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.position
        return self.head(torch.cat([x[:, 0], x.mean(1)], dim=1))


def _ids(rows: int = 3) -> torch.Tensor:
    return torch.randint(0, V, (rows, L), generator=torch.Generator().manual_seed(0))


def test_an_embedding_becomes_a_linear_on_one_hot_tokens() -> None:
    torch.manual_seed(0)
    model = _Bag(pad_id=5).eval()
    a, weights = export_model(model, _ids())
    kinds = [type(layer).__name__ for layer in a.layers]
    assert kinds == ["Linear", "Bias", "Select", "Mean", "Concat", "Linear"], kinds
    assert a.layers[0] == arch.Linear(V, D, bias=False)
    assert np.allclose(weights["0.weight"], model.embed.weight.detach().numpy().T)
    assert a.tokens == TokenInput(V, L, 5) and a.input_shape == (L, V)
    assert a.describe().startswith(f"Tokens({V}, {L}) → Linear({V}→{D})")
    ids = _ids(4)
    got = plaintext_forward(a, weights, torch.from_numpy(one_hot(ids.numpy(), V)))
    with torch.no_grad():
        assert torch.allclose(got, model(ids).double(), atol=1e-5)
    assert export_model(_Bag(pad_id=None), _ids())[0].tokens == TokenInput(V, L, 0)
    assert export_model(_Bag(), _ids(), pad_id=2)[0].tokens == TokenInput(V, L, 2)
    assert fast_model(a) is not None  # the fast engine runs every layer


def test_the_sentiment_transformer_exports_with_cls_mean_and_concat() -> None:
    data = sentiment_data(4)
    a, _ = export_model(sentiment_transformer(), pad(data.sequences, data.length))
    kinds = {type(layer).__name__ for layer in a.layers}
    assert {"Select", "Mean", "Concat", "Softmax", "LayerNorm"} <= kinds
    assert a.tokens == TokenInput(32, 16, 0)
    assert fast_model(a) is not None


class _ReadsIds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids).mean(1) * (ids[:, :1] > 0).float()


class _Picks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)[:, [0, 2]].mean(1)


def test_parser_refusals_name_the_node() -> None:
    with pytest.raises(UnsupportedModelError, match="reads the token ids"):
        export_model(_ReadsIds(), _ids())
    with pytest.raises(UnsupportedModelError, match=r"node .*Gather"):
        export_model(_Picks(), _ids())
    with pytest.raises(ValueError, match="token ids of shape"):
        export_model(_Bag())


def test_concat_of_more_than_two_is_a_chain_and_the_batch_axis_is_refused() -> None:
    class Three(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), x, self.b(x)], dim=1)

    a, _ = export_model(Three(), torch.zeros(1, 4))
    assert [type(layer).__name__ for layer in a.layers].count("Concat") == 2
    assert a.output_shape == (10,)

    class Batch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), x], dim=0)

    with pytest.raises(UnsupportedModelError, match=r"Concat.*batch axis"):
        export_model(Batch(), torch.zeros(1, 4))


# ---------------------------------------------------------------- SDK


def test_token_ids_are_padded_and_one_hot() -> None:
    x = encode_tokens([[3, 1], [11, 0, 4, 4, 4, 4]], TokenInput(V, L, 7))
    assert x.shape == (2, L, V) and x.dtype == np.float64
    assert (x.sum(-1) == 1).all()
    assert x[0].argmax(-1).tolist() == [3, 1, 7, 7, 7, 7]  # padded with the pad id
    assert x[1].argmax(-1).tolist() == [11, 0, 4, 4, 4, 4]
    same = encode_tokens(torch.tensor([[3, 1, 7, 7, 7, 7]]), TokenInput(V, L, 7))
    assert np.array_equal(same[0], x[0])
    assert encode_tokens(np.array([[2, 3]], dtype=np.int32), TOKENS).shape == (1, L, V)


@pytest.mark.parametrize(
    "rows, match",
    [
        ([[1, 2], [3, V]], rf"row 1, position 1: token id {V} .*\[0, {V}\)"),
        ([[1, -1]], r"row 0, position 1: token id -1"),
        ([[1, 2.0]], r"token id 2.0 is not an integer"),
        ([[True]], r"token id True"),
        ([[1] * (L + 1)], rf"row 0 has {L + 1} tokens.*at most {L}"),
        (np.zeros((1, 3)), r"not a float64 array"),
        ([], r"non-empty batch"),
        (["abc"], r"row 0 is not a sequence"),
    ],
)
def test_bad_token_ids_raise_before_anything_is_sent(rows: object, match: str) -> None:
    with pytest.raises(InvalidTokens, match=match) as info:
        encode_tokens(rows, TOKENS)  # type: ignore[arg-type]
    assert isinstance(info.value, InputShapeMismatch)


class _Meta:
    def __init__(self, architecture: arch.Architecture) -> None:
        self.architecture = architecture


def test_the_sdk_reads_the_token_input_from_the_model_and_sends_nothing_bad() -> None:
    from ppml.client import Cluster

    cluster = Cluster.__new__(Cluster)  # no servers: anything sent would fail
    asked: list[str] = []

    def get_model(model_id: str) -> _Meta:
        asked.append(model_id)
        return _Meta(_token_arch(TokenInput(V, L, 3)))

    cluster.get_model = get_model  # type: ignore[method-assign]
    x = cluster._input("m", [[1, 2], [4]])
    assert x.shape == (2, L, V) and x[1].argmax(-1).tolist() == [4, 3, 3, 3, 3, 3]
    with pytest.raises(InvalidTokens, match="row 0, position 0"):
        cluster.predict_detailed("m", [[V]])
    assert asked == ["m", "m"]  # read once, then fresh once on the bad input
