"""Federated aggregation under CKKS homomorphic encryption (TenSEAL).

**Key ceremony.** One participant, the federation's key holder, runs
:func:`key_ceremony`. It produces

* ``participant_context``: the context *with* the secret key, for every
  participant. It must travel only over an authenticated, encrypted channel
  to each participant (in the product, that participant's own TLS link;
  out of scope here) and never reach the aggregator;
* ``public_context``: parameters and public key only (no secret, relin or
  Galois keys: sums need none), for the aggregator;
* ``fingerprint``: SHA-256 of ``public_context`` (:func:`context_fingerprint`).

Each participant encrypts its sample-weighted update (:func:`encrypt_update`)
and tags it with the fingerprint; the aggregator checks the tags and sums
ciphertexts (:func:`aggregate`) without ever being able to decrypt; the
participants decrypt the sum and divide by the total weight
(:func:`decrypt_average`). A ciphertext made under another context would
decrypt to garbage without any error, hence the fingerprint. The public key
is part of the fingerprinted bytes, so two ceremonies with equal parameters
still differ. Sample counts travel in the clear (the aggregator needs the
total weight); in this mode they are public.

**Parameters** (:data:`DEFAULT_PARAMS`): poly modulus degree N = 8192 (4096
slots per ciphertext), coefficient moduli (60, 40, 60) bits, scale 2**40.
Aggregation only adds ciphertexts and the weights are applied in plaintext
before encryption, so no multiplicative level is needed: one 60-bit and one
40-bit data prime (plus the 60-bit special prime) give a 100-bit data
modulus, so a decoded value is exact up to noise while ``|sum| * 2**40 <
2**99``, i.e. ``|sum| < 2**59``. Each weighted value is limited to
:data:`MAX_WEIGHTED_ABS` = 2**40, so sums of up to 2**18 updates fit (the
pilot's 16 updates with ``|w| < 100`` and thousands of rows each use about
2**22). 160 bits total is below the 218 bits the Homomorphic Encryption
Standard allows at N = 8192 for 128-bit security. The (60, 40, 40, 60) chain
would add a multiplicative level that aggregation never uses, at ~35% more
bytes and time. Measured absolute error of a decrypted sum: ~1e-7 or less;
:func:`decrypt_average` then rounds to a grid of 2**-20.

**Decryption results** must not be handed back to whoever holds the
ciphertexts with full precision: CKKS is not IND-CPA-D secure (Li and
Micciancio, 2021) and exact decryptions can reveal the secret key.
:func:`decrypt_average` therefore rounds to multiples of ``quantum``
(default 2**-20), far above the CKKS noise, which hides the noise term the
attack solves for. That is a heuristic mitigation, not a proof (noise
flooding would be); keep decrypted averages among the participants and give
the aggregator at most the rounded form.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import tenseal as ts

Floats = npt.NDArray[np.float64]
MAX_WEIGHTED_ABS = float(2**40)
MAX_SUMMANDS = 2**18
_MAGIC = b"PPMLCKK1"


class CkksError(ValueError):
    """A CKKS context, update or sum is unusable here; the message says why."""


class ContextMismatch(CkksError):
    """An update was encrypted under a different context than the receiver holds."""


@dataclass(frozen=True)
class CkksParams:
    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    scale_bits: int = 40

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2


DEFAULT_PARAMS = CkksParams()


@dataclass(frozen=True)
class FederationKeys:
    """The key holder's output; ``participant_context`` contains the secret key."""

    participant_context: bytes
    public_context: bytes
    fingerprint: str

    def __repr__(self) -> str:  # never print the secret key by accident
        return f"FederationKeys(fingerprint={self.fingerprint!r}, <contexts elided>)"


def public_context_bytes(ctx: ts.Context) -> bytes:
    """``ctx``'s parameters and public key only: what the aggregator gets."""
    return bytes(
        ctx.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
    )


def context_fingerprint(public_context: bytes) -> str:
    """SHA-256 (hex) of a public context's serialisation.

    The serialisation is deterministic, so the key holder, each participant
    (re-serialising its copy) and the aggregator all get the same value.
    """
    return hashlib.sha256(public_context).hexdigest()


def fingerprint_of(ctx: ts.Context) -> str:
    return context_fingerprint(public_context_bytes(ctx))


