"""Run lowered operations (:mod:`.lower`) on SEAL ciphertexts.

Scales: every weight plaintext is encoded at the value of the prime the next
rescale divides by, so a linear layer's output keeps its input's scale
exactly; a square maps scale ``s`` to ``s^2 / q``. Baby-step rotations run at
the input's level, giant steps and folds after the rescale, one level lower
(cheaper). Plaintexts depend on the parameter set only, never on a client's
keys, so one :class:`CompiledPlan` serves every identity with that set; they
are encoded on first use and kept.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from tenseal import sealapi

from ppml.proto.he.layout import InputLayout, input_layout
from ppml.proto.he.params import CkksParamSet
from ppml.proto.he.plan import HePlan, PlanError
from ppml.proto.he.seal_io import seal_context
from ppml.servers.he.lower import LinearOp, Op, SquareOp, lower


@dataclass
class EvalKeys:
    relin: sealapi.RelinKeys
    galois: sealapi.GaloisKeys


class CompiledPlan:
    """A plan lowered for one layout and parameter set, with its plaintexts cached."""

    def __init__(self, plan: HePlan, params: CkksParamSet, mode: str) -> None:
        if plan.depth > params.depth:
            raise PlanError(
                f"the model needs {plan.depth} multiplicative levels (one per layer with "
                f"weights and one per square) but parameter set {params.name} has "
                f"{params.depth}; use fewer layers or a deeper set"
            )
        self.plan = plan
        self.params = params
        self.layout: InputLayout = input_layout(plan, mode, params.slots)
        self.ops: list[Op] = lower(plan, self.layout, params.slots)
        for op in self.ops:
            if isinstance(op, LinearOp) and not all(out.terms for out in op.outputs):
                raise PlanError(
                    "a layer (or a convolution channel) has only zero weights: "
                    "drop it or give it weights"
                )
        self.context = seal_context(params)
        self.encoder = sealapi.CKKSEncoder(self.context)
        self.evaluator = sealapi.Evaluator(self.context)
        self._cache: dict[tuple[object, ...], sealapi.Plaintext] = {}
        self._lock = threading.Lock()

    def rotations(self) -> int:
        return sum(op.rotations() for op in self.ops if isinstance(op, LinearOp))

    def run(self, inputs: list[sealapi.Ciphertext], keys: EvalKeys) -> sealapi.Ciphertext:
        """Evaluate on one group's input ciphertexts (validated by the caller)."""
        xs = inputs
        for index, op in enumerate(self.ops):
            if isinstance(op, SquareOp):
                for ct in xs:
                    self.evaluator.square_inplace(ct)
                    self.evaluator.relinearize_inplace(ct, keys.relin)
                    self.evaluator.rescale_to_next_inplace(ct)
            else:
                xs = [self._linear(index, op, o, xs, keys) for o in range(len(op.outputs))]
        out = xs[0]
        self.evaluator.mod_switch_to_inplace(out, self.context.last_parms_id())
        return out

    def warm(self) -> None:
        """Encode every plaintext now, following the levels and scales a request takes."""
        data = self.context.first_context_data()
        scale = 2.0**self.params.scale_bits
        for index, op in enumerate(self.ops):
            parms_id = list(data.parms_id())
            prime = float(data.parms().coeff_modulus()[-1].value())
            data = data.next_context_data()
            if isinstance(op, SquareOp):
                scale = scale * scale / prime
                continue
            for o, out in enumerate(op.outputs):
                for key, vec in out.terms.items():
                    self._plain((index, o, *key), vec, parms_id, prime)
                self._plain((index, o, "bias"), out.bias, list(data.parms_id()), scale)

    def _plain(
        self, key: tuple[object, ...], values: object, parms_id: list[int], scale: float
    ) -> sealapi.Plaintext:
        full = (*key, tuple(parms_id), scale)
        with self._lock:
            found = self._cache.get(full)
        if found is None:
            found = sealapi.Plaintext()
            self.encoder.encode(list(values), parms_id, scale, found)  # type: ignore[call-overload]
            with self._lock:
                self._cache[full] = found
        return found

    def _linear(
        self, index: int, op: LinearOp, o: int, xs: list[sealapi.Ciphertext], keys: EvalKeys
    ) -> sealapi.Ciphertext:
        ev = self.evaluator
        out = op.outputs[o]
        data = self.context.get_context_data(xs[0].parms_id())
        prime = float(data.parms().coeff_modulus()[-1].value())
        in_scale = xs[0].scale
        inner: dict[int, sealapi.Ciphertext] = {}
        by_input: dict[int, list[tuple[int, int]]] = {}
        for ic, g, b in out.terms:
            by_input.setdefault(ic, []).append((b, g))
        for ic, pairs in sorted(by_input.items()):
            rotated, at = xs[ic], 0
            for b, g in sorted(pairs):
                if b != at:
                    rotated, at = self._rot(rotated, b - at, keys), b
                pt = self._plain(
                    (index, o, ic, g, b), out.terms[(ic, g, b)], rotated.parms_id(), prime
                )
                term = sealapi.Ciphertext()
                ev.multiply_plain(rotated, pt, term)
                if g in inner:
                    ev.add_inplace(inner[g], term)
                else:
                    inner[g] = term
        for ct in inner.values():
            ev.rescale_to_next_inplace(ct)
            ct.scale = in_scale
        total = self._horner(inner, op.giant, keys)
        for step in op.fold:
            ev.add_inplace(total, self._rot(total, step, keys))
        bias = self._plain((index, o, "bias"), out.bias, total.parms_id(), total.scale)
        ev.add_plain_inplace(total, bias)
        return total

    def _rot(self, ct: sealapi.Ciphertext, steps: int, keys: EvalKeys) -> sealapi.Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.rotate_vector(ct, steps, keys.galois, out)
        return out

    def _horner(
        self, inner: dict[int, sealapi.Ciphertext], giant: int, keys: EvalKeys
    ) -> sealapi.Ciphertext:
        """sum_g rot(inner[g], g * giant), Horner-style: one rotation per unit of |g|."""
        ev = self.evaluator
        total: sealapi.Ciphertext | None = None
        for sign in (1, -1):
            side = sorted((g for g in inner if (g >= 0 if sign == 1 else g < 0)), key=abs)
            if not side:
                continue
            acc, at = inner[side[-1]], abs(side[-1])
            for g in reversed(side[:-1]):
                for _ in range(at - abs(g)):
                    acc = self._rot(acc, sign * giant, keys)
                ev.add_inplace(acc, inner[g])
                at = abs(g)
            for _ in range(at):
                acc = self._rot(acc, sign * giant, keys)
            if total is None:
                total = acc
            else:
                ev.add_inplace(total, acc)
        if total is None:
            raise PlanError("a layer has no weights")
        return total
