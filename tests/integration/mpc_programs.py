"""One process of a secured MPC test session (run by ``mpc_cluster.py``).

    python mpc_programs.py CONFIG.json RANK SCENARIO [FIRST_EPOCH]

Compute parties run SCENARIO (``suite``, ``aggregate``, ``probe``, ``dpsgd``,
``clipserver`` (``mpc_clipping.py``) or ``fail``); the dealer (rank == world_size)
serves epoch after epoch with ppml's Dealer. Each process writes
``out/rank<R>.json`` when it ends, and marker files under ``out/`` that the
test waits on.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppml.servers.mpc import session
from ppml.servers.mpc.core import ttp_plan
from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.servers.mpc.dealer import Dealer, serve_epoch
from ppml.servers.mpc.network.mesh import Peer, SessionParams
from ppml.servers.mpc.network.tls_links import TlsIdentity
from ppml.servers.mpc.randomness.keyed_random import KeyedGenerator
from ppml.servers.mpc.training import standardize

SAMPLE = 8  # values drawn from each generator at the end, to compare partners


def params(config: dict, rank: int, epoch: int) -> SessionParams:
    names = config["names"]
    dial = config.get("dial", {}).get(str(rank), {})
    peers = []
    for peer, name in enumerate(names):
        address = dial.get(str(peer)) or config["listen"].get(str(peer))
        peers.append(Peer(name, *address) if address else Peer(name))
    cert, key = config["certs"][names[rank]]
    timeouts = config["timeouts"][epoch]
    return SessionParams(
        rank=rank,
        world_size=config["world_size"],
        peers=tuple(peers),
        identity=TlsIdentity(Path(config["ca"]), Path(cert), Path(key)),
        epoch=bytes.fromhex(config["epochs"][epoch]),
        timeout_s=timeouts[0],
        connect_timeout_s=timeouts[1],
    )


def describe(generator: Any) -> dict:
    """A generator's kind, key (or torch seed) and its next SAMPLE ring values."""
    if isinstance(generator, KeyedGenerator):
        return {
            "type": "KeyedGenerator",
            "key": generator.key.hex(),
            "bits": generator.key_bits,
            "sample": generator.ring(SAMPLE).tolist(),
        }
    if isinstance(generator, torch.Generator):
        draw = torch.randint(-(2**63), 2**63 - 1, (SAMPLE,), generator=generator)
        return {"type": "Generator", "seed": generator.initial_seed(), "sample": draw.tolist()}
    return {"type": type(generator).__name__}


def party_generators() -> dict:
    cpu = torch.device("cpu")
    found = {key: describe(crypten.generators[key][cpu]) for key in ("prev", "next", "local")}
    found["dealer"] = describe(crypten.mpc.provider.ttp_provider.TTPClient.get().generator)
    found["global"] = {"type": type(crypten.generators["global"][cpu]).__name__}
    return found


def data(seed: int, *shape: int, low: float = -2.0, high: float = 2.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(low, high, size=shape).astype(np.float32))


def _err(encrypted: Any, expected: torch.Tensor) -> float:
    return float((encrypted.get_plain_text() - expected).abs().max().item())


def ops_suite() -> dict[str, float]:
    """Max |MPC - plaintext| of CrypTen's public ops (every party runs this)."""
    enc = crypten.cryptensor
    x, y = data(1, 4, 6), data(2, 4, 6)
    y[0, :3] = x[0, :3]  # some equal entries for eq
    ex, ey = enc(x, src=0), enc(y, src=1)
    w = data(3, 6, 3)
    img, kernel = data(4, 1, 1, 6, 6), data(5, 2, 1, 3, 3)
    pos = data(6, 4, 6, low=0.5, high=3.0)
    epos = enc(pos, src=0)
    errors = {
        "add": _err(ex + ey, x + y),
        "mul": _err(ex * ey, x * y),
        "matmul": _err(ex.matmul(enc(w, src=1)), x @ w),
        "conv2d": _err(
            enc(img).conv2d(enc(kernel, src=1)), torch.nn.functional.conv2d(img, kernel)
        ),
        "lt": _err(ex < ey, (x < y).float()),
        "gt": _err(ex > ey, (x > y).float()),
        "eq": _err(ex == ey, (x == y).float()),
        "relu": _err(ex.relu(), x.relu()),
        "max": _err(ex.max(dim=1)[0], x.max(dim=1)[0]),
        "argmax": _err(ex.argmax(dim=1), torch.nn.functional.one_hot(x.argmax(1), 6).float()),
        "softmax": _err(ex.softmax(dim=1), x.softmax(dim=1)),
        "div": _err(ex / epos, x / pos),
        "reciprocal": _err(epos.reciprocal(), pos.reciprocal()),
        "sqrt": _err(epos.sqrt(), pos.sqrt()),
        "inv_sqrt": _err(epos.inv_sqrt(), pos.rsqrt()),
    }
    errors.update(backward())
    return errors