def key_ceremony(params: CkksParams = DEFAULT_PARAMS) -> FederationKeys:
    """Run by the key holder: a fresh key pair and the two serialised contexts."""
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    ctx.global_scale = float(2**params.scale_bits)
    public = public_context_bytes(ctx)
    secret = ctx.serialize(
        save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return FederationKeys(bytes(secret), public, context_fingerprint(public))


def load_context(data: bytes) -> ts.Context:
    """A context from :class:`FederationKeys` bytes (either kind)."""
    try:
        return ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError
        raise CkksError(f"not a TenSEAL context: {exc}") from None


@dataclass(frozen=True)
class EncryptedUpdate:
    """Ciphertexts of ``weight * update`` (or of a sum of ``count`` such updates).

    ``chunks`` are serialised CKKS vectors of at most ``slots`` values each,
    in order; together they hold ``length`` values. ``weight`` (the sample
    count, or the total for a sum) is public.
    """

    fingerprint: str
    length: int
    weight: float
    count: int
    chunks: tuple[bytes, ...]


def _slots(ctx: ts.Context) -> int:
    return int(ctx.seal_context().data.key_context_data().parms().poly_modulus_degree()) // 2


def encrypt_update(ctx: ts.Context, vector: npt.ArrayLike, weight: float) -> EncryptedUpdate:
    """Encrypt ``weight * vector`` (weight = the client's sample count) in chunks."""
    flat = np.asarray(vector, dtype=np.float64).reshape(-1)
    if weight <= 0:
        raise CkksError(f"weight must be > 0, got {weight}")
    if flat.size == 0 or not np.all(np.isfinite(flat)):
        raise CkksError("the update must be a non-empty vector of finite values")
    weighted = flat * float(weight)
    if float(np.max(np.abs(weighted))) > MAX_WEIGHTED_ABS:
        raise CkksError("weighted values must have magnitude <= 2**40 to sum exactly")
    slots = _slots(ctx)
    chunks = tuple(
        bytes(ts.ckks_vector(ctx, weighted[start : start + slots].tolist()).serialize())
        for start in range(0, flat.size, slots)
    )
    return EncryptedUpdate(fingerprint_of(ctx), int(flat.size), float(weight), 1, chunks)


def serialize(update: EncryptedUpdate) -> bytes:
    """Wire form: magic, a length-prefixed JSON header, then the chunks back to back."""
    header = json.dumps(
        {
            "fingerprint": update.fingerprint,
            "length": update.length,
            "weight": update.weight,
            "count": update.count,
            "chunks": [len(c) for c in update.chunks],
        }
    ).encode()
    return b"".join([_MAGIC, struct.pack("<I", len(header)), header, *update.chunks])


def deserialize(data: bytes) -> EncryptedUpdate:
    """Inverse of :func:`serialize`; raises :class:`CkksError` on malformed input."""
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
        raise CkksError("not a serialised encrypted update (bad magic)")
    (size,) = struct.unpack_from("<I", data, len(_MAGIC))
    start = len(_MAGIC) + 4
    try:
        header = json.loads(data[start : start + size])
        sizes = [int(n) for n in header["chunks"]]
        fields = (str(header["fingerprint"]), int(header["length"]))
        weight, count = float(header["weight"]), int(header["count"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CkksError(f"malformed update header: {exc}") from None
    offset = start + size
    if sum(sizes) != len(data) - offset or min(sizes, default=0) < 1:
        raise CkksError(f"chunk sizes {sum(sizes)} do not match {len(data) - offset} bytes")
    chunks = []
    for n in sizes:
        chunks.append(data[offset : offset + n])
        offset += n
    return EncryptedUpdate(fields[0], fields[1], weight, count, tuple(chunks))


def _check(ctx: ts.Context, update: EncryptedUpdate, what: str) -> None:
    expected = fingerprint_of(ctx)
    if update.fingerprint != expected:
        raise ContextMismatch(
            f"{what} was encrypted under context {update.fingerprint[:16]}..., "
            f"but this side holds context {expected[:16]}...; it belongs to another federation"
        )


def max_chunk_bytes(ctx: ts.Context) -> int:
    """The largest serialised fresh ciphertext ``ctx`` can produce (uncompressed, plus room).

    Two polynomials of N coefficients per data prime, 8 bytes each; the
    headers (TenSEAL's protobuf, SEAL's) fit in 64 KiB.
    """
    data = ctx.seal_context().data.first_context_data()
    degree = int(data.parms().poly_modulus_degree())
    primes = int(data.chain_index()) + 1  # data primes at the top of the chain
    return 2 * degree * primes * 8 + 64 * 1024


def check_chunks(ctx: ts.Context, update: EncryptedUpdate) -> None:
    """Parse every chunk of a fresh participant update under ``ctx``; raise if any is unusable.

    Invariants after it passes: the chunk count is ``ceil(length / slots)``;
    each chunk is at most :func:`max_chunk_bytes`, parses as a CKKS vector
    valid for ``ctx`` (SEAL checks every coefficient against its modulus),
    holds ``slots`` values (the last: the rest), is one fresh ciphertext of
    two polynomials in NTT form at the top of the modulus chain, at the
    context's scale. So :func:`aggregate` cannot fail on it. Cost: one parse
    per chunk (well under a millisecond at N = 8192), bounded by the model's
    size; the byte cap is checked before parsing.
    """
    _check(ctx, update, "the update")
    slots = _slots(ctx)
    expected = -(-update.length // slots) if update.length > 0 else 0
    if update.count != 1 or len(update.chunks) != expected or expected == 0:
        raise CkksError(
            f"{update.length} values need {expected} chunks of {slots}, "
            f"got {len(update.chunks)} (count {update.count})"
        )
    cap = max_chunk_bytes(ctx)
    top = ctx.seal_context().data.first_parms_id()
    scale = float(ctx.global_scale)
    for index, chunk in enumerate(update.chunks):
        if len(chunk) > cap:
            raise CkksError(f"chunk {index} is {len(chunk)} bytes, more than {cap}")
        try:
            vector = ts.ckks_vector_from(ctx, chunk)
            size = int(vector.size())
            ciphertexts = vector.data.ciphertext()
        except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError
            raise CkksError(
                f"chunk {index} is not a ciphertext under this context: {exc}"
            ) from None
        values = min(slots, update.length - index * slots)
        if size != values or len(ciphertexts) != 1:
            raise CkksError(f"chunk {index} holds {size} values, expected {values}")
        ct = ciphertexts[0]
        if ct.size() != 2 or not ct.is_ntt_form() or ct.parms_id() != top:
            raise CkksError(
                f"chunk {index} is not a fresh ciphertext at the top of the modulus chain"
            )
        if not math.isclose(float(ct.scale), scale, rel_tol=1e-9):
            raise CkksError(
                f"chunk {index} has scale 2^{math.log2(ct.scale):.2f}, expected {scale:g}"
            )


def aggregate(public_ctx: ts.Context, updates: Sequence[EncryptedUpdate]) -> EncryptedUpdate:
    """Sum encrypted updates; the aggregator's context must NOT hold a secret key.

    Invariants: every update carries the aggregator's context fingerprint and
    the same length and chunk count; the result's weight and count are the
    totals. Nothing is decrypted.
    """
    if public_ctx.has_secret_key():
        raise CkksError("the aggregator must hold only the public context, not the secret key")
    if not updates:
        raise CkksError("nothing to aggregate")
    first = updates[0]
    for i, update in enumerate(updates):
        _check(public_ctx, update, f"update {i}")
        if (update.length, len(update.chunks)) != (first.length, len(first.chunks)):
            raise CkksError(
                f"update {i} has {update.length} values in {len(update.chunks)} chunks, "
                f"update 0 has {first.length} in {len(first.chunks)}"
            )
    count = sum(u.count for u in updates)
    if count > MAX_SUMMANDS:
        raise CkksError(f"at most {MAX_SUMMANDS} updates fit in one sum, got {count}")
    summed = []
    for j in range(len(first.chunks)):
        acc = ts.ckks_vector_from(public_ctx, first.chunks[j])
        for update in updates[1:]:
            acc.add_(ts.ckks_vector_from(public_ctx, update.chunks[j]))
        summed.append(bytes(acc.serialize()))
    weight = float(sum(u.weight for u in updates))
    return EncryptedUpdate(first.fingerprint, first.length, weight, count, tuple(summed))


def decrypt_average(
    ctx: ts.Context,
    summed: EncryptedUpdate,
    total_weight: float | None = None,
    quantum: float | None = 2.0**-20,
) -> Floats:
    """Participant side: decrypt a sum and divide by the total weight.

    ``total_weight`` defaults to the weight the aggregator recorded. The
    result is rounded to multiples of ``quantum`` (see the module docstring;
    ``None`` keeps full precision, for local use only).
    """
    if not ctx.has_secret_key():
        raise CkksError("decryption needs the participants' context with the secret key")
    _check(ctx, summed, "the sum")
    weight = summed.weight if total_weight is None else float(total_weight)
    if weight <= 0:
        raise CkksError(f"total weight must be > 0, got {weight}")
    values = np.concatenate(
        [np.asarray(ts.ckks_vector_from(ctx, c).decrypt(), dtype=np.float64) for c in summed.chunks]
    )
    if values.size != summed.length:
        raise CkksError(f"chunks hold {values.size} values, the header says {summed.length}")
    average = values / weight
    if quantum is not None:
        average = np.round(average / quantum) * quantum
    return average
