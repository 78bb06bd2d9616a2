"""CKKS aggregation: matches the plaintext weighted average, rejects foreign contexts,
and the aggregator can never decrypt."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Sequence

import numpy as np
import pytest
import tenseal as ts
import torch

from ppml.training import ckks
from ppml.training.federated import (
    LocalResult,
    fedavg_plaintext,
    flatten_params,
    weighted_average,
)
from ppml.training.har import split_by_subject, synthetic_har

# CKKS error of a decrypted average measured ~1e-11; rounding to the 2**-20 grid adds 2**-21
RAW_TOLERANCE = 1e-6
ROUNDED_TOLERANCE = 2.0**-21 + RAW_TOLERANCE


@pytest.fixture(scope="module")
def keys() -> ckks.FederationKeys:
    return ckks.key_ceremony()


@pytest.fixture(scope="module")
def participant(keys: ckks.FederationKeys) -> ts.Context:
    return ckks.load_context(keys.participant_context)


@pytest.fixture(scope="module")
def aggregator(keys: ckks.FederationKeys) -> ts.Context:
    return ckks.load_context(keys.public_context)


def test_key_ceremony_splits_secret_and_public(
    keys: ckks.FederationKeys, participant: ts.Context, aggregator: ts.Context
) -> None:
    assert participant.has_secret_key()
    assert not aggregator.has_secret_key() and aggregator.is_public()
    assert not aggregator.has_relin_keys() and not aggregator.has_galois_keys()
    assert keys.fingerprint == hashlib.sha256(keys.public_context).hexdigest()
    assert keys.fingerprint == ckks.context_fingerprint(ckks.public_context_bytes(participant))
    assert keys.fingerprint == ckks.fingerprint_of(aggregator)
    assert keys.fingerprint != ckks.key_ceremony().fingerprint  # fresh keys, same parameters
    assert "participant_context=" not in repr(keys) and keys.fingerprint in repr(keys)


@pytest.mark.parametrize(("clients", "length"), [(4, 10_000), (16, 4096), (3, 1)])
def test_ckks_average_matches_plaintext_weighted_average(
    participant: ts.Context, aggregator: ts.Context, clients: int, length: int
) -> None:
    rng = np.random.default_rng(clients)
    updates = [rng.uniform(-100, 100, size=length) for _ in range(clients)]
    weights = rng.integers(1, 5000, size=clients).tolist()
    wires = [
        ckks.serialize(ckks.encrypt_update(participant, u, w))
        for u, w in zip(updates, weights, strict=True)
    ]
    summed = ckks.aggregate(aggregator, [ckks.deserialize(w) for w in wires])
    assert (summed.count, summed.weight, summed.length) == (clients, sum(weights), length)
    summed = ckks.deserialize(ckks.serialize(summed))
    expected = weighted_average(updates, weights)
    raw = ckks.decrypt_average(participant, summed, quantum=None)
    assert np.max(np.abs(raw - expected)) < RAW_TOLERANCE
    rounded = ckks.decrypt_average(participant, summed)
    assert np.max(np.abs(rounded - expected)) < ROUNDED_TOLERANCE
    assert np.array_equal(rounded, np.round(rounded * 2**20) / 2**20)


def test_chunks_follow_the_slot_count(participant: ts.Context) -> None:
    update = ckks.encrypt_update(participant, np.ones(2 * 4096 + 5), 7)
    assert len(update.chunks) == 3 and update.length == 8197 and update.weight == 7.0
    assert ckks.deserialize(ckks.serialize(update)) == update


def test_update_from_another_federation_is_rejected(
    participant: ts.Context, aggregator: ts.Context
) -> None:
    other = ckks.load_context(ckks.key_ceremony().participant_context)
    ours = ckks.encrypt_update(participant, np.ones(10), 1)
    theirs = ckks.encrypt_update(other, np.ones(10), 1)
    with pytest.raises(ckks.ContextMismatch, match="update 1 was encrypted under context"):
        ckks.aggregate(aggregator, [ours, theirs])
    summed = ckks.aggregate(aggregator, [ours])
    with pytest.raises(ckks.ContextMismatch, match="another federation"):
        ckks.decrypt_average(other, summed)


def test_aggregator_cannot_decrypt(participant: ts.Context, aggregator: ts.Context) -> None:
    summed = ckks.aggregate(aggregator, [ckks.encrypt_update(participant, np.arange(5.0), 2)])
    assert not aggregator.has_secret_key()
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(aggregator, summed.chunks[0]).decrypt()
    with pytest.raises(ckks.CkksError, match="secret key"):
        ckks.decrypt_average(aggregator, summed)
    assert np.allclose(ckks.decrypt_average(participant, summed), np.arange(5.0))


def test_aggregator_refuses_a_context_holding_the_secret_key(participant: ts.Context) -> None:
    update = ckks.encrypt_update(participant, np.ones(3), 1)
    with pytest.raises(ckks.CkksError, match="only the public context"):
        ckks.aggregate(participant, [update])


def test_malformed_and_inconsistent_updates(
    participant: ts.Context, aggregator: ts.Context
) -> None:
    short = ckks.encrypt_update(participant, np.ones(3), 1)
    long = ckks.encrypt_update(participant, np.ones(4), 1)
    with pytest.raises(ckks.CkksError, match="update 1 has 4 values"):
        ckks.aggregate(aggregator, [short, long])
    with pytest.raises(ckks.CkksError, match="nothing"):
        ckks.aggregate(aggregator, [])
    wire = ckks.serialize(short)
    for bad in (b"nonsense", wire[:-1], wire + b"x", wire.replace(b"fingerprint", b"fingerprinx")):
        with pytest.raises(ckks.CkksError):
            ckks.deserialize(bad)
    with pytest.raises(ckks.CkksError, match="2\\*\\*40"):
        ckks.encrypt_update(participant, np.array([2.0**31]), 1000)
    with pytest.raises(ckks.CkksError):
        ckks.encrypt_update(participant, np.array([np.nan]), 1)
    with pytest.raises(ckks.CkksError):
        ckks.load_context(b"not a context")


def test_fedavg_through_ckks_matches_plaintext_fedavg(
    participant: ts.Context, aggregator: ts.Context
) -> None:
    data, subjects = synthetic_har(400, seed=0)
    owners = [part for part, _ in split_by_subject(data, subjects, owners=4)]

    def encrypted(results: Sequence[LocalResult]) -> np.ndarray:
        wires = [
            ckks.serialize(ckks.encrypt_update(participant, r.delta, r.num_samples))
            for r in results
        ]
        summed = ckks.aggregate(aggregator, [ckks.deserialize(w) for w in wires])
        return ckks.decrypt_average(participant, summed)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(561, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6))

    via_ckks, _ = fedavg_plaintext(model(), owners, 2, 1, 32, 0.05, aggregate=encrypted)
    plain, _ = fedavg_plaintext(model(), owners, 2, 1, 32, 0.05)
    assert np.max(np.abs(flatten_params(via_ckks) - flatten_params(plain))) < 1e-4


def test_submitted_chunks_are_parsed_and_checked(
    keys: ckks.FederationKeys, participant: ts.Context, aggregator: ts.Context
) -> None:
    slots = ckks.DEFAULT_PARAMS.slots
    real = ckks.encrypt_update(participant, np.linspace(-1, 1, slots + 5), 3)
    ckks.check_chunks(aggregator, real)  # a real update passes
    random = dataclasses.replace(
        real, chunks=tuple(secrets.token_bytes(len(c)) for c in real.chunks)
    )
    with pytest.raises(ckks.CkksError, match="chunk 0 is not a ciphertext under this context"):
        ckks.check_chunks(aggregator, random)
    cases = {
        "need 2 chunks": dataclasses.replace(real, chunks=real.chunks[:1]),
        "count 2": dataclasses.replace(real, count=2),
        "chunk 1 holds 5 values, expected 6": dataclasses.replace(real, length=slots + 6),
        "more than": dataclasses.replace(real, chunks=(real.chunks[0], b"x" * 400_000)),
    }
    for match, bad in cases.items():
        with pytest.raises(ckks.CkksError, match=match):
            ckks.check_chunks(aggregator, bad)
    lower = ts.ckks_vector(participant, [1.0, 2.0]) * 0.5  # rescaled: one level down
    other_scale = ts.ckks_vector(participant, [1.0, 2.0], scale=2.0**30)
    for vector, match in ((lower, "top of the modulus chain"), (other_scale, "scale 2\\^30")):
        update = ckks.EncryptedUpdate(keys.fingerprint, 2, 1.0, 1, (bytes(vector.serialize()),))
        with pytest.raises(ckks.CkksError, match=match):
            ckks.check_chunks(aggregator, update)
