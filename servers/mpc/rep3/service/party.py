"""A server's side of replicated inference: links, pairwise keys and models, per session.

Runs on the MPC worker thread, inside the session, in lockstep with the
other two servers (``engine = "replicated"``: three servers, no dealer).

* Links (:class:`CommNet`): the session's CrypTen communicator (ppml's
  mutually authenticated TLS mesh); one raw frame per peer and round, no
  pickling. A broken link breaks the session, the job fails on every server
  and the leader starts a new epoch.
* Keys: on the first job of a session the servers agree on pairwise keys
  (:func:`ppml.servers.mpc.rep3.keys.agree`, one round); they die with it.
* Models: the first prediction with a stored model in a session reshares
  its weights into replicated form (one round) and keeps them. Every job
  starts with a one-byte *plan* from rank 0 (whether to set the model up),
  so the three decide alike even if their stored models differ for a while
  (an upload still landing on one server); a server whose stored model is
  not the one set up fails the job, and the next session starts afresh.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppml.proto.domain.architecture import Architecture
from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.servers.mpc.fast.prg import Ring
from ppml.servers.mpc.rep3 import engine, keys
from ppml.servers.mpc.rep3.rounds import Array, Expect, Received, pack, run, unpack
from ppml.servers.mpc.rep3.service.spec import Rep3Model, rep3_model


class CommNet:
    """:class:`ppml.servers.mpc.rep3.rounds.Net` over the session's CrypTen communicator."""

    def __init__(self) -> None:
        self._comm = crypten.communicator.get()
        self.rank: int = self._comm.get_rank()

    def exchange(self, send: dict[int, list[Array]], expect: dict[int, list[Expect]]) -> Received:
        if not send and not expect:
            return {}
        posted = [
            r for peer, arrays in send.items() for r in self._comm.post_frames([pack(arrays)], peer)
        ]
        got = {peer: unpack(self._comm.recv_frame(peer), specs) for peer, specs in expect.items()}
        for request in posted:
            request.wait()
        self._comm.comm_rounds += 1
        return got

    def send_plan(self, plan: bool) -> None:
        for peer in (1, 2):
            self._comm.send_obj(plan, peer)

    def recv_plan(self) -> bool:
        plan = self._comm.recv_obj(0)
        if type(plan) is not bool:
            raise RuntimeError("rank 0 sent a malformed replicated plan")
        return plan


@dataclass(frozen=True)
class ModelState:
    handle: Any  # the stored model (LoadedModel) whose shares were reshared
    model: engine.SharedModel


class ReplicatedInference:
    """Per server: which models the replicated engine runs, and the session's keys and models."""

    def __init__(self, max_models: int = 8) -> None:
        self._max_models = max_models
        self._corr: keys.Correlated | None = None
        self._models: OrderedDict[str, ModelState] = OrderedDict()
        self._specs: dict[Architecture, Rep3Model | None] = {}
        self._lock = threading.Lock()

    def model_for(self, architecture: Architecture) -> Rep3Model | None:
        """The engine's view of an architecture, or None if it has a layer the engine lacks."""
        with self._lock:
            if architecture not in self._specs:
                if len(self._specs) >= 256:  # a cache of public facts: start it afresh
                    self._specs.clear()
                self._specs[architecture] = rep3_model(architecture)
            return self._specs[architecture]

    def session_lost(self) -> None:
        self._corr = None
        self._models.clear()

    def correlated(self, net: CommNet) -> keys.Correlated:
        """The session's pairwise keys, agreed on first use (one round, every server alike)."""
        if self._corr is None:
            self._corr = run(net, keys.agree(net.rank))
        return self._corr

    def predict(self, net: CommNet, model_id: str, handle: Any, fm: Rep3Model, x: Ring) -> Ring:
        """This server's additive share of the outputs for its input share ``x``."""
        corr = self.correlated(net)
        state = self._models.get(model_id)
        # the stored model's metadata (with its upload time) tells a new upload from a reload
        current = state is not None and state.handle.meta == handle.meta
        if net.rank == 0:
            setup = not current
            net.send_plan(setup)
        else:
            setup = net.recv_plan()
            if not setup and not current:
                raise RuntimeError(f"model {model_id!r} is not the one set up on every server")
        if setup or state is None:
            shares = handle.shares
            weights = [shares[f"{i}.weight"] for i in fm.layer_index]
            biases = [shares.get(f"{i}.bias") for i in fm.layer_index]
            shared = run(net, engine.share_model(corr, fm.spec, weights, biases))
            state = ModelState(handle, shared)
            self._models[model_id] = state
            while len(self._models) > self._max_models:
                self._models.popitem(last=False)
        self._models.move_to_end(model_id)
        rows = int(x.shape[0])
        y = run(net, engine.forward(corr, fm.spec, state.model, np.asarray(x, dtype=np.int64)))
        return y.reshape(rows, *fm.output_shape)
