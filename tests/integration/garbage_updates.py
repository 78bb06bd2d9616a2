"""A participant sending a real update's shares with a garbage weight share (federation tests)."""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from ppml.client import Cluster
from ppml.proto import shares
from ppml.proto.wire import serde
from ppml.v1 import federation_pb2


def submit_garbage_weight(
    cluster: Cluster, fid: str, round_no: int, update: dict[str, np.ndarray]
) -> None:
    """A real update's shares, but the weight share is random bytes on every server."""
    per_server = shares.share_named(update, cluster.parties)

    def send(server: Any, rank: int) -> Any:
        garbage = np.frombuffer(secrets.token_bytes(8), dtype=np.int64).copy()
        request = federation_pb2.SubmitUpdateRequest(
            federation_id=fid,
            round=round_no,
            update=serde.named_shares_to_proto(per_server[rank]),
            weight=serde.share_to_proto(garbage),
        )
        return server.federation.SubmitUpdate.future(
            request, timeout=30, metadata=cluster._metadata
        )

    cluster._call_all(send)
