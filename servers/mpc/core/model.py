"""Build a CrypTen model whose parameters are this party's shares.

No communication happens here: each party wraps its own shares with
``MPCTensor.from_shares``; together the parties hold the secret model.
"""

from __future__ import annotations

from typing import Any

import torch

from ppml.proto.domain import architecture as arch
from ppml.proto.shares import Ring
from ppml.servers.mpc.core.crypten_compat import crypten


def build_layers(architecture: arch.Architecture) -> list[Any]:
    """Plaintext CrypTen modules for each layer (parameters still public)."""
    return arch.build_modules(architecture, crypten.nn)


def build_shared_model(
    architecture: arch.Architecture, shares: dict[str, Ring], trainable: bool = False
) -> Any:
    """A CrypTen model (a Sequential, or a graph) whose parameters are MPCTensors over ``shares``.

    In eval mode, or in train mode with gradients on every parameter when
    ``trainable``.
    """
    from crypten.mpc import MPCTensor

    model = arch.build_model(architecture, crypten.nn)
    for index, module in enumerate(model._modules.values()):
        for name in architecture.layers[index].params():
            parameter = MPCTensor.from_shares(torch.from_numpy(shares[f"{index}.{name}"].copy()))
            parameter.requires_grad = trainable
            module.set_parameter(name, parameter)
        module.encrypted = True
    model.encrypted = True
    return model.train() if trainable else model.eval()


def parameter_shares(architecture: arch.Architecture, model: Any) -> dict[str, Ring]:
    """This party's shares of every parameter of a model from :func:`build_shared_model`."""
    out: dict[str, Ring] = {}
    for index, module in enumerate(model._modules.values()):
        for name in architecture.layers[index].params():
            out[f"{index}.{name}"] = getattr(module, name).share.numpy().copy()
    return out


class ModelCache:
    """Built CrypTen models of recently used stored models (MPC worker thread only).

    Keyed by the stored model's handle: a model deleted and re-uploaded under
    the same id is a new handle and is built afresh.
    """

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._models: dict[int, tuple[Any, Any]] = {}  # id(handle) -> (handle, model)

    def get(self, handle: Any) -> Any:
        cached = self._models.get(id(handle))
        if cached is not None and cached[0] is handle:
            return cached[1]
        model = build_shared_model(handle.meta.architecture, handle.shares)
        if len(self._models) >= self._size:
            self._models.pop(next(iter(self._models)))
        self._models[id(handle)] = (handle, model)
        return model
