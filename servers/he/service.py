"""The CKKS inference service of one server: contexts, models, predictions.

Every request is checked before any evaluation: the model and the caller's
right to it, the layout, the caller's stored context and the fingerprint the
request names, the number of ciphertexts, and each ciphertext's size, level,
scale and shape. A refused request changes nothing stored. Evaluations run
one at a time (SEAL's bindings hold the GIL; a queue is fairer than
interleaving), each request's groups in turn; concurrent one-group requests of
one identity share an evaluation (:mod:`.batching`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from tenseal import sealapi

from ppml.proto.domain.status import HeModelServing
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.he import seal_io
from ppml.proto.he.layout import MODES
from ppml.proto.he.params import param_set
from ppml.servers.he.batching import Batcher
from ppml.servers.he.contexts import ContextStore
from ppml.servers.he.evaluate import CompiledPlan, EvalKeys
from ppml.servers.he.models import HeModel, HeModelRegistry
from ppml.servers.store.metrics import latency_summary

MAX_ROWS = 1024
_WINDOW = 4096


@dataclass
class HeStats:
    requests: int = 0
    errors: int = 0
    images: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))


@dataclass(frozen=True)
class HePrediction:
    ciphertexts: list[bytes]
    seconds: float
    first_row: int = 0  # where this request's rows start in the first group
    batch_requests: int = 1  # requests that shared the evaluation


def _bad(detail: str) -> PpmlError:
    return PpmlError(ErrorCode.INVALID_CIPHERTEXT, detail)


def max_ciphertext_bytes(set_name: str) -> int:
    """A fresh ciphertext uncompressed, plus SEAL's header: no valid one is larger."""
    p = param_set(set_name)
    return 2 * p.poly_modulus_degree * (len(p.coeff_mod_bit_sizes) - 1) * 8 + 4096


