"""Federations from the SDK: create one (owner), join one (data owner), find them.

The architecture and settings travel in the clear; the initial weights are
secret-shared here (MPC back end) or encrypted under the federation's CKKS
context, made here by the creator, the key holder (CKKS back end).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import torch

from ppml.client.errors import InvalidFederation, from_rpc_error
from ppml.client.federation import Federation, JoinReport, Participant, TrainFn, data_trainer
from ppml.client.input_checks import check_rows
from ppml.client.model_export import ModelSource, export_model
from ppml.client.transport import ClusterBase, ServerStubs
from ppml.proto import shares
from ppml.proto.domain import federations as fed
from ppml.proto.wire import federations as fed_wire
from ppml.proto.wire import serde
from ppml.training import ckks
from ppml.v1 import federation_pb2


class FederationMixin(ClusterBase):
    """:class:`ppml.client.Cluster`'s federation methods."""

    def create_federation(
        self,
        model: ModelSource,
        participants: Sequence[str],
        *,
        rounds: int,
        local_epochs: int = 1,
        batch_size: int = 32,
        lr: float = 0.1,
        strategy: str = "fedavg",
        mu: float = 0.0,
        min_participants: int | None = None,
        round_deadline_s: float = 300.0,
        backend: str = "mpc",
        dp: fed.DpSettings | None = None,
        loss: str = "cross_entropy",
        name: str = "",
        model_id: str | None = None,
        federation_id: str | None = None,
        sample_input: torch.Tensor | None = None,
        ckks_keys: ckks.FederationKeys | None = None,
    ) -> Federation:
        """Create a federation on every server, starting from ``model``'s weights.

        ``participants`` are the identities invited to submit updates;
        ``min_participants`` (default: all) is the fewest a round may close
        with. ``dp`` turns on client-level DP (clipping and noise in MPC).
        With ``backend="ckks"`` this caller is the key holder: a fresh key
        pair is made here (or ``ckks_keys`` used), the servers get only the
        public context, and :attr:`Federation.keys` holds the participants'
        context, which must reach each participant over a channel of their
        own (see docs/architecture.md, "Federations").
        """
        if isinstance(participants, str):
            raise InvalidFederation("participants must be a list of identities")
        architecture, weights = export_model(model, sample_input)
        spec = fed.FederationSpec(
            participants=tuple(participants),
            rounds=rounds,
            local_epochs=local_epochs,
            batch_size=batch_size,
            lr=lr,
            strategy=strategy,
            mu=mu,
            min_participants=len(participants) if min_participants is None else min_participants,
            round_deadline_s=round_deadline_s,
            backend=backend,
            dp=dp or fed.DpSettings(),
            loss=loss,
        )
        federation_id = federation_id or uuid.uuid4().hex[:16]
        model_id = model_id or f"{federation_id}-model"
        public, initial = b"", b""
        per_server: list[dict[str, Any]] = [{} for _ in range(self.parties)]
        if backend == "ckks":
            ckks_keys = ckks_keys or ckks.key_ceremony()
            spec = fed.FederationSpec(
                **{**spec.__dict__, "ckks_fingerprint": ckks_keys.fingerprint}
            )
            ctx = ckks.load_context(ckks_keys.participant_context)
            public = ckks_keys.public_context
            initial = ckks.serialize(
                ckks.encrypt_update(ctx, fed.flatten(architecture, weights), 1.0)
            )
        else:
            per_server = shares.share_named(weights, self.parties)
        arch_msg = serde.architecture_to_proto(architecture)
        spec_msg = fed_wire.spec_to_proto(spec)

        def create(server: ServerStubs, rank: int) -> grpc.Future:
            request = federation_pb2.CreateFederationRequest(
                federation_id=federation_id,
                model_id=model_id,
                name=name,
                architecture=arch_msg,
                initial_parameters=serde.named_shares_to_proto(per_server[rank]),
                spec=spec_msg,
                ckks_public_context=public if rank == 0 else b"",
                ckks_initial_model=initial if rank == 0 else b"",
            )
            return server.federation.CreateFederation.future(
                request, timeout=self.timeout, metadata=self._metadata
            )

        self._call_all_or_undo(
            create,
            lambda server: server.federation.CancelFederation(
                federation_pb2.CancelFederationRequest(federation_id=federation_id),
                timeout=10,
                metadata=self._metadata,
            ),
        )
        return Federation(self, federation_id, ckks_keys)

    def federation(self, federation_id: str) -> Federation:
        """A handle of an existing federation."""
        return Federation(self, federation_id)

    def list_federations(self) -> list[fed.FederationInfo]:
        """The federations the leader (rank 0) knows, oldest first."""
        leader = self._servers[0]

        def list_leader() -> federation_pb2.ListFederationsResponse:
            try:
                return leader.federation.ListFederations(
                    federation_pb2.ListFederationsRequest(),
                    timeout=self.timeout,
                    metadata=self._metadata,
                )
            except grpc.RpcError as err:
                raise from_rpc_error(err, leader.name) from None

        reply = self._retry(list_leader)
        return [fed_wire.info_from_proto(i) for i in reply.federations]

    def join_federation(
        self,
        federation_id: str,
        data: TrainFn | tuple[Any, Any],
        *,
        num_classes: int | None = None,
        ckks_context: bytes | None = None,
        report_loss: bool = True,
        max_rounds: int | None = None,
        timeout: float | None = None,
        seed: int = 0,
        poll_s: float = 0.2,
    ) -> JoinReport:
        """Take part in a federation from this machine until it ends.

        ``data`` is ``(X, y)`` (trained with the federation's local SGD
        settings) or a function ``train(global_model, round) -> (model, rows,
        mean_loss | None)``. Rows never leave this machine; only the update
        does, as shares (or CKKS ciphertexts: pass the participants' context
        ``ckks_context``). ``max_rounds`` leaves after that many submissions.
        """
        if callable(data):
            train = data
        else:
            info = self.federation(federation_id).info()
            check_rows(info.architecture.input_shape, np.shape(data[0]), "the federation's model")
            classes = num_classes or int(info.architecture.output_shape[0])
            train = data_trainer(data[0], data[1], info.spec, classes, seed)
        participant = Participant(self, federation_id, train, ckks_context, report_loss, poll_s)
        return participant.run(max_rounds, timeout)