def backward() -> dict[str, float]:
    """Loss and gradients of a small crypten.nn model against torch's."""
    w1, b1, w2, b2 = data(7, 5, 6), data(8, 5), data(9, 3, 5), data(10, 3)
    x = data(11, 8, 6)
    target = torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float()
    plain = [torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)]
    layers = [crypten.nn.Linear(6, 5), crypten.nn.Linear(5, 3)]
    with torch.no_grad():
        for first, second in (plain, layers):
            first.weight.copy_(w1 * 0.3)
            first.bias.copy_(b1 * 0.1)
            second.weight.copy_(w2 * 0.3)
            second.bias.copy_(b2 * 0.1)
    model = crypten.nn.Sequential(layers[0], crypten.nn.ReLU(), layers[1])
    model.encrypt(src=0)
    model.train()
    output = model(crypten.cryptensor(x, src=0))
    loss = crypten.nn.CrossEntropyLoss()(output, crypten.cryptensor(target))
    model.zero_grad()
    loss.backward()
    plain_out = plain[1](plain[0](x).relu())
    plain_loss = torch.nn.functional.cross_entropy(plain_out, target.argmax(1))
    plain_loss.backward()
    return {
        "loss": abs(float(loss.get_plain_text().item()) - float(plain_loss.item())),
        "grad_w1": _err(layers[0].weight.grad, plain[0].weight.grad),
        "grad_w2": _err(layers[1].weight.grad, plain[1].weight.grad),
        "grad_b2": _err(layers[1].bias.grad, plain[1].bias.grad),
    }


def planned() -> tuple[list[dict[str, float]], list[int]]:
    """``backward`` three times in one planned section (``ttp_plan``): record, replay, replay.

    Returns each run's errors against torch and the rounds this party counted.
    """
    plans = ttp_plan.Plans()
    comm = crypten.communicator.get()
    errors, rounds = [], []
    for _ in range(3):
        before = comm.get_communication_stats()["rounds"]
        with plans.section("backward"):
            errors.append(backward())
        rounds.append(comm.get_communication_stats()["rounds"] - before)
    return errors, rounds


WIDE_STDS = (0.1, 1.0, 50.0, 300.0, 16_000.0, 100_000.0)  # the last two: variance 2.6e8, 1e10


