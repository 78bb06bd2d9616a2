"""CKKS parameter sets, from a table, each checked against 128-bit security.

The Homomorphic Encryption Standard (Albrecht et al., 2018, table 1, secret
key uniform ternary) bounds the total coefficient modulus for 128-bit classical
security at each ring degree: :data:`MAX_LOG_Q_128`. Every set in
:data:`PARAM_SETS` sums its primes (the special prime included) below that
bound, and :func:`check_security` refuses anything else, whoever proposes it.

A set's *depth* is the number of rescales it allows: one per data prime after
the first. Each plaintext-weighted layer and each square uses one; a plan
deeper than its set is refused at registration (``plan.depth``).
"""

from __future__ import annotations

from dataclasses import dataclass

# log2(q) upper bounds for 128-bit classical security (HE standard, table 1)
MAX_LOG_Q_128: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


class ParamError(ValueError):
    """A CKKS parameter set is unknown or below 128-bit security."""


@dataclass(frozen=True)
class CkksParamSet:
    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]  # first data prime, rescale primes, special prime
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def log_q(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def headroom_bits(self) -> int:
        """Bits left above the scale at the last level: |value| must stay below 2**this."""
        return self.coeff_mod_bit_sizes[0] - self.scale_bits - 1


PARAM_SETS: dict[str, CkksParamSet] = {
    s.name: s
    for s in (
        # 5 levels: conv -> square -> linear -> square -> linear; logits below 2**9
        CkksParamSet("n8192-d5", 8192, (38, 28, 28, 28, 28, 28, 40), 28),
        # 8 levels at 2**40: deeper plans, about 4x the time and bytes
        CkksParamSet("n16384-d8", 16384, (50, 40, 40, 40, 40, 40, 40, 40, 40, 50), 40),
    )
}
DEFAULT_PARAM_SET = "n8192-d5"


def check_security(poly_modulus_degree: int, coeff_mod_bit_sizes: tuple[int, ...]) -> None:
    """Refuse a ring degree or modulus chain below 128-bit security."""
    bound = MAX_LOG_Q_128.get(poly_modulus_degree)
    if bound is None:
        raise ParamError(
            f"poly modulus degree {poly_modulus_degree} is not one of "
            f"{sorted(MAX_LOG_Q_128)}: no 128-bit bound is known for it"
        )
    total = sum(coeff_mod_bit_sizes)
    if total > bound:
        raise ParamError(
            f"a {total}-bit coefficient modulus at degree {poly_modulus_degree} is below "
            f"128-bit security (at most {bound} bits); use a parameter set from "
            f"{sorted(PARAM_SETS)}"
        )


def param_set(name: str) -> CkksParamSet:
    try:
        found = PARAM_SETS[name]
    except KeyError:
        known = sorted(PARAM_SETS)
        raise ParamError(f"unknown CKKS parameter set {name!r}; known: {known}") from None
    check_security(found.poly_modulus_degree, found.coeff_mod_bit_sizes)
    return found
