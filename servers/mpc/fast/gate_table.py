"""Every gate kind the fast engine runs, by name: the one table planning and the engine ask.

``relu``, ``trunc_top`` and ``trunc_top_wide`` (gates.py), and one spline gate per activation
(activations.py, spline.py). A gate kind is its ``kind`` name, ``rounds``
beyond the opening of its masked input, ``gen`` (dealer: key pairs for ``n``
instances) and ``eval`` (party: output shares from the opened input).
"""

from __future__ import annotations

from typing import Protocol

from ppml.servers.mpc.fast.activations import SPLINE_GATES, SPLINES
from ppml.servers.mpc.fast.gates import GATES as FIXED_GATES
from ppml.servers.mpc.fast.gates import Exchange, GateKey, GateParams
from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG, Ring
from ppml.servers.mpc.fast.spline import SplineBitGate


class GateKind(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def rounds(self) -> int: ...

    def gen(
        self,
        p: GateParams,
        n: int,
        rng: KeyedPRG,
        prg: FixedKeyPRG | None = ...,
        out_bits: int = ...,
    ) -> tuple[GateKey, GateKey]: ...

    def eval(
        self,
        p: GateParams,
        key: GateKey,
        opened: Ring,
        prg: FixedKeyPRG | None = ...,
        exchange: Exchange | None = ...,
    ) -> Ring: ...


SPLINE_BIT_GATES: dict[str, SplineBitGate] = {
    g.kind: g for g in (SplineBitGate(s) for s in SPLINES.values())
}
GATES: dict[str, GateKind] = {**FIXED_GATES, **SPLINE_GATES, **SPLINE_BIT_GATES}
