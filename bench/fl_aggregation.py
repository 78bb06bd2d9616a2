"""Per-client cost of submitting one federated update, three ways, for two models.

Models: the HAR MLP Linear(561, 128) -> ReLU -> Linear(128, 6) (72,710
parameters) and SecureML Network A 784-128-128-10 (118,282 parameters).
The update is the model's flat weight vector (:func:`flatten_params`)
weighted by a sample count of 1000, as a client submits it; local training
is excluded. For each back end:

* ``mpc_shares``: fixed-point encode, additive sharing to 2 servers
  (:func:`ppml.proto.shares.share`, the MPC back end's client cost) and
  serialisation to the wire ``ShareTensor``; the aggregator figure is one
  server parsing and summing 4 clients' shares (the MPC job's clipping and
  noise come on top and are not measured here);
* ``ckks``: TenSEAL encryption with :data:`ppml.training.ckks.DEFAULT_PARAMS`
  and serialisation; the aggregator deserialises, sums 4 updates and
  serialises the sum; ``participant_decrypt_s`` is one participant's
  decryption of the sum;
* ``paillier``: ``phe`` with a 2048-bit modulus, timed on a subset of the
  values (``--paillier-values``, 200 by default) and **extrapolated linearly**
  to the whole vector; bytes are the 4096-bit ciphertexts plus a 4-byte
  exponent per value.

CPU time is ``time.process_time`` (all threads of this process); wall is
``time.perf_counter``; each figure is the median of ``--repeats`` runs.

**Server time on the real service** (``--service``, on by default): one
local cluster (2 servers + dealer, TLS) and four office identities; for each
model one round of a federation per back end (MPC without DP, MPC with
client-level DP, CKKS), the offices submitting small fixed updates; the
figure is the round's ``federate`` job time on the leader (its status
counters): for MPC the agreement, the sums, the opened total, the division
(and with DP the clipping and the noise) in MPC; for CKKS the leader's
ciphertext sum.

Run: ``.venv/bin/python bench/fl_aggregation.py --json bench/results/fl_aggregation.json``
(needs the bench extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import phe
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import network_a

from ppml.proto.shares import encode, reconstruct, share
from ppml.proto.wire.serde import share_from_proto, share_to_proto
from ppml.training import ckks
from ppml.training.federated import flatten_params

CLIENTS, SERVERS, SAMPLES = 4, 2, 1000
TARGETS = {"mpc_shares_client_s": 0.010, "ckks_client_s": 0.2}


def har_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(561, 128), torch.nn.ReLU(), torch.nn.Linear(128, 6))


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """Median (cpu seconds, wall seconds) over ``repeats`` calls, and the last result."""
    cpu, wall, result = [], [], None
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        result = fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall), result


def bench_shares(vector: np.ndarray, repeats: int) -> dict[str, Any]:
    def submit() -> list[bytes]:
        parts = share(encode(vector * SAMPLES), SERVERS)
        return [share_to_proto(p).SerializeToString() for p in parts]

    cpu, wall, wires = _timed(submit, repeats)
    per_server = [wires[0]] * CLIENTS  # what server 0 receives from 4 clients

    def server_sum() -> np.ndarray:
        from ppml.v1 import common_pb2

        parsed = [share_from_proto(common_pb2.ShareTensor.FromString(w)) for w in per_server]
        return reconstruct(parsed)  # a sum mod 2**64, exactly what summing shares is

    agg_cpu, agg_wall, _ = _timed(server_sum, repeats)
    return {
        "client_cpu_s": cpu,
        "client_wall_s": wall,
        "bytes_sent": sum(len(w) for w in wires),
        "aggregator_sum_4_cpu_s": agg_cpu,
        "aggregator_sum_4_wall_s": agg_wall,
    }


def bench_ckks(vector: np.ndarray, repeats: int) -> dict[str, Any]:
    keys = ckks.key_ceremony()
    participant = ckks.load_context(keys.participant_context)
    aggregator = ckks.load_context(keys.public_context)

    def submit() -> bytes:
        return ckks.serialize(ckks.encrypt_update(participant, vector, SAMPLES))

    cpu, wall, wire = _timed(submit, repeats)
    wires = [wire] * CLIENTS

    def aggregate() -> bytes:
        updates = [ckks.deserialize(w) for w in wires]
        return ckks.serialize(ckks.aggregate(aggregator, updates))

    agg_cpu, agg_wall, summed = _timed(aggregate, repeats)
    dec_cpu, dec_wall, average = _timed(
        lambda: ckks.decrypt_average(participant, ckks.deserialize(summed)), repeats
    )
    return {
        "client_cpu_s": cpu,
        "client_wall_s": wall,
        "bytes_sent": len(wire),
        "ciphertexts": -(-vector.size // ckks.DEFAULT_PARAMS.slots),
        "aggregator_sum_4_cpu_s": agg_cpu,
        "aggregator_sum_4_wall_s": agg_wall,
        "participant_decrypt_cpu_s": dec_cpu,
        "participant_decrypt_wall_s": dec_wall,
        "max_abs_error_vs_plaintext": float(np.max(np.abs(average - vector))),
    }


def bench_paillier(vectors: dict[str, np.ndarray], subset: int) -> dict[str, dict[str, Any]]:
    public, _ = phe.generate_paillier_keypair(n_length=2048)
    sample = next(iter(vectors.values()))[:subset] * SAMPLES
    c, w = time.process_time(), time.perf_counter()
    encrypted = [public.encrypt(float(v)) for v in sample]
    per_value_cpu, per_value_wall = (
        (time.process_time() - c) / subset,
        (time.perf_counter() - w) / subset,
    )
    value_bytes = (2 * 2048) // 8 + 4
    c, w = time.process_time(), time.perf_counter()
    for i in range(subset):
        total = encrypted[i]
        for _ in range(CLIENTS - 1):
            total = total + encrypted[i]
    add_cpu, add_wall = (time.process_time() - c) / subset, (time.perf_counter() - w) / subset
    return {
        name: {
            "client_cpu_s": per_value_cpu * v.size,
            "client_wall_s": per_value_wall * v.size,
            "bytes_sent": value_bytes * v.size,
            "aggregator_sum_4_cpu_s": add_cpu * v.size,
            "aggregator_sum_4_wall_s": add_wall * v.size,
            "extrapolated_from_values": subset,
        }
        for name, v in vectors.items()
    }


def _round_seconds(owner: Any, kind: str = "federate") -> tuple[int, float]:
    for cost in owner.status()[0].mpc_cost:
        if cost.kind == kind:
            return cost.jobs, cost.seconds
    return 0, 0.0


def bench_service() -> dict[str, dict[str, float]]:
    """One round per back end on a real local cluster: the leader's federate job time."""
    from ppml.client import Cluster
    from ppml.client.demo_federated import join_all, office_names
    from ppml.client.deploy.local import LocalCluster
    from ppml.proto.domain.federations import DpSettings

    names = office_names(CLIENTS)

    def nudge(model: torch.nn.Module, round_no: int) -> tuple[torch.nn.Module, int, float]:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        return model, SAMPLES, 0.5

    out: dict[str, dict[str, float]] = {}
    with (
        LocalCluster(parties=SERVERS, clients=names) as local,
        Cluster.from_config(local.config_path) as owner,
    ):
        for name, make in (("har_mlp_561_128_6", har_mlp), ("network_a", network_a)):
            model = make()
            sample = torch.zeros(1, next(model.parameters()).shape[1])
            figures: dict[str, float] = {}
            for label, backend, dp in (
                ("mpc_round_s", "mpc", None),
                ("mpc_dp_round_s", "mpc", DpSettings(1.0, 1.0)),
                ("ckks_round_s", "ckks", None),
            ):
                jobs0, seconds0 = _round_seconds(owner)
                handle = owner.create_federation(
                    model, names, rounds=1, backend=backend, dp=dp, sample_input=sample
                )
                context = handle.keys.participant_context if handle.keys else None
                join_all(local, handle.federation_id, {n: nudge for n in names}, 0,
                         ckks_context=context)  # fmt: skip
                handle.wait(timeout=300)
                jobs1, seconds1 = _round_seconds(owner)
                figures[label] = (seconds1 - seconds0) / max(1, jobs1 - jobs0)
            out[name] = figures
            print(name, json.dumps(figures), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paillier-values", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--service", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    vectors = {
        "har_mlp_561_128_6": flatten_params(har_mlp()),
        "network_a": flatten_params(network_a()),
    }
    paillier = bench_paillier(vectors, args.paillier_values)
    models: dict[str, Any] = {}
    for name, vector in vectors.items():
        models[name] = {
            "parameters": int(vector.size),
            "mpc_shares": bench_shares(vector, args.repeats),
            "ckks": bench_ckks(vector, args.repeats),
            "paillier": paillier[name],
        }
    service = bench_service() if args.service else {}
    for name, figures in service.items():
        models[name]["service"] = figures
    result = {
        "setup": {
            "clients": CLIENTS,
            "mpc_servers": SERVERS,
            "sample_count_weight": SAMPLES,
            "repeats_median_of": args.repeats,
            "ckks_params": {
                "poly_modulus_degree": ckks.DEFAULT_PARAMS.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(ckks.DEFAULT_PARAMS.coeff_mod_bit_sizes),
                "scale_bits": ckks.DEFAULT_PARAMS.scale_bits,
            },
            "paillier": {
                "n_length_bits": 2048,
                "gmpy2": importlib.util.find_spec("gmpy2") is not None,
                "note": f"timed on {args.paillier_values} values, extrapolated linearly",
            },
        },
        "models": models,
        "targets_s": TARGETS,
        "targets_met": {
            name: {
                "mpc_shares": m["mpc_shares"]["client_cpu_s"] <= TARGETS["mpc_shares_client_s"],
                "ckks": m["ckks"]["client_cpu_s"] <= TARGETS["ckks_client_s"],
            }
            for name, m in models.items()
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
