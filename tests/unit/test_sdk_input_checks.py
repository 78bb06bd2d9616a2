"""Mistakes a newcomer makes get a typed SDK error naming expected and given, before sending.

A federated update from a model of another shape or with an extra layer, rows of
the wrong width (prediction, a sample input, a participant's data), a CKKS key
file of another federation: each raises a subclass of ``PpmlClientError``
exported from ``ppml.client``, and nothing reaches a server (the fake cluster
fails the test if anything is sent).
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np
import pytest
import torch
from torch import nn

import ppml.client
from ppml.client import (
    ContextMismatch,
    InputShapeMismatch,
    InvalidFederation,
    PpmlClientError,
    UpdateShapeMismatch,
)
from ppml.client.federation import Participant, check_context, check_update_shapes
from ppml.client.model_export import export_model
from ppml.proto.domain import federations as fed
from ppml.proto.domain.architecture import Architecture, Linear, ReLU
from ppml.training import ckks

ARCH = Architecture((Linear(4, 3, True), ReLU(), Linear(3, 2, True)), (4,), (2,))


class NothingSent:
    """A cluster that fails the test if the participant sends anything."""

    parties = 2
    timeout = 5.0

    def _call_all(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError("an update was sent")

    _servers: list[Any] = []


def _info(**spec: Any) -> fed.FederationInfo:
    return fed.FederationInfo(
        "fed-1", "fed-1-model", "", "owner", ARCH, fed.FederationSpec(("a",), 1, **spec)
    )


def _weights() -> dict[str, np.ndarray]:
    return {name: np.zeros(shape) for name, shape in ARCH.parameter_shapes().items()}


def _submit(returned: nn.Module) -> None:
    participant = Participant(NothingSent(), "fed-1", lambda model, r: (returned, 10, None))  # type: ignore[arg-type]
    participant.submit_round(_info(), _weights())


def test_every_new_error_is_a_public_client_error() -> None:
    for cls in (InputShapeMismatch, UpdateShapeMismatch, ContextMismatch):
        assert issubclass(cls, PpmlClientError)
        assert cls.__name__ in ppml.client.__all__
    assert issubclass(UpdateShapeMismatch, InvalidFederation)


def test_an_update_of_another_shape_is_refused_naming_both() -> None:
    wider = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(UpdateShapeMismatch) as info:
        _submit(wider)
    text = str(info.value)
    assert "0.weight has shape (5, 4), expected (3, 4)" in text
    assert "2.weight has shape (2, 5), expected (2, 3)" in text
    assert "nothing was sent" in text


def test_an_update_with_an_extra_layer_is_refused_not_ignored() -> None:
    deeper = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with pytest.raises(UpdateShapeMismatch, match=r"extra 4\.weight \(2, 2\), 4\.bias \(2,\)"):
        _submit(deeper)


def test_a_missing_layer_is_named() -> None:
    with pytest.raises(UpdateShapeMismatch, match=r"missing 2\.weight \(2, 3\), 2\.bias \(2,\)"):
        check_update_shapes(
            {"0.weight": (3, 4), "0.bias": (3,), "2.weight": (2, 3), "2.bias": (2,)},
            {"0.weight": (3, 4), "0.bias": (3,)},
        )


def test_a_ckks_key_file_of_another_federation_is_refused_before_training() -> None:
    ours, theirs = ckks.key_ceremony(), ckks.key_ceremony()
    info = _info(backend="ckks", ckks_fingerprint=ours.fingerprint)
    check_context(info, ours.participant_context)  # the right one passes
    with pytest.raises(ContextMismatch, match="another federation's key file") as caught:
        check_context(info, theirs.participant_context)
    assert ours.fingerprint[:16] in str(caught.value)
    assert theirs.fingerprint[:16] in str(caught.value)
    trained: list[int] = []

    def train(model: nn.Module, round_no: int) -> tuple[nn.Module, int, float | None]:
        trained.append(round_no)
        return model, 1, None

    participant = Participant(NothingSent(), "fed-1", train, theirs.participant_context)  # type: ignore[arg-type]
    with pytest.raises(ContextMismatch):
        participant.submit_round(info, _weights())
    assert trained == []  # refused before the local training, not after
    with pytest.raises(InvalidFederation, match="cannot be read"):
        check_context(info, b"not a context")


def test_a_sample_input_of_the_wrong_width_names_both_widths() -> None:
    net = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    with pytest.raises(InputShapeMismatch, match=r"rows of shape \(63,\).*shape \(64,\)"):
        export_model(net, torch.zeros(1, 63))
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())
    with pytest.raises(InputShapeMismatch, match=r"\(3, 8, 8\).*\(1, 8, 8\)"):
        export_model(conv, torch.zeros(1, 3, 8, 8))


def test_a_linear_first_model_needs_no_sample_input() -> None:
    arch, weights = export_model(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    assert arch.input_shape == (4,) and set(weights) == set(ARCH.parameter_shapes())
    with pytest.raises(ValueError, match="sample_input="):
        export_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
