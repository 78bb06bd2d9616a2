"""The CKKS parameter table stays within the HE standard's 128-bit bounds."""

from __future__ import annotations

import pytest

from ppml.proto.he import seal_io
from ppml.proto.he.params import (
    MAX_LOG_Q_128,
    PARAM_SETS,
    ParamError,
    check_security,
    param_set,
)


@pytest.mark.parametrize("name", sorted(PARAM_SETS))
def test_every_set_is_within_the_128_bit_bound_and_seal_accepts_it(name: str) -> None:
    params = param_set(name)
    assert params.log_q <= MAX_LOG_Q_128[params.poly_modulus_degree]
    assert params.depth == len(params.coeff_mod_bit_sizes) - 2
    assert params.headroom_bits >= 8
    context = seal_io.seal_context(params)  # SEAL enforces TC128 itself
    assert context.parameters_set()


def test_a_chain_over_the_bound_is_refused() -> None:
    with pytest.raises(ParamError, match="below 128-bit security"):
        check_security(8192, (60, 40, 40, 40, 40, 60))  # 280 > 218 bits
    with pytest.raises(ParamError, match="no 128-bit bound"):
        check_security(12288, (40, 40))
    check_security(8192, (60, 40, 40, 60))  # 200 bits: fine


def test_an_unknown_set_is_refused() -> None:
    with pytest.raises(ParamError, match="unknown CKKS parameter set"):
        param_set("n4096-tiny")
