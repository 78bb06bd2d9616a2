"""The fast engine maps a transformer; the replicated engine refuses it naming a layer."""

from __future__ import annotations

import torch
from torch import nn

from ppml.client.model_export import export_model
from ppml.servers.mpc.fast.service.spec import fast_model
from ppml.servers.mpc.rep3.service.spec import rep3_model, unsupported
from ppml.training.transformer import digits_transformer


def test_the_fast_engine_maps_every_layer_of_a_transformer() -> None:
    architecture, _ = export_model(digits_transformer(), torch.zeros(1, 8, 8))
    model = fast_model(architecture)  # so 2 servers run it on the fast engine
    assert model is not None and len(model.spec.layers) == len(architecture.layers)
    kinds = {type(layer).__name__ for layer in architecture.layers}
    assert {"Softmax", "LayerNorm", "GELU", "MatMul", "Bias"} <= kinds
    # the Bias (positional embedding) and each LayerNorm's weight and bias, in layer order
    names = [name for _, name in model.params]
    assert names == ["bias", "weight", "bias", "weight", "bias"]


def test_the_replicated_engine_refuses_a_linear_on_tokens() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Flatten(), nn.Linear(32, 10))
    architecture, _ = export_model(model, torch.zeros(1, 8, 8))
    assert architecture.layers[0].out_shape((8, 8)) == (8, 4)
    assert rep3_model(architecture) is None and unsupported(architecture) is not None


def test_the_replicated_engine_names_the_first_layer_it_lacks() -> None:
    architecture, _ = export_model(digits_transformer(), torch.zeros(1, 8, 8))
    why = unsupported(architecture)
    assert why is not None and why.startswith("layer 1 (Bias) does not run")
