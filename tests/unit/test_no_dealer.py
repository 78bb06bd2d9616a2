"""Tests for ppml.servers.mpc.core.no_dealer: sessions without a dealer refuse CrypTen triples."""

from __future__ import annotations

import pytest

from ppml.servers.mpc.core import no_dealer
from ppml.servers.mpc.core.crypten_compat import crypten


def test_the_provider_is_registered_and_refuses_every_kind_of_randomness() -> None:
    no_dealer.install()
    no_dealer.install()  # idempotent
    provider = vars(crypten.mpc)["__SUPPORTED_PROVIDERS"][no_dealer.NAME]
    calls = [
        lambda: provider.generate_additive_triple((2,), (2,), "mul"),
        lambda: provider.square((2,)),
        lambda: provider.generate_binary_triple((2,), (2,)),
        lambda: provider.wrap_rng((2,)),
        lambda: provider.B2A_rng((2,)),
    ]
    for call in calls:
        with pytest.raises(no_dealer.NoDealerError, match="no dealer"):
            call()


def test_a_crypten_product_fails_under_it_instead_of_using_an_insecure_provider() -> None:
    no_dealer.install()
    before = crypten.cfg.mpc.provider
    crypten.cfg.mpc.provider = no_dealer.NAME
    try:
        assert not crypten.mpc.ttp_required()  # init dials no trusted third party
        assert (
            crypten.mpc.get_default_provider()
            is vars(crypten.mpc)["__SUPPORTED_PROVIDERS"][no_dealer.NAME]
        )
    finally:
        crypten.cfg.mpc.provider = before
