"""The fast and replicated engines leave a transformer to CrypTen, or refuse it naming a layer."""

from __future__ import annotations

import torch
from torch import nn

from ppml.client.model_export import export_model
from ppml.servers.mpc.fast.service.spec import fast_model
from ppml.servers.mpc.rep3.service.spec import rep3_model, unsupported
from ppml.training.transformer import digits_transformer


def test_the_fast_engine_has_no_model_for_a_transformer() -> None:
    architecture, _ = export_model(digits_transformer(), torch.zeros(1, 8, 8))
    assert fast_model(architecture) is None  # so 2 servers run it on CrypTen


def test_the_replicated_engine_refuses_a_linear_on_tokens() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Flatten(), nn.Linear(32, 10))
    architecture, _ = export_model(model, torch.zeros(1, 8, 8))
    assert architecture.layers[0].out_shape((8, 8)) == (8, 4)
    assert rep3_model(architecture) is None and unsupported(architecture) is not None


def test_the_replicated_engine_names_the_first_layer_it_lacks() -> None:
    architecture, _ = export_model(digits_transformer(), torch.zeros(1, 8, 8))
    why = unsupported(architecture)
    assert why is not None and why.startswith("layer 1 (Bias) does not run")