class HeService:
    def __init__(self, contexts: ContextStore, models: HeModelRegistry) -> None:
        self.contexts = contexts
        self.models = models
        self._run_lock = threading.Lock()
        self._batcher = Batcher(self._run_lock)
        self._stats_lock = threading.Lock()
        self._stats: dict[str, HeStats] = {}

    # -- predictions --------------------------------------------------------
    def predict(
        self,
        caller: str,
        model_id: str,
        layout: str,
        fingerprint: str,
        rows: int,
        blobs: list[bytes],
    ) -> HePrediction:
        start = time.perf_counter()
        label = model_id
        try:
            model = self.models.get(model_id, caller)
            result, first_row, requests = self._predict(
                caller, model, layout, fingerprint, rows, blobs
            )
        except PpmlError:
            self._record(label if self._known(model_id) else "(unknown)", 0, 0, 0, None)
            raise
        self._record(
            model_id, rows, sum(map(len, blobs)), sum(map(len, result)), time.perf_counter() - start
        )
        return HePrediction(result, time.perf_counter() - start, first_row, requests)

    def _known(self, model_id: str) -> bool:
        try:
            self.models.get(model_id, "")
        except PpmlError as e:
            return e.code != ErrorCode.MODEL_NOT_FOUND
        return True

    def _predict(
        self,
        caller: str,
        model: HeModel,
        layout: str,
        fingerprint: str,
        rows: int,
        blobs: list[bytes],
    ) -> tuple[list[bytes], int, int]:
        if layout not in MODES:
            raise PpmlError(
                ErrorCode.INVALID_ARGUMENT, f"layout must be one of {MODES}, not {layout[:20]!r}"
            )
        stored, keys = self.contexts.keys(caller, model.param_set)
        if fingerprint != stored:
            raise PpmlError(
                ErrorCode.CONTEXT_MISMATCH,
                f"the ciphertexts name context {fingerprint[:16]!r}, but your stored "
                f"{model.param_set} context is {stored[:16]!r}: encrypt under your own "
                "context (or upload it again)",
            )
        compiled = model.compiled[layout]
        params = compiled.params
        per_group = compiled.layout.images_per_group(params.slots)
        if not 1 <= rows <= MAX_ROWS:
            raise PpmlError(ErrorCode.INVALID_ARGUMENT, f"rows must be 1..{MAX_ROWS}, not {rows}")
        groups = -(-rows // per_group)
        expected = groups * compiled.layout.ciphertexts
        if len(blobs) != expected:
            raise _bad(
                f"{rows} rows in the {layout} layout take {groups} group(s) of "
                f"{compiled.layout.ciphertexts} ciphertext(s): {expected}, not {len(blobs)}"
            )
        limit = max_ciphertext_bytes(params.name)
        context = seal_io.seal_context(params)
        scale = 2.0**params.scale_bits
        cts = []
        for i, blob in enumerate(blobs):
            if len(blob) > limit:
                raise _bad(
                    f"ciphertext {i} is {len(blob)} bytes; at most {limit} under {params.name}"
                )
            try:
                ct = seal_io.load(sealapi.Ciphertext(), context, blob)
            except Exception as e:  # SEAL refuses untrusted bytes with several C++ exception types
                raise _bad(f"ciphertext {i} does not load under {params.name}: {e}") from None
            if ct.parms_id() != context.first_parms_id():
                raise _bad(
                    f"ciphertext {i} is not at the top level of {params.name} "
                    "(encrypt fresh; do not mod-switch)"
                )
            if ct.size() != 2 or not ct.is_ntt_form() or ct.is_transparent():
                raise _bad(f"ciphertext {i} is not a fresh two-part CKKS ciphertext")
            if not np.isclose(ct.scale, scale, rtol=0, atol=scale * 1e-9):
                raise _bad(
                    f"ciphertext {i} has scale 2^{np.log2(ct.scale):.2f}; "
                    f"{params.name} expects 2^{params.scale_bits}"
                )
            cts.append(ct)
        width = compiled.layout.ciphertexts
        if layout == "single" and groups == 1 and rows < per_group:
            shared = self._batcher.submit(
                (caller, model.model_id, fingerprint),
                cts[0],
                rows,
                per_group,
                lambda members: self._merged(compiled, members, keys),
            )
            return [shared.ciphertext], shared.first_row, shared.requests
        out = []
        with self._run_lock:
            for g in range(groups):
                result = compiled.run(cts[g * width : (g + 1) * width], keys)
                out.append(seal_io.to_bytes(result))
        return out, 0, 1

    def _merged(
        self,
        compiled: CompiledPlan,
        members: list[tuple[sealapi.Ciphertext, int]],
        keys: EvalKeys,
    ) -> bytes:
        """Members' ciphertexts moved to their regions, summed, evaluated once."""
        evaluator = compiled.evaluator
        total = members[0][0]
        for ct, offset in members[1:]:
            moved = sealapi.Ciphertext()
            evaluator.rotate_vector(ct, -offset * compiled.layout.region, keys.galois, moved)
            evaluator.add_inplace(total, moved)
        return seal_io.to_bytes(compiled.run([total], keys))

    # -- metrics ------------------------------------------------------------
    def _record(
        self, model_id: str, images: int, bytes_in: int, bytes_out: int, seconds: float | None
    ) -> None:
        with self._stats_lock:
            stats = self._stats.setdefault(model_id, HeStats())
            stats.requests += 1
            if seconds is None:
                stats.errors += 1
                return
            stats.images += images
            stats.bytes_in += bytes_in
            stats.bytes_out += bytes_out
            stats.latencies_ms.append(seconds * 1000.0)

    def serving(self) -> list[HeModelServing]:
        """The status report's CKKS figures, one per model id, sorted by id."""
        with self._stats_lock:
            return [
                HeModelServing(
                    model_id=model_id,
                    requests=s.requests,
                    errors=s.errors,
                    images=s.images,
                    latency=latency_summary(s.latencies_ms),
                    bytes_in=s.bytes_in,
                    bytes_out=s.bytes_out,
                )
                for model_id, s in sorted(self._stats.items())
            ]
