"""A server's side of an evaluation on the replicated engine: a model's correct count, shared.

The ``evaluate`` kind (``servers/kinds/evaluate.py``) runs this in place of
the CrypTen path's :func:`~ppml.servers.mpc.training.trainer.evaluate` when
the cluster runs ``engine = "replicated"``: the stored model's shares are
made replicated (1 round), the data set's rows go through
:func:`~ppml.servers.mpc.rep3.engine.forward` in chunks of
:data:`CHUNK_ROWS`, and :func:`~ppml.servers.mpc.rep3.accuracy.count_correct`
turns each chunk's outputs and labels into shares of its correct count.
This server returns its share of the total; nothing is opened on the
servers, as on the CrypTen path (the caller adds the shares up and learns
the count only).
"""

from __future__ import annotations

import numpy as np

from ppml.proto.shares import Ring
from ppml.servers.mpc.rep3 import accuracy
from ppml.servers.mpc.rep3.engine import forward, share_model
from ppml.servers.mpc.rep3.rounds import run
from ppml.servers.mpc.rep3.service.party import CommNet, ReplicatedInference
from ppml.servers.store.models import LoadedModel

CHUNK_ROWS = 2048  # rows per forward: bounds memory, costs one forward's rounds per chunk


def evaluate(
    engine: ReplicatedInference, model: LoadedModel, features: Ring, labels: Ring, kind: str
) -> Ring:
    """This server's additive share (shape ``()``, 16 fractional bits) of the correct rows.

    ``features`` and ``labels`` are this server's shares of the data set,
    ``(rows, F)`` and ``(rows, classes)``. On the MPC worker, in lockstep.
    """
    fm = engine.model_for(model.meta.architecture)
    if fm is None:  # refused at upload on this cluster
        raise RuntimeError(f"model {model.meta.model_id!r} does not run on the replicated engine")
    net = CommNet()
    corr = engine.correlated(net)
    weights = [model.shares[f"{i}.weight"] for i in fm.layer_index]
    biases = [model.shares.get(f"{i}.bias") for i in fm.layer_index]
    shared = run(net, share_model(corr, fm.spec, weights, biases))
    rows = int(features.shape[0])
    total: Ring = np.zeros((), dtype=np.int64)
    for start in range(0, rows, CHUNK_ROWS):
        x = np.asarray(features[start : start + CHUNK_ROWS], dtype=np.int64)
        x = x.reshape(x.shape[0], *fm.spec.input_shape)
        out = run(net, forward(corr, fm.spec, shared, x)).reshape(x.shape[0], -1)
        y = np.asarray(labels[start : start + CHUNK_ROWS], dtype=np.int64)
        total = total + run(net, accuracy.count_correct(corr, out, y, kind))
    return total
