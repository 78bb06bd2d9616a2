"""A transformer's CrypTen layers against torch: approximation errors, and a BERT-tiny-like forward.

Runs on CrypTen between 2 parties + TTP (:func:`raw_crypten.launch_spmd`:
gloo on loopback, one thread each). Each layer kind of
``proto/domain/nonlinear_layers.py`` is built as its ``crypten.nn`` module
(exactly what a server runs) and fed party 0's public test inputs spanning
the range its docstring states, edges included; the error is the largest
absolute (LayerNorm: relative to the normalised value's size) difference
from the same layer's ``torch.nn`` module in float64. With ``--bert 1``,
one forward of ``training/transformer.py``'s ``bert_tiny_like()`` (sequence
128, hidden 128, 2 heads, FFN 512, 2 layers; random public weights) at
batch 1: party 0's time, rounds and bytes.

Run: ``.venv/bin/python bench/transformer_layers.py --bert 1 --json
bench/results/transformer_layers_run1.json``
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raw_crypten import _comm, _setup, launch_spmd, spmd_main


def _cases() -> list[tuple[str, Any, Any]]:
    """(name, layer, public input batch) per stated range."""
    import torch

    from ppml.proto.domain import layers

    gen = torch.Generator().manual_seed(0)  # public benchmark inputs
    line = torch.linspace(-12.0, 12.0, 4801).reshape(1, -1)
    rows = []
    for span in (4.0, 10.0, 20.0, 40.0):  # softmax rows of 8 and 128 entries spanning `span`
        for width in (8, 128):
            x = torch.rand(64, width, generator=gen) * span
            x[:, 0], x[:, 1] = 0.0, span  # the edges of the span in every row
            rows.append((f"Softmax span {span:g} width {width}", layers.Softmax(), x))
    norms = []
    for lo, hi in ((0.03, 0.1), (0.1, 10.0), (10.0, 150.0)):  # var + eps over the stated range
        var = torch.exp(torch.linspace(math.log(lo), math.log(hi), 2000)).reshape(-1, 1)
        sign = torch.tensor([1.0, -1.0] * 8)  # 16 values of mean 0 and variance var
        norms.append(
            (f"LayerNorm var [{lo:g}, {hi:g}]", layers.LayerNorm(16, 0.0), sign * var.sqrt())
        )
    return [
        ("GELU [-12, 12]", layers.GELU(), line),
        ("Tanh [-12, 12]", layers.Tanh(), line),
        ("Sigmoid [-12, 12]", layers.Sigmoid(), line),
        *rows,
        *norms,
    ]


def _error(name: str, got: Any, expected: Any) -> float:
    if name.startswith("LayerNorm"):  # relative to the normalised value (|value| = 1 here)
        return float(((got - expected).abs() / expected.abs().clamp(min=1e-9)).max())
    return float((got - expected).abs().max())


def _party_main(rank: int, bert: int, out: str) -> None:
    crypten = _setup()
    import torch

    crypten.init()
    result: dict[str, Any] = {"errors": {}}
    for name, layer, x in _cases():
        plain = layer.module(torch.nn).double()
        secret = layer.module(crypten.nn)
        secret.encrypted = True
        for pname in layer.params():
            value = getattr(plain, pname).detach().float()
            secret.set_parameter(pname, crypten.cryptensor(value, src=0))
        got = secret(crypten.cryptensor(x, src=0)).get_plain_text().double()
        with torch.no_grad():
            expected = plain(x.double())
        result["errors"][name] = _error(name, got, expected)
    if bert:
        result["bert"] = _bert(crypten)
    Path(f"{out}.rank{rank}").write_text(json.dumps(result))
    crypten.uninit()


def _bert(crypten: Any) -> dict[str, Any]:
    import torch

    from ppml.client.model_export import export_model
    from ppml.proto.domain.architecture import build_model
    from ppml.training.transformer import bert_tiny_like

    torch.manual_seed(0)  # public random weights and input
    model, x = bert_tiny_like(), torch.randn(1, 128, 128)
    architecture, weights = export_model(model, x)
    secret = build_model(architecture, crypten.nn)
    for index, module in enumerate(secret._modules.values()):
        for pname in architecture.layers[index].params():
            value = torch.from_numpy(weights[f"{index}.{pname}"]).float()
            module.set_parameter(pname, crypten.cryptensor(value, src=0))
        module.encrypted = True
    secret.encrypted = True
    secret.eval()
    shared = crypten.cryptensor(x, src=0)
    crypten.communicator.get().reset_communication_stats()
    start = time.perf_counter()
    got = secret(shared).get_plain_text().double()
    seconds = time.perf_counter() - start
    rounds, sent = _comm(crypten)
    with torch.no_grad():
        expected = model.eval()(x).double()
    return {
        "seconds": seconds,
        "rounds": rounds,
        "bytes": sent,
        "max_logit_error": float((got - expected).abs().max()),
        "layers": len(architecture.layers),
    }


def run(bert: int) -> dict[str, Any]:
    result: dict[str, Any] = launch_spmd(__file__, ["--bert", str(bert)], 3600.0)[0]
    return result


def summary(result: dict[str, Any]) -> str:
    lines = ["| layer, inputs | max error |", "| --- | --- |"]
    lines += [f"| {name} | {error:.2e} |" for name, error in result["errors"].items()]
    if "bert" in result:
        b = result["bert"]
        lines.append(
            f"\nBERT-tiny-like batch 1 ({b['layers']} layers): {b['seconds']:.2f} s, "
            f"{b['rounds']} rounds, {b['bytes'] / 1e6:,.1f} MB sent by party 0, "
            f"max logit error {b['max_logit_error']:.2e}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    spmd_main(
        __doc__ or "",
        [("bert", 0, "1: also time one BERT-tiny-like forward at batch 1")],
        _party_main,
        run,
        summary,
    )
