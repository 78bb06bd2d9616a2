"""``ppml train --mlp``: initial weights from the OS CSPRNG, never from ``--seed``.

The servers train on shares of these weights; were they drawn from a seed
(``torch.manual_seed``), a server that knows or guesses the seed could
recompute them.
"""

from __future__ import annotations

import argparse
import inspect
import math

import pytest
import torch

from ppml.client.cli import app as cli
from ppml.client.cli import training as cli_training

ARGS = ["train", "--config", "c.toml", "--datasets", "d1", "--mlp", "64,32,10"]
ARGS += ["--epochs", "1", "--batch-size", "8", "--lr", "0.1"]


def _weights(model: object) -> torch.Tensor:
    assert isinstance(model, torch.nn.Module)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_the_same_seed_gives_different_initial_weights() -> None:
    parser = cli._parser()
    draws = []
    for _ in range(2):
        torch.manual_seed(7)  # neither torch's global seed ...
        args = parser.parse_args([*ARGS, "--seed", "7"])  # ... nor --seed decides them
        model, sample = cli_training.initial_model(args)
        assert sample is not None and tuple(sample.shape) == (1, 64)
        draws.append(_weights(model))
    first, second = draws
    assert first.numel() == 64 * 32 + 32 + 32 * 10 + 10
    assert not torch.isclose(first, second).any()  # no weight in common


def test_weights_are_uniform_on_torchs_default_range() -> None:
    model = cli_training.mlp("64,32,10")
    for layer in (model[0], model[2]):
        assert isinstance(layer, torch.nn.Linear)
        bound = 1 / math.sqrt(layer.in_features)
        for parameter in (layer.weight, layer.bias):
            assert parameter.abs().max().item() <= bound
        std = layer.weight.detach().std().item()  # uniform on [-b, b): b / sqrt(3)
        assert std == pytest.approx(bound / math.sqrt(3), rel=0.15)


def test_no_seed_reaches_the_weight_initialisation() -> None:
    assert list(inspect.signature(cli_training.mlp).parameters) == ["sizes"]
    no_seed = argparse.Namespace(onnx=None, mlp="4,3")  # reading args.seed would fail
    model, _ = cli_training.initial_model(no_seed)
    assert _weights(model).numel() == 4 * 3 + 3
