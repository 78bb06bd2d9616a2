"""Pooling on the replicated engine (ppml.servers.mpc.rep3.pool), three parties as threads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from ppml.servers.mpc.fast.linear import Conv2d, Linear
from ppml.servers.mpc.fast.prg import KeyedPRG, Ring
from ppml.servers.mpc.rep3 import engine, keys, pool, rss
from ppml.servers.mpc.rep3.local import QueueNet, mesh, run_three
from ppml.servers.mpc.rep3.rounds import run

RNG = KeyedPRG()
SCALE = 1 << 16


def _split(x: Ring) -> list[Ring]:
    s1, s2 = RNG.ring(x.shape), RNG.ring(x.shape)
    return [x - s1 - s2, s1, s2]


def _three(body: Any) -> list[Any]:
    nets = mesh()

    def party(i: int) -> Any:
        corr = run(nets[i], keys.agree(i))
        return body(corr, nets[i])

    return run_three([lambda i=i: party(i) for i in range(3)])


def _encode(t: torch.Tensor) -> Ring:
    return np.rint(t.detach().double().numpy() * SCALE).astype(np.int64)


@pytest.mark.parametrize(
    ("kind", "kernel", "stride"), [("max", 2, 2), ("max", 3, 1), ("avg", 2, 2), ("avg", 3, 2)]
)
def test_pooling_matches_torch(kind: str, kernel: int, stride: int) -> None:
    x = torch.randn(3, 2, 7, 7) * 50
    x[0, 0, 0, :2] = torch.tensor([1e4, -1e4])  # large values and a tie-free spread
    spec = pool.Pool(kind, kernel, stride, (2, 7, 7))
    shares = _split(_encode(x))

    def body(corr: keys.Correlated, net: QueueNet) -> Ring:
        h = run(net, rss.reshare(corr, shares[corr.rank]))
        out = run(net, pool.apply(corr, spec, h))
        return run(net, rss.open_all(corr.rank, out))

    got = _three(body)[0].astype(np.float64) / SCALE
    torch_pool = torch.nn.MaxPool2d if kind == "max" else torch.nn.AvgPool2d
    want = torch_pool(kernel, stride)(x.double()).numpy()
    assert got.shape == want.shape == (3, *spec.out_shape)
    tolerance = 0 if kind == "max" else 2 / SCALE + kernel * kernel * 2.0**-17 * np.abs(want)
    assert np.all(np.abs(got - _encode(torch.from_numpy(want)) / SCALE) <= tolerance + 1e-12)


def test_a_cnn_with_max_and_average_pooling_matches_plaintext() -> None:
    torch.manual_seed(4)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32, 5),
    )  # fmt: skip
    chain = engine.Chain(
        (
            engine.Stage(Conv2d(1, 4, 3, (8, 8), 1, 1), "relu", pool.Pool("max", 2, 2, (4, 8, 8))),
            engine.Stage(Conv2d(4, 8, 3, (4, 4), 1, 1), "relu", pool.Pool("avg", 2, 2, (8, 4, 4))),
            engine.Stage(Linear(32, 5), "trunc"),
        ),
        (1, 8, 8),
    )
    weighted = [m for m in net if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    w_sh = [_split(_encode(m.weight)) for m in weighted]
    b_sh = [_split(_encode(m.bias)) for m in weighted]
    x = torch.rand(4, 1, 8, 8)
    x_sh = _split(_encode(x))

    def body(corr: keys.Correlated, net_: QueueNet) -> Ring:
        mine_w, mine_b = [w[corr.rank] for w in w_sh], [b[corr.rank] for b in b_sh]
        model = run(net_, engine.share_model(corr, chain, mine_w, mine_b))
        return run(net_, engine.forward(corr, chain, model, x_sh[corr.rank]))

    got = sum(_three(body)).astype(np.float64) / SCALE
    with torch.no_grad():
        assert np.abs(got - net(x).double().numpy()).max() < 1e-3
