"""Each patch in ppml.servers.mpc.core.crypten_compat (CrypTen 0.4.1 on torch 2.13)."""

from __future__ import annotations

import importlib
import io
import pickle
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from ppml.servers.mpc.core import crypten_compat
from ppml.servers.mpc.core.crypten_compat import csprng_seed, tensor_loader

_REGISTRATION = "torch.onnx._internal.registration"
_SIDE_EFFECTS: list[str] = []


def _record_side_effect(text: str) -> str:
    _SIDE_EFFECTS.append(text)
    return text


class Sneaky:
    """Unpickling this runs code: a safe loader must refuse it before that happens."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_record_side_effect, ("pwned",))


# ---------------------------------------------------------------- 1. import crypten


def test_crypten_imports_after_compat() -> None:
    import crypten
    import crypten.mpc
    import crypten.nn

    assert crypten_compat.crypten is sys.modules["crypten"]
    assert hasattr(crypten.nn, "from_onnx")
    assert hasattr(crypten.mpc, "MPCTensor")


def test_registration_stub_is_installed() -> None:
    stub = sys.modules[_REGISTRATION]
    module = importlib.import_module(_REGISTRATION)
    assert module is stub
    assert hasattr(stub, "registry")  # `from ... import registry` works at import time


@pytest.mark.parametrize("attribute", ["register", "is_registered_op", "get_function_group"])
def test_registry_stub_fails_loudly_when_used(attribute: str) -> None:
    registry = sys.modules[_REGISTRATION].registry
    with pytest.raises(RuntimeError, match="from_onnx") as excinfo:
        getattr(registry, attribute)
    assert "dynamo=False" in str(excinfo.value)


def test_installing_the_stub_twice_keeps_the_same_module() -> None:
    stub = sys.modules[_REGISTRATION]
    crypten_compat._install_registration_stub()
    assert sys.modules[_REGISTRATION] is stub


# ---------------------------------------------------------------- 2. tensor_loader


def _saved(obj: object) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize(
    "tensor",
    [torch.arange(6, dtype=torch.int64).reshape(2, 3), torch.randn(4), torch.tensor(3.5)],
)
def test_tensor_loader_loads_a_saved_tensor(tensor: torch.Tensor) -> None:
    loaded = tensor_loader(_saved(tensor))
    assert isinstance(loaded, torch.Tensor)
    assert loaded.dtype == tensor.dtype
    assert torch.equal(loaded, tensor)


def test_tensor_loader_loads_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save(torch.ones(3), path)
    assert torch.equal(tensor_loader(path), torch.ones(3))


@pytest.mark.parametrize(
    "obj", [{"w": torch.ones(2)}, [torch.ones(2)], (1, 2), 7], ids=["dict", "list", "tuple", "int"]
)
def test_tensor_loader_refuses_containers(obj: object) -> None:
    with pytest.raises(TypeError, match="expected a saved tensor"):
        tensor_loader(_saved(obj))


@pytest.mark.parametrize("kwargs", [{}, {"weights_only": False}])
def test_tensor_loader_never_unpickles_code(kwargs: dict[str, bool]) -> None:
    _SIDE_EFFECTS.clear()
    with pytest.raises((TypeError, pickle.UnpicklingError)):
        tensor_loader(_saved(Sneaky()), **kwargs)
    assert _SIDE_EFFECTS == []
    with pytest.raises((TypeError, pickle.UnpicklingError)):
        tensor_loader(_saved(nn.Linear(2, 2)), **kwargs)
    assert _SIDE_EFFECTS == []


# ---------------------------------------------------------------- 3. csprng_seed


def test_csprng_seed_is_a_distinct_int64() -> None:
    seeds = [csprng_seed() for _ in range(2000)]
    assert all(type(s) is int for s in seeds)
    assert all(-(2**63) <= s < 2**63 for s in seeds)
    assert len(set(seeds)) == len(seeds)
    assert any(s < 0 for s in seeds) and any(s > 0 for s in seeds)
    assert any(abs(s) > 2**62 for s in seeds)  # full range, not a small int
    torch.tensor(seeds, dtype=torch.int64)  # fits torch's seed type


def test_csprng_seed_uses_os_urandom(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake(n: int) -> bytes:
        calls.append(n)
        return b"\x80" + b"\x00" * (n - 1)

    monkeypatch.setattr(crypten_compat.os, "urandom", fake)
    assert csprng_seed() == -(2**63)
    assert calls == [8]


def test_csprng_seed_ignores_torch_seeding() -> None:
    torch.manual_seed(0)
    first = csprng_seed()
    torch.manual_seed(0)
    assert csprng_seed() != first


# ---------------------------------------------------------------- from_onnx


def test_from_onnx_builds_a_linear_relu_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    x = torch.randn(5, 4)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), path, dynamo=False, input_names=["input"], output_names=["output"]
        )
        with open(path, "rb") as handle:
            converted = crypten_compat.crypten.nn.from_onnx(handle)
    assert isinstance(converted, crypten_compat.crypten.nn.Module)
    params = sorted((tuple(p.shape) for p in converted.parameters()), key=len)
    assert params == [(3,), (3, 4)]
    with torch.no_grad():
        expected = model(x)
        converted.eval()
        actual = converted(x)  # plaintext forward, no MPC
    assert torch.allclose(actual, expected, atol=1e-6)


def test_decode_is_exact_for_negative_values() -> None:
    """CrypTen divides negative encodings by scale - 1: off by 1.0 for ~4 % of these."""
    crypten = crypten_compat.crypten
    encoder = crypten.encoder.FixedPointEncoder()
    values = torch.linspace(-3000.0, 3000.0, 120_001, dtype=torch.float64)
    encoded = (values * 65536).round().long()
    decoded = encoder.decode(encoded)
    assert decoded.dtype == torch.float32
    assert float((decoded.double() - encoded.double() / 65536).abs().max()) < 1e-3
    assert torch.equal(crypten.encoder.FixedPointEncoder(0).decode(encoded), encoded)
