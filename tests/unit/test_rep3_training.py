"""Training on replicated shares (rep3.train, rep3.nonlinear): three parties as threads."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ppml.servers.mpc.fast.engine import Flatten, ModelSpec, ReLU
from ppml.servers.mpc.fast.linear import Conv2d, Linear
from ppml.servers.mpc.fast.prg import KeyedPRG, Ring
from ppml.servers.mpc.rep3 import engine, keys, metrics, nonlinear, patches, rss, train
from ppml.servers.mpc.rep3.local import QueueNet, mesh, run_three
from ppml.servers.mpc.rep3.rounds import Array, run
from ppml.training.batches import BatchPlan

RNG = KeyedPRG()
SCALE = 1 << 16


def split3(x: Ring) -> list[Ring]:
    s1, s2 = RNG.ring(x.shape), RNG.ring(x.shape)
    return [x - s1 - s2, s1, s2]


def encode(x: Array) -> Ring:
    return np.rint(np.asarray(x, dtype=np.float64) * SCALE).astype(np.int64)


def three(body: Callable[[keys.Correlated, QueueNet], Any]) -> tuple[list[Any], list[QueueNet]]:
    """Run ``body(corr, net)`` on each party after key agreement; results and nets."""
    nets = mesh()

    def party(i: int) -> Any:
        corr = run(nets[i], keys.agree(i))
        return body(corr, nets[i])

    return run_three([lambda i=i: party(i) for i in range(3)], timeout_s=300.0), list(nets)


def on_shares(op: Callable[[keys.Correlated, rss.Shared], Any], x: Array) -> tuple[Array, int]:
    """Open ``op`` applied to a sharing of the real array ``x``; also the rounds it took."""
    x_sh = split3(encode(x))

    def body(corr: keys.Correlated, net: QueueNet) -> tuple[Array, int]:
        xs = run(net, rss.reshare(corr, x_sh[corr.rank]))
        before = net.rounds
        out = run(net, op(corr, xs))
        used = net.rounds - before
        return run(net, rss.open_all(corr.rank, out)), used

    results, _ = three(body)
    assert all(np.array_equal(r[0], results[0][0]) for r in results)
    return results[0][0].astype(np.float64) / SCALE, max(r[1] for r in results)


def softmax(z: Array) -> Array:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    out: Array = e / e.sum(axis=-1, keepdims=True)
    return out


# --------------------------------------------------------------------------- nonlinear ops


def test_maximum_is_exact_with_ties_odd_widths_and_large_spreads() -> None:
    rng = np.random.default_rng(0)
    for k in (1, 2, 7, 10):
        x = rng.uniform(-300, 300, size=(50, k))
        x[0] = 5.0  # all tied
        x[1, -1] = 1e4  # the odd one out wins
        x[2] = -1e4
        got, used = on_shares(nonlinear.maximum, x)
        assert got.shape == (50, 1)
        assert np.array_equal(got[:, 0], encode(x).max(axis=1) / SCALE)
        assert used == 10 * int(np.ceil(np.log2(k)))  # sign 8 + select 2 per halving


def test_exp_is_within_its_bound_over_the_whole_range() -> None:
    n = nonlinear.EXP_SQUARINGS
    x = np.concatenate(
        [
            np.linspace(-(2.0**n), 0, 2001),
            [-2.0, -1.0, -(2.0**-16), 0.0, -(2.0**n)],
            -np.logspace(-4, 2, 200),
        ]
    )
    x = encode(x) / SCALE  # the values exactly as shared
    got, used = on_shares(nonlinear.exp_neg, x)
    bound = 4 * np.exp(-2) / 2**n + 2.0**-16 + 2.0 ** (n + 1 - 28)
    err = got - np.exp(x)
    assert np.abs(err).max() <= bound
    assert err.min() >= -bound and got.min() >= 0
    assert got[x == 0].min() == pytest.approx(1.0, abs=2**-15)
    assert used == 3 * n


@pytest.mark.parametrize(("lo", "hi"), [(1.0, 10.0), (0.5, 4.0)])
def test_reciprocal_is_within_its_bound_on_its_range(lo: float, hi: float) -> None:
    s = np.concatenate([np.linspace(lo, hi, 1500), [lo, hi, (lo + hi) / 2]])
    s = encode(s) / SCALE
    got, used = on_shares(lambda corr, xs: nonlinear.reciprocal(corr, xs, lo, hi), s)
    assert np.abs(got - 1 / s).max() <= nonlinear.reciprocal_error(lo, hi)
    assert used == 3 + 6 * nonlinear.RECIPROCAL_STEPS


def test_softmax_is_within_its_bound_and_takes_94_rounds_for_ten_classes() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, size=(200, 10)) * rng.uniform(0.1, 12, size=(200, 1))
    z[0] = 0.0  # uniform
    z[1] = [40.0] + [-60.0] * 9  # spread 100: one-hot
    z[2, :2] = 7.0  # two tied leaders
    got, used = on_shares(nonlinear.softmax, z)
    err = np.abs(got - softmax(encode(z) / SCALE))
    assert err.max() <= nonlinear.softmax_error(10)
    assert err.max() < 5e-3  # measured about 2e-3: the exp's underestimate near x = -2
    assert np.abs(got.sum(axis=1) - 1).max() < 2e-2
    assert used == 94


def test_log_is_within_its_bound_on_the_softmax_sums_range() -> None:
    s = encode(np.concatenate([np.linspace(1, 10, 1500), [1.0, 10.0, np.e]])) / SCALE
    got, used = on_shares(lambda corr, xs: nonlinear.log(corr, xs, 1.0, 10.0), s)
    assert np.abs(got - np.log(s)).max() <= nonlinear.log_error(1.0, 10.0)
    assert used == 3 + 27 * nonlinear.LOG_STEPS


def test_correct_count_counts_labels_at_the_maximum_ties_included() -> None:
    rng = np.random.default_rng(12)
    z = rng.normal(0, 3, (60, 10))
    z[0, :2] = 50.0  # tied maximum at classes 0 and 1
    labels = rng.integers(0, 10, 60)
    labels[0] = 1
    y_sh, z_sh = split3(encode(np.eye(10)[labels])), split3(encode(z))

    def body(corr: keys.Correlated, net: QueueNet) -> Ring:
        zs = run(net, rss.reshare(corr, z_sh[corr.rank]))
        ys = run(net, rss.reshare(corr, y_sh[corr.rank]))
        return run(net, metrics.correct_count(corr, zs, ys))

    shares, _ = three(body)
    assert all(s.shape == () for s in shares)
    zq = encode(z)  # the values as shared
    at_max = zq[np.arange(60), labels] == zq.max(axis=1)
    assert at_max[0] and zq[0].argmax() != labels[0]  # the tied row counts for either class
    assert sum(shares) == SCALE * int(at_max.sum())


# --------------------------------------------------------------------------- training


def _init(sizes: list[int], seed: int) -> tuple[list[Array], list[Array]]:
    """Public test weights (He-uniform), as a model owner would encode them (16 bits)."""
    rng = np.random.default_rng(seed)
    ws, bs = [], []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = np.sqrt(6 / fan_in)
        ws.append(encode(rng.uniform(-bound, bound, (fan_out, fan_in))) / SCALE)
        bs.append(encode(rng.uniform(-0.1, 0.1, fan_out)) / SCALE)
    return ws, bs


def _spec(sizes: list[int]) -> ModelSpec:
    layers: list[Any] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [Linear(fan_in, fan_out), ReLU()]
    return ModelSpec(tuple(layers[:-1]), (sizes[0],))


def _plain_step(
    ws: list[Array], bs: list[Array], x: Array, y: Array, sgd: train.Sgd, bufs: list[Array]
) -> None:
    """One float64 step of PyTorch's SGD, in place (``bufs``: momentum buffers, [] at first).

    The same ReLU convention as the engine: the gradient passes where ``z >= 0``.
    """
    inputs, masks, h = [], [], x
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        inputs.append(h)
        z = h @ w.T + b
        masks.append(z >= 0)
        h = z * masks[-1] if i < len(ws) - 1 else z
    g = (softmax(h) - y) / len(x)
    grads: list[Array] = [np.empty(0)] * (2 * len(ws))
    for i in reversed(range(len(ws))):
        grads[i], grads[len(ws) + i] = g.T @ inputs[i], g.sum(axis=0)
        if i:
            g = (g @ ws[i]) * masks[i - 1]
    params = ws + bs
    first = not bufs
    for k, (param, grad) in enumerate(zip(params, grads, strict=True)):
        d = grad + sgd.weight_decay * param
        if sgd.momentum:
            if first:
                bufs.append(d.copy())
            else:
                bufs[k] = sgd.momentum * bufs[k] + d
            d = bufs[k]
        param -= sgd.lr * d


def _predict(ws: list[Array], bs: list[Array], x: Array) -> Array:
    h = x
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        h = h @ w.T + b
        if i < len(ws) - 1:
            h = np.maximum(h, 0)
    out: Array = h.argmax(axis=1)
    return out


def _mpc_train(
    spec: ModelSpec,
    ws: list[Array],
    bs: list[Array],
    owners: list[tuple[Array, Array]],
    plan: BatchPlan,
    epochs: int,
    sgd: train.Sgd,
) -> tuple[list[Array], list[Array], list[QueueNet]]:
    """Each owner shares its rows; the three servers train; the trained model reconstructed."""
    w_sh = [split3(encode(w)) for w in ws]
    b_sh = [split3(encode(b)) for b in bs]
    x_sh = [split3(encode(x)) for x, _ in owners]
    y_sh = [split3(encode(y)) for _, y in owners]

    def body(corr: keys.Correlated, net: QueueNet) -> tuple[list[Ring], list[Ring | None]]:
        r = corr.rank
        model = run(net, engine.share_model(corr, spec, [w[r] for w in w_sh], [b[r] for b in b_sh]))
        x = np.concatenate([s[r] for s in x_sh])  # the owners' rows, share by share
        y = np.concatenate([s[r] for s in y_sh])
        trained = run(net, train.train(corr, spec, model, x, y, sgd=sgd, plan=plan, epochs=epochs))
        return train.export(corr, spec, trained)

    results, nets = three(body)
    w_out = [sum(r[0][i] for r in results) / SCALE for i in range(len(ws))]
    b_out = [sum(r[1][i] for r in results) / SCALE for i in range(len(bs))]
    return w_out, b_out, nets


def test_one_step_gradient_equals_plaintext() -> None:
    """With lr = 1, the weight change is minus the mean gradient (to fixed-point error)."""
    sizes = [20, 16, 16, 5]
    ws, bs = _init(sizes, seed=3)
    rng = np.random.default_rng(4)
    x = encode(rng.uniform(0, 1, (16, 20))) / SCALE
    y = np.eye(5)[rng.integers(0, 5, 16)]
    plan = BatchPlan(16, 16, seed=0)
    w1, b1, nets = _mpc_train(_spec(sizes), ws, bs, [(x, y)], plan, 1, train.Sgd(1.0))
    pw, pb = [w.copy() for w in ws], [b.copy() for b in bs]
    _plain_step(pw, pb, x[plan.indices(0)], y[plan.indices(0)], train.Sgd(1.0), [])
    for got, want, before in zip(w1 + b1, pw + pb, ws + bs, strict=True):
        grad_mpc, grad = before - got, before - want
        assert np.abs(grad).max() > 1e-3  # the step moved every layer
        # worst case max|h| * softmax_error(5); measured 5.5e-4 (gradients up to 0.33)
        assert np.abs(grad_mpc - grad).max() < 2e-3
    # party 1 is in every round: key agreement, model and data setup, then the step:
    # forward, softmax of 5 classes (maximum in 3 levels), backward with the updates alongside
    softmax_rounds = 3 * 10 + 3 * nonlinear.EXP_SQUARINGS + 27 + 3
    assert nets[1].rounds - 3 == (11 + 11 + 3) + softmax_rounds + (4 + 4 + 3)


def test_momentum_and_weight_decay_follow_pytorchs_sgd() -> None:
    sizes = [12, 8, 4]
    ws, bs = _init(sizes, seed=6)
    rng = np.random.default_rng(8)
    x = encode(rng.uniform(0, 1, (40, 12))) / SCALE
    y = np.eye(4)[rng.integers(0, 4, 40)]
    plan, sgd = BatchPlan(40, 8, seed=2), train.Sgd(0.5, momentum=0.9, weight_decay=0.05)
    w_mpc, b_mpc, nets = _mpc_train(_spec(sizes), ws, bs, [(x, y)], plan, 1, sgd)
    pw, pb = [w.copy() for w in ws], [b.copy() for b in bs]
    bufs: list[Array] = []
    for step in range(plan.batches_per_epoch):  # 5 steps
        _plain_step(pw, pb, x[plan.indices(step)], y[plan.indices(step)], sgd, bufs)
    plain_no_momentum = [w.copy() for w in ws], [b.copy() for b in bs]
    for step in range(plan.batches_per_epoch):
        rows = plan.indices(step)
        _plain_step(*plain_no_momentum, x[rows], y[rows], train.Sgd(0.5), [])
    for got, want, other in zip(
        w_mpc + b_mpc, pw + pb, plain_no_momentum[0] + plain_no_momentum[1], strict=True
    ):
        assert np.abs(got - want).max() < 5e-3
        assert np.abs(other - want).max() > 0.05  # momentum and decay made a difference
    # no round added: 5 steps of (forward, 4-class softmax, backward) after the setup
    step_rounds = (11 + 3) + (2 * 10 + 3 * nonlinear.EXP_SQUARINGS + 27 + 3) + (4 + 3)
    assert nets[1].rounds - 3 == 5 * step_rounds


def test_a_step_with_loss_reports_the_batchs_cross_entropy_and_takes_the_same_step() -> None:
    sizes = [10, 8, 5]
    spec = _spec(sizes)
    ws, bs = _init(sizes, seed=13)
    rng = np.random.default_rng(14)
    x = encode(rng.uniform(0, 1, (24, 10))) / SCALE
    y = np.eye(5)[rng.integers(0, 5, 24)]
    y[-1] = 0  # a padding row: no label, adds 0
    w_sh, b_sh = [split3(encode(w)) for w in ws], [split3(encode(b)) for b in bs]
    x_sh, y_sh = split3(encode(x)), split3(encode(y))

    def body(corr: keys.Correlated, net: QueueNet) -> tuple[Ring, list[Ring], int]:
        r = corr.rank
        model = run(net, engine.share_model(corr, spec, [w[r] for w in w_sh], [b[r] for b in b_sh]))
        xs, ys = run(net, train.share_data(corr, x_sh[r], y_sh[r]))
        before = net.rounds
        trained, _, loss = run(
            net, train.sgd_step_with_loss(corr, spec, model, xs, ys, train.Sgd(1.0))
        )
        return loss, train.export(corr, spec, trained)[0], net.rounds - before

    results, _ = three(body)
    logits = np.maximum(x @ ws[0].T + bs[0], 0) @ ws[1].T + bs[1]
    want = -np.sum(y * np.log(softmax(logits))) / len(x)
    assert abs(sum(r[0] for r in results) / SCALE - want) <= nonlinear.log_error(1.0, 5.0) + 1e-3
    pw, pb = [w.copy() for w in ws], [b.copy() for b in bs]
    _plain_step(pw, pb, x, y, train.Sgd(1.0), [])
    for i, want_w in enumerate(pw):
        assert np.abs(sum(r[1][i] for r in results) / SCALE - want_w).max() < 2e-3
    step = (11 + 3) + (3 * 10 + 3 * nonlinear.EXP_SQUARINGS + 27 + 3) + (4 + 3)
    assert max(r[2] for r in results) == step - (4 + 3) + (3 + 27 * nonlinear.LOG_STEPS + 2)


def test_digits_training_matches_plaintext_accuracy() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_all = encode(digits.data / 16.0) / SCALE
    y_all = np.eye(10)[digits.target]
    order = np.random.default_rng(7).permutation(len(x_all))
    train_rows, test_rows = order[:1200], order[1200:]
    x, y = x_all[train_rows], y_all[train_rows]
    owners = [(x[k::3], y[k::3]) for k in range(3)]  # three owners' rows, concatenated
    x, y = np.concatenate([o[0] for o in owners]), np.concatenate([o[1] for o in owners])
    sizes, sgd, epochs = [64, 32, 10], train.Sgd(0.5), 4
    plan = BatchPlan(len(x), 64, seed=11)  # 76 steps
    ws, bs = _init(sizes, seed=5)

    w_mpc, b_mpc, _ = _mpc_train(_spec(sizes), ws, bs, owners, plan, epochs, sgd)
    pw, pb = [w.copy() for w in ws], [b.copy() for b in bs]
    for step in range(epochs * plan.batches_per_epoch):
        rows = plan.indices(step)
        _plain_step(pw, pb, x[rows], y[rows], sgd, [])

    target = digits.target[test_rows]
    acc_mpc = float(np.mean(_predict(w_mpc, b_mpc, x_all[test_rows]) == target))
    acc_plain = float(np.mean(_predict(pw, pb, x_all[test_rows]) == target))
    assert acc_plain > 0.9  # the reference learned
    assert abs(acc_mpc - acc_plain) <= 0.02, (acc_mpc, acc_plain)
    moved = max(np.abs(a - b).max() for a, b in zip(pw, ws, strict=True))
    apart = max(np.abs(a - b).max() for a, b in zip(w_mpc, pw, strict=True))
    assert apart < 0.1 < moved, (apart, moved)


def test_training_refuses_logits_from_a_convolution_or_through_a_relu() -> None:
    conv_last = ModelSpec((Linear(16, 8), Conv2d(2, 2, 3, (2, 2), padding=1)), (16,))
    with pytest.raises(ValueError, match="Linear"):
        train.check_spec(conv_last)
    with pytest.raises(ValueError, match="logits"):
        train.check_spec(ModelSpec((Linear(4, 2), ReLU()), (4,)))


CONV = Conv2d(2, 3, 3, (6, 6), stride=2, padding=1)


def test_patches_match_the_convolution_and_their_adjoint_is_col2im() -> None:
    x = RNG.ring((4, *CONV.in_shape))
    w_t = RNG.ring((2 * 3 * 3, 3))
    conv_out = CONV.apply(x, w_t)
    assert np.array_equal(patches.out_rows(CONV, conv_out), patches.patches(CONV, x) @ w_t)
    cols = RNG.ring(patches.patches(CONV, x).shape)
    # <patches(x), cols> == <x, adjoint(cols)> in the ring
    left = np.sum(patches.patches(CONV, x) * cols)
    right = np.sum(x * patches.patches_adjoint(CONV, cols, 4))
    assert left == right


def test_one_step_gradient_of_a_cnn_equals_torch_autograd() -> None:
    import torch

    torch.manual_seed(9)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(3, 4, 2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 4),
    ).double()
    # the second convolution's input gradient goes through col2im to the first
    second = Conv2d(3, 4, 2, (3, 3))
    spec = ModelSpec((CONV, ReLU(), second, ReLU(), Flatten(), Linear(16, 4)), (2, 6, 6))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.from_numpy(encode(p.numpy()) / SCALE))
    weighted = [m for m in net if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    ws = [m.weight.detach().numpy().copy() for m in weighted]
    bs = [m.bias.detach().numpy().copy() for m in weighted]
    rng = np.random.default_rng(10)
    x = encode(rng.uniform(-1, 1, (16, 2, 6, 6))) / SCALE
    y = np.eye(4)[rng.integers(0, 4, 16)]
    w1, b1, _ = _mpc_train(spec, ws, bs, [(x, y)], BatchPlan(16, 16, seed=0), 1, train.Sgd(1.0))
    loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    for m, got_w, got_b, w0, b0 in zip(weighted, w1, b1, ws, bs, strict=True):
        assert m.weight.grad is not None and m.bias.grad is not None
        for got, before, grad in ((got_w, w0, m.weight.grad), (got_b, b0, m.bias.grad)):
            assert np.abs(grad.numpy()).max() > 1e-3
            assert np.abs((before - got) - grad.numpy()).max() < 2e-3


def test_what_a_party_receives_in_a_training_step_is_uniform_for_all_zero_inputs() -> None:
    """Every word a party receives in a step (forward, softmax, backward, update) looks uniform.

    This catches a value sent unmasked (a reshare without its zero share, a
    truncation without its mask); an opening sends uniform components and is
    ruled out by reading the protocol, not by this test.
    """
    sizes = [8, 6, 3]
    spec = _spec(sizes)
    zeros = [np.zeros((6, 8), np.int64), np.zeros(6, np.int64)]
    zeros += [np.zeros((3, 6), np.int64), np.zeros(3, np.int64)]
    nets = mesh()

    def party(i: int) -> None:
        corr = run(nets[i], keys.agree(i))
        model = run(nets[i], engine.share_model(corr, spec, zeros[0::2], zeros[1::2]))
        nets[i].received.clear()  # the key and the setup are not part of the step
        x, y = run(
            nets[i],
            train.share_data(corr, np.zeros((64, 8), np.int64), np.zeros((64, 3), np.int64)),
        )
        run(nets[i], train.sgd_step(corr, spec, model, x, y, train.Sgd(0.5)))

    run_three([lambda i=i: party(i) for i in range(3)])
    for rank, arrays in enumerate(n.received for n in nets):
        words = np.concatenate([a.reshape(-1).view(np.int64) for a in arrays])
        assert words.size > 5_000
        # an unmasked value here would be a small integer (inputs 0, probabilities 0.1, bits);
        # a uniform word is below 2^32 in size with probability 2^-31
        assert np.abs(words).min() >= 1 << 32, rank
        ones = np.unpackbits(words.view(np.uint8)).mean()
        assert abs(ones - 0.5) < 0.003, (rank, ones)
