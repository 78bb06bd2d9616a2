"""The steps of a fast-engine plan: the values one forward computes and how each is made.

:mod:`.graph` compiles a model into these; :mod:`.engine` runs them in order.
Values are numbered (value 0 is the model input) and each carries its
per-sample shape and fixed-point scale (:data:`F`: ``2^f``, :data:`FF`:
``2^(2f)``, :data:`FFF`: ``2^(3f)``, a quadratic spline's output, read only by
its truncation). Only :class:`Open`, :class:`Gate`, :class:`Maximum`, :class:`RowMax`,
:class:`Product` and :class:`Hadamard` exchange anything; the rest are local maps of each party's
own shares. The security and error argument per step is in graph.py.
"""

from __future__ import annotations

from dataclasses import dataclass

F, FF, FFF = 1, 2, 3  # scales 2^f, 2^(2f) and 2^(3f) (a quadratic spline's, graph.py)


@dataclass(frozen=True)
class Value:
    shape: tuple[int, ...]  # per sample
    scale: int  # F, FF or FFF


@dataclass(frozen=True)
class Open:
    """Public ``x^ = value[src] + masks[mask]``: one round."""

    src: int
    mask: int


@dataclass(frozen=True)
class Matmul:
    """``value[dst]`` = shares of ``F(W_layer, x)`` from the opened ``x^`` of ``mask`` (local)."""

    dst: int
    layer: int
    mask: int


@dataclass(frozen=True)
class Gate:
    """``value[dst] = gate(value[src] * (2^f if lift else 1))`` with key ``gates[gate]``."""

    dst: int
    src: int
    gate: int
    kind: str
    lift: bool


@dataclass(frozen=True)
class Sum:
    """``value[dst] = value[a] * 2^f^lift_a + value[b] * 2^f^lift_b`` (local)."""

    dst: int
    a: int
    b: int
    lift_a: bool
    lift_b: bool


@dataclass(frozen=True)
class Reshape:
    """``value[dst]`` = ``value[src]`` reshaped to its own shape (local)."""

    dst: int
    src: int


@dataclass(frozen=True)
class Permute:
    """``value[dst]`` = ``value[src]`` with its sample dims permuted (local)."""

    dst: int
    src: int
    perm: tuple[int, ...]


@dataclass(frozen=True)
class Product:
    """``value[dst] = value[a] @ value[b]`` with Beaver triple ``triples[triple]``: one round."""

    dst: int
    a: int
    b: int
    triple: int


@dataclass(frozen=True)
class Multiply:
    """``value[dst]`` = (``value[src]`` summed over ``axis`` unless None) * ``factor`` (local)."""

    dst: int
    src: int
    factor: int
    axis: int | None


@dataclass(frozen=True)
class AddParam:
    """``value[dst] = value[src] + params[param] * (2^f if lift else 1)`` (local)."""

    dst: int
    src: int
    param: int
    lift: bool


@dataclass(frozen=True)
class Average:
    """Window sums times ``factor = round(2^f / kernel^2)``: scale ``2^f`` to ``2^(2f)`` (local)."""

    dst: int
    src: int
    kernel: int
    stride: int
    factor: int


@dataclass(frozen=True)
class Maximum:
    """Tournament over each window, one ReLU gate per level (``gates``), scale ``2^f``."""

    dst: int
    src: int
    kernel: int
    stride: int
    gates: tuple[int, ...]


@dataclass(frozen=True)
class Hadamard:
    """``value[dst] = value[a] * value[b]`` element-wise (``b`` broadcast), triple ``triple``."""

    dst: int
    a: int
    b: int
    triple: int


@dataclass(frozen=True)
class RowMax:
    """Each row's maximum over the last axis (dropped): a tournament as :class:`Maximum`'s."""

    dst: int
    src: int
    gates: tuple[int, ...]


@dataclass(frozen=True)
class Center:
    """``value[dst] = value[src] - value[sub]`` broadcast along the last axis (local)."""

    dst: int
    src: int
    sub: int


@dataclass(frozen=True)
class Shift:
    """``value[dst] = value[src] + const`` (a public constant at the value's scale; local)."""

    dst: int
    src: int
    const: int


@dataclass(frozen=True)
class Load:
    """``value[dst]`` = ``params[param]`` for each sample (this party's share; local)."""

    dst: int
    param: int


@dataclass(frozen=True)
class Pick:
    """``value[dst]`` = entry ``index`` of ``value[src]``'s sample dim ``axis`` (local)."""

    dst: int
    src: int
    axis: int
    index: int


@dataclass(frozen=True)
class Join:
    """``value[dst]`` = ``value[a]`` and ``value[b]`` (each lifted as :class:`Sum`'s) along
    sample dim ``axis`` (local)."""

    dst: int
    a: int
    b: int
    axis: int
    lift_a: bool
    lift_b: bool


Step = (
    Open | Matmul | Gate | Sum | Reshape | Average | Maximum
    | Permute | Product | Multiply | AddParam | Hadamard | RowMax | Center | Shift | Load
    | Pick | Join
)  # fmt: skip
