"""KeyedGenerator (AES-256-CTR streams) and the one patch that keys CrypTen's randomness."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.servers.mpc.randomness import keyed_random, patches, prng
from ppml.servers.mpc.randomness.keyed_random import KeyedGenerator, random_kbit, random_ring

KEY = bytes(range(32))


def flip(key: bytes, bit: int) -> bytes:
    """``key`` read as a 256-bit big-endian integer, with ``bit`` flipped (0 = last bit)."""
    value = int.from_bytes(key, "big") ^ (1 << bit)
    return value.to_bytes(len(key), "big")


def bit_frequencies(values: torch.Tensor) -> np.ndarray:
    """Fraction of ones in each of the 64 bit positions (0 = least significant)."""
    words = values.numpy().view(np.uint64)
    return np.array([((words >> np.uint64(b)) & np.uint64(1)).mean() for b in range(64)])


# ---------------------------------------------------------------- determinism and keys


def _calls(generator: KeyedGenerator) -> list[torch.Tensor]:
    return [
        generator.ring(3),
        generator.kbit((2, 5), 7),
        generator.ring(torch.Size([4, 1])),
        generator.kbit(1, 1),
        generator.ring(100_000),
    ]


def test_same_key_same_stream_for_the_same_calls() -> None:
    first, second = _calls(KeyedGenerator(KEY)), _calls(KeyedGenerator(KEY))
    for x, y in zip(first, second, strict=True):
        assert x.dtype == torch.int64
        assert torch.equal(x, y)


def test_consecutive_draws_continue_the_stream() -> None:
    whole = KeyedGenerator(KEY).ring(1000)
    pieces = KeyedGenerator(KEY)
    assert torch.equal(torch.cat([pieces.ring(1), pieces.ring(499), pieces.ring(500)]), whole)


@pytest.mark.parametrize("bit", [0, 1, 31, 32, 33, 40, 63, 64, 127, 128, 200, 255])
def test_keys_differing_in_one_bit_give_different_streams(bit: int) -> None:
    """Bits above 32 matter (torch's manual_seed drops them) and so does the last bit."""
    base = KeyedGenerator(KEY).ring(64)
    other = KeyedGenerator(flip(KEY, bit)).ring(64)
    assert not torch.equal(base, other)
    assert (base == other).float().mean().item() < 0.05


def test_keys_are_256_bits_from_the_os() -> None:
    keys = {KeyedGenerator().key for _ in range(100)}
    assert len(keys) == 100
    assert all(len(key) == 32 for key in keys)
    assert KeyedGenerator().key_bits == 256
    with pytest.raises(ValueError, match="32 bytes"):
        KeyedGenerator(bytes(16))


def test_repr_does_not_show_the_key() -> None:
    generator = KeyedGenerator(KEY)
    assert KEY.hex() not in repr(generator)
    assert "256-bit" in repr(generator)


@pytest.mark.parametrize("size", [0, (0,), (3, 0), (), (2, 3, 4), torch.Size([5])])
def test_shapes(size: object) -> None:
    out = KeyedGenerator(KEY).ring(size)
    expected = (size,) if isinstance(size, int) else tuple(size)  # type: ignore[arg-type]
    assert tuple(out.shape) == expected
    assert out.dtype == torch.int64


# ---------------------------------------------------------------- distribution


def test_ring_elements_are_uniform_over_the_whole_int64_range() -> None:
    values = KeyedGenerator().ring(1_000_000)
    frequencies = bit_frequencies(values)
    # each bit is a fair coin: std 0.0005 at 1e6 draws, so 0.003 is 6 sigma
    assert np.abs(frequencies - 0.5).max() < 0.003, frequencies
    assert values.min().item() < -(2**63) * 0.999
    assert values.max().item() > (2**63) * 0.999
    assert abs((values < 0).float().mean().item() - 0.5) < 0.003


@pytest.mark.parametrize("bits", [1, 2, 7, 8, 16, 31, 32, 33, 63])
def test_kbit_tensors_are_in_range_and_uniform(bits: int) -> None:
    values = KeyedGenerator().kbit(400_000, bits)
    assert values.min().item() >= 0
    assert values.max().item() < 2**bits
    frequencies = bit_frequencies(values)
    assert np.abs(frequencies[:bits] - 0.5).max() < 0.005, frequencies[:bits]
    assert (frequencies[bits:] == 0).all()
    if bits <= 8:  # chi-square over all 2^bits values
        counts = np.bincount(values.numpy(), minlength=2**bits)
        expected = len(values) / 2**bits
        chi2 = ((counts - expected) ** 2 / expected).sum()
        dof = 2**bits - 1
        assert chi2 < dof + 6 * np.sqrt(2 * dof) + 10, chi2


def test_kbit_64_is_the_ring_stream() -> None:
    assert torch.equal(KeyedGenerator(KEY).kbit(50, 64), KeyedGenerator(KEY).ring(50))


@pytest.mark.parametrize("bits", [0, 65, -1])
def test_kbit_rejects_bad_widths(bits: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.64"):
        KeyedGenerator(KEY).kbit(3, bits)


# ---------------------------------------------------------------- CrypTen drop-ins


def test_drop_ins_draw_from_the_keyed_generator_given() -> None:
    assert torch.equal(
        random_ring((4, 2), generator=KeyedGenerator(KEY)), KeyedGenerator(KEY).ring((4, 2))
    )
    assert torch.equal(
        random_kbit(torch.Size([9]), bitlength=3, generator=KeyedGenerator(KEY), device="cpu"),
        KeyedGenerator(KEY).kbit(9, 3),
    )
    assert torch.equal(random_kbit(5, generator=KeyedGenerator(KEY)), KeyedGenerator(KEY).ring(5))


def test_drop_ins_refuse_torch_generators_and_other_rings() -> None:
    mersenne = torch.Generator()  # public-only kind of generator: must be refused for secrets
    with pytest.raises(TypeError, match="KeyedGenerator"):
        random_ring((3,), generator=mersenne)
    with pytest.raises(TypeError, match="KeyedGenerator"):
        random_kbit((3,), bitlength=1, generator=mersenne)
    with pytest.raises(ValueError, match="Z_2"):
        random_ring((3,), ring_size=2**32, generator=KeyedGenerator(KEY))


@pytest.fixture
def installed() -> Iterator[None]:
    patches.install()
    yield
    patches.uninstall()
    prng.clear_generators()


def test_install_patches_every_copy_of_the_rng_names(installed: None) -> None:
    import crypten.common.rng as rng
    import crypten.mpc.primitives.arithmetic as arithmetic
    import crypten.mpc.primitives.binary as binary
    import crypten.mpc.provider.tfp_provider as tfp
    import crypten.mpc.provider.ttp_provider as ttp

    for module in (rng, arithmetic, ttp, tfp):
        assert module.generate_random_ring_element is random_ring
    for module in (rng, binary, ttp, tfp):
        assert module.generate_kbit_random_tensor is random_kbit
    assert crypten._setup_prng is prng.setup_keyed_prng
    assert crypten._sync_seeds is prng.refuse_manual_seeds
    assert ttp.TTPClient._TTPClient__TTPClient._setup_generators is prng.receive_dealer_key
    assert ttp.TTPServer._setup_generators is prng.deal_party_keys
    assert patches.is_installed()


def test_install_is_idempotent_and_uninstall_restores() -> None:
    import crypten.common.rng as rng

    original = rng.generate_random_ring_element
    patches.install()
    patches.install()
    assert rng.generate_random_ring_element is random_ring
    patches.uninstall()
    assert rng.generate_random_ring_element is original
    assert not patches.is_installed()


def test_without_a_keyed_local_generator_secrets_are_refused(installed: None) -> None:
    prng.clear_generators()
    with pytest.raises(RuntimeError, match=r"crypten\.init"):
        crypten.common.rng.generate_random_ring_element((2,))


def test_the_local_generator_serves_generator_none(installed: None) -> None:
    local = KeyedGenerator(KEY)
    crypten.generators["local"][torch.device("cpu")] = local
    drawn = crypten.mpc.primitives.binary.generate_kbit_random_tensor((6,), bitlength=5)
    assert torch.equal(drawn, KeyedGenerator(KEY).kbit(6, 5))


def test_manual_seeding_is_refused(installed: None) -> None:
    with (
        crypten.cfg.temp_override({"debug.debug_mode": True}),
        pytest.raises(RuntimeError, match="keyed"),
    ):
        crypten.manual_seed(1, 2, 3)  # refused: no public seed may key a secret stream


def test_key_tensor_round_trip() -> None:
    key = os.urandom(32)
    tensor = keyed_random.key_tensor(key)
    assert tensor.dtype == torch.uint8 and tensor.numel() == 32
    assert keyed_random.tensor_key(tensor) == key
    with pytest.raises(ValueError):
        keyed_random.tensor_key(torch.zeros(16, dtype=torch.uint8))