def wide_columns(seed: int, rows: int = 300) -> np.ndarray:
    """Columns from std 0.1 to 1e5, and one of N(0, 1) with three outliers (public test data)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, size=(rows, len(WIDE_STDS) + 1)) * np.array([*WIDE_STDS, 1.0])
    x[:3, -1] = (5_000.0, -20_000.0, 70.0)
    return x + rng.uniform(-1000.0, 1000.0, size=x.shape[1])  # and a mean far from 0


def wide_variances(runs: int = 3) -> list[float]:
    """Largest relative error of the secret variance (``standardize.mean_square``), per run."""
    errors = []
    for run in range(runs):
        x = wide_columns(run)
        shared = crypten.cryptensor(torch.from_numpy(x.astype(np.float32)), src=0)
        centred = shared - shared.sum(0).div(x.shape[0])
        got = standardize.mean_square(centred).get_plain_text().double().numpy()
        expected = x.astype(np.float32).astype(np.float64).var(0)
        errors.append(float((np.abs(got - expected) / expected).max()))
    return errors


def public_opening(rank: int, config: dict) -> bool:
    """Rank 0 opens the fixed-point encoding of a known tensor to rank 1, in the clear."""
    comm = crypten.communicator.get()
    known = crypten.encoder.FixedPointEncoder().encode(data(config["marker_seed"], 64))
    if rank == 0:
        comm.send(known, 1)
        return True
    if rank == 1:
        return bool(torch.equal(comm.recv(torch.empty_like(known), 0), known))
    return True


def api_checks(rank: int) -> dict[str, bool]:
    """Each communicator call CrypTen may make, against its expected result."""
    comm = crypten.communicator.get()
    n = comm.get_world_size()
    mine = torch.full((3,), rank + 1, dtype=torch.int64)
    expected_sum = torch.full((3,), n * (n + 1) // 2, dtype=torch.int64)
    checks = {
        "identity": (comm.get_rank(), comm.get_ttp_rank()) == (rank, n)
        and comm.main_group == tuple(range(n))
        and comm.ttp_group == tuple(range(n + 1))
        and comm.ttp_comm_group == (0, n)
        and comm.ttp_initialized,
        "scatter": torch.equal(
            comm.scatter([torch.full((2,), r, dtype=torch.int64) for r in range(n)], 0),
            torch.full((2,), rank, dtype=torch.int64),
        ),
    }
    reduced = comm.reduce([mine, mine * 10], 1, batched=True)
    checks["reduce_batched"] = (
        reduced is None
        if rank != 1
        else torch.equal(reduced[0], expected_sum) and torch.equal(reduced[1], expected_sum * 10)
    )
    xor = comm.all_reduce(mine, op=torch.distributed.ReduceOp.BXOR)
    expected_xor = 0
    for r in range(n):
        expected_xor ^= r + 1
    checks["all_reduce_xor"] = bool((xor == expected_xor).all())
    floats = comm.all_reduce(torch.tensor([0.1 * (rank + 1), 1e-8 * rank], dtype=torch.float64))
    gathered = comm.all_gather(floats.view(torch.int64))  # bit-identical on every party
    checks["all_reduce_float_same_bits"] = all(torch.equal(g, gathered[0]) for g in gathered)
    gathered_0 = comm.gather(mine, 0)
    checks["gather"] = (
        [t.tolist() for t in gathered_0] == [[r + 1] * 3 for r in range(n)]
        if rank == 0
        else gathered_0 == [None]
    )
    batch = [torch.zeros(2, dtype=torch.int64), torch.zeros(3, 3)]
    if rank == n - 1:
        batch = [torch.tensor([7, 8]), torch.ones(3, 3)]
    comm.broadcast(batch, n - 1, batched=True)
    checks["broadcast_batched"] = batch[0].tolist() == [7, 8] and bool((batch[1] == 1).all())
    comm.barrier()
    sent = comm.isend(mine * 2, (rank + 1) % n)
    comm.send_obj({"from": rank}, (rank + 1) % n)
    first, second = torch.empty(3, dtype=torch.int64), torch.empty(3, dtype=torch.int64)
    prev = (rank - 1) % n
    receiving = comm.irecv(first, prev)
    obj = comm.recv_obj(prev)  # read after the posted receive, in order
    sent.wait()
    receiving.wait()
    checks["p2p_in_order"] = obj == {"from": prev} and first.tolist() == [2 * (prev + 1)] * 3
    comm.isend(mine, (rank + 1) % n).wait()
    later = comm.irecv(second, prev)
    checks["p2p_wait"] = later.wait() is not False and second.tolist() == [prev + 1] * 3
    shared = comm.broadcast_obj({"pi": 3.14} if rank == 0 else None, 0)
    checks["broadcast_obj"] = shared == {"pi": 3.14}
    return checks


def suite(config: dict, rank: int, out: Path) -> dict:
    import mpc_truncation  # beside this file

    session.join(params(config, rank, 0))
    try:
        result = {"opened": public_opening(rank, config), "api": api_checks(rank)}
        result["errors"] = ops_suite()
        result["planned_errors"], result["planned_rounds"] = planned()
        result["variance_errors"] = wide_variances()
        result["truncation"] = mpc_truncation.element_errors()
        if config["world_size"] == 2:
            result["truncation_training"] = mpc_truncation.large_activation_training()
        comm = crypten.communicator.get()
        result["backend"] = comm.get_distributed_backend()
        result["generators"] = party_generators()  # last: draws SAMPLE from each
        return result
    finally:
        session.leave()


AGG_SHAPES = {"0.weight": (6, 5), "0.bias": (6,)}  # a Linear(5, 6): 36 parameters


def aggregation_updates(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    """Public test updates (every party derives the same), norms from 0.3 to ~12."""
    rng = np.random.default_rng(seed)  # public: test fixtures, not secret randomness
    return [
        {n: rng.normal(0, 0.05 + 0.4 * k, s) for n, s in AGG_SHAPES.items()} for k in range(count)
    ]


def _party_shares(values: np.ndarray, rank: int, world: int, seed: int) -> np.ndarray:
    """This party's additive share of ``values``; masks from a public seed (test only)."""
    from ppml.proto import shares

    rng = np.random.default_rng(seed)  # public: test fixture shares, not secret randomness
    encoded = shares.encode(values)
    masks = [rng.integers(-(2**62), 2**62, encoded.shape, dtype=np.int64) for _ in range(world - 1)]
    if rank < world - 1:
        return masks[rank]
    return encoded - np.sum(np.stack(masks), axis=0) if masks else encoded


def aggregation(config: dict, rank: int, out: Path) -> dict:
    """DP aggregation repeated ``agg_repeats`` times on fixed updates: this party's
    shares of each noisy average and its own noise draws (for the test to check that
    no single party's draws determine the noise)."""
    from ppml.proto.domain.architecture import Architecture, Linear
    from ppml.servers.mpc.aggregation import aggregate as agg

    architecture = Architecture((Linear(5, 6, True),), (5,), (6,))
    world = config["world_size"]
    updates = aggregation_updates(7, config["agg_updates"])
    mine = [
        {n: _party_shares(u[n], rank, world, 1000 * k + i) for i, n in enumerate(sorted(u))}
        for k, u in enumerate(updates)
    ]
    ones = [_party_shares(np.ones(1), rank, world, 99 + k) for k in range(len(updates))]
    session.join(params(config, rank, 0))
    try:
        runs = []
        for repeat in range(config["agg_repeats"]):
            z = 0.0 if repeat == 0 else config["agg_noise_multiplier"]
            dp = agg.DpNoise(config["agg_clip"], z)
            result = agg.aggregate(architecture, mine, ones, dp)
            runs.append({"share": result.average.tolist(), "noise": result.own_noise.tolist()})
        plain = agg.aggregate(architecture, mine, ones, None)
        return {"runs": runs, "plain": plain.average.tolist(), "weight": plain.total_weight}
    finally:
        session.leave()


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)


def _square_relu(rank: int, seed: int) -> float:
    x = data(seed, 3, 4)
    return _err(
        (crypten.cryptensor(x, src=0) * crypten.cryptensor(x, src=1)).relu(), (x * x).relu()
    )


def probe(config: dict, rank: int, out: Path) -> dict:
    session.join(params(config, rank, 0))
    try:
        (out / f"joined-{rank}").touch()
        _wait_for(out / "go", 300)
        return {"error": _square_relu(rank, 5)}
    finally:
        session.leave()


def fail(config: dict, rank: int, out: Path, first: int) -> dict:
    """Epoch 0: compute until a peer dies. Epoch 1: compute, then rank 1 goes silent."""
    events: list[dict] = []
    for epoch in range(first, len(config["epochs"])):
        session.join(params(config, rank, epoch))
        iteration = 0
        try:
            while iteration < (10_000 if epoch == 0 else 3):
                if _square_relu(rank, iteration) > 1e-2:
                    raise AssertionError("wrong result")
                if iteration == 2:
                    (out / f"computing-{epoch}-{rank}").touch()
                iteration += 1
            events.append({"epoch": epoch, "ok": True, "iterations": iteration})
            if rank == 1:
                time.sleep(config["silence_s"])  # a silent (hung) peer
            else:
                started = time.time()
                try:
                    _square_relu(rank, 99)
                except RuntimeError as exc:
                    events.append({"epoch": epoch, "stalled_at": started, "error": str(exc)})
                    events[-1]["failed_at"] = time.time()
        except RuntimeError as exc:
            events.append({"epoch": epoch, "failed_at": time.time(), "error": str(exc)})
        finally:
            session.leave()
    return {"events": events}


def dpsgd(config: dict, rank: int) -> dict:
    import mpc_dpsgd  # beside this file

    session.join(params(config, rank, 0))
    try:
        return mpc_dpsgd.run(config["world_size"])
    finally:
        session.leave()


def clip_server(config: dict, rank: int, out: Path) -> dict:
    import mpc_clipping  # beside this file

    session.join(params(config, rank, 0))
    try:
        return mpc_clipping.serve(rank, config["world_size"], out)
    finally:
        session.leave()


def dealer(config: dict, rank: int, out: Path, first: int) -> dict:
    server = Dealer()
    epochs = []
    for epoch in range(first, len(config["epochs"])):
        try:
            reason = serve_epoch(server, params(config, rank, epoch))
        except RuntimeError as exc:  # the parties never came
            epochs.append({"epoch": epoch, "reason": f"no session: {exc}", "at": time.time()})
            continue
        gens = [describe(g) for g in getattr(server, "generators", [])]
        epochs.append({"epoch": epoch, "reason": reason, "at": time.time(), "generators": gens})
    return {"epochs": epochs, "requests": dict(server.requests)}


def main() -> None:
    config_path, rank, scenario = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    config = json.loads(config_path.read_text())
    out = Path(config["out"])
    torch.set_num_threads(1)
    if rank == config["world_size"]:
        result = dealer(config, rank, out, first)
    elif scenario == "suite":
        result = suite(config, rank, out)
    elif scenario == "aggregate":
        result = aggregation(config, rank, out)
    elif scenario == "probe":
        result = probe(config, rank, out)
    elif scenario == "dpsgd":
        result = dpsgd(config, rank)
    elif scenario == "clipserver":
        result = clip_server(config, rank, out)
    elif scenario == "truncation":
        import mpc_truncation  # beside this file

        session.join(params(config, rank, 0))
        try:
            result = mpc_truncation.large_activation_training()
        finally:
            session.leave()
    elif scenario == "checks":
        import mpc_job_checks  # beside this file

        result = mpc_job_checks.run(rank, config["world_size"], params(config, rank, 0), out)
    else:
        result = fail(config, rank, out, first)
    (out / f"rank{rank}-{first}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
