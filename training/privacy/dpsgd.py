"""DP-SGD for secret-shared training jobs: what a job may ask for, and what it has spent.

The mechanism (Abadi et al. 2016) as the MPC trainer runs it
(``servers/mpc/training/dpsgd.py``): every step, each example's gradient is clipped
to L2 norm ``C`` (``dp_clip_norm``), the clipped gradients are summed,
Gaussian noise of standard deviation ``sigma = z * C`` is added (split across
the servers, :func:`~ppml.training.privacy.noise.per_server_noise_std`), and
the sum is divided by the batch size before the SGD update. Replacing one
training row by another moves the clipped sum by at most ``2C``.

**Adversary.** The model's recipients and every client or monitor of the
cluster: whoever reads the job's info and events, its trained model, and
everything computed from the model. The servers only ever see shares; they
know the batches, not the rows.

**Sampling, and what the accountant is told.** Each step trains on exactly
``min(batch_size, rows)`` rows drawn uniformly without replacement from all
``rows``, independently of every other step
(:class:`~ppml.training.batches.SecretBatches`). The draw comes from a
256-bit key to which every server contributes OS CSPRNG bytes over the
encrypted MPC links when the run starts; it is held in memory only, never
stored, logged or sent to a client, so nobody outside the servers can tell
which rows a step used. A DP job's public ``seed`` must be 0: it would say
nothing. The accountant (:mod:`~ppml.training.privacy.accounting`, RDP,
replace-one) is told exactly that: ``SampledWithoutReplacementDpEvent(rows,
batch_size, GaussianDpEvent(z / 2))`` per step. Row counts are public, so the
neighbouring relation is replace-one, not add/remove.

**What DP covers.** The released model and everything computed from it.
Not covered, hence refused with DP on: ``reveal_metrics`` (it opens the mean
training loss to the owner) and ``standardize`` (its secret mean and scale
over the training rows become part of the model without noise).

Every epsilon here comes from ``dp_accounting`` through
:mod:`~ppml.training.privacy.accounting` (RDP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ppml.proto.domain.architecture import Architecture
from ppml.proto.domain.jobs import DP_DEFAULT_DELTA, TrainingSpec
from ppml.training.privacy.accounting import (
    FixedSizeSampling,
    calibrate_noise_multiplier,
    dpsgd_epsilon,
)

DEFAULT_DELTA = DP_DEFAULT_DELTA
# layer kinds whose per-example gradients the MPC trainer computes (servers/mpc/training/dpsgd.py)
DP_LAYER_KINDS = ("linear", "relu", "flatten")
MAX_NOISE_MULTIPLIER = 1e4


def _finite(value: float) -> bool:
    return math.isfinite(value)


def check_spec(spec: TrainingSpec) -> None:
    """Raise ValueError unless the spec's DP fields are off or a consistent request."""
    clip, z, target, delta = (
        spec.dp_clip_norm,
        spec.dp_noise_multiplier,
        spec.dp_target_epsilon,
        spec.dp_delta,
    )
    if not (_finite(clip) and clip >= 0):
        raise ValueError(f"dp_clip_norm must be a finite number >= 0 (0: no DP), got {clip}")
    if not spec.dp:
        if z is not None or target or delta:
            raise ValueError(
                "dp_noise_multiplier, dp_target_epsilon and dp_delta need dp_clip_norm > 0 "
                "(the per-example clipping bound that turns DP-SGD on)"
            )
        return
    if z is not None and not (_finite(z) and 0 <= z <= MAX_NOISE_MULTIPLIER):
        raise ValueError(f"dp_noise_multiplier must lie in [0, {MAX_NOISE_MULTIPLIER:g}], got {z}")
    if not (_finite(target) and target >= 0):
        raise ValueError(f"dp_target_epsilon must be a finite number > 0, got {target}")
    if z is not None and target:
        raise ValueError(
            "give either dp_noise_multiplier or dp_target_epsilon, not both "
            "(the servers calibrate the multiplier from the target)"
        )
    if z is None and not target:
        raise ValueError("DP-SGD needs dp_noise_multiplier (>= 0) or dp_target_epsilon (> 0)")
    if not (_finite(delta) and 0 <= delta < 1):
        raise ValueError(f"dp_delta must lie in (0, 1) (0: the default), got {delta}")
    if spec.reveal_metrics:
        raise ValueError(
            "reveal_metrics opens the mean training loss, which DP-SGD does not protect; "
            "evaluate the trained model on a separate data set instead"
        )
    if spec.standardize:
        raise ValueError(
            "standardize puts the training rows' exact mean and scale into the model, "
            "which DP-SGD does not protect; standardise the features before sharing them"
        )
    if spec.seed:
        raise ValueError(
            "DP-SGD draws every batch from a secret key of the servers (the privacy "
            "accounting assumes nobody else knows the batches): leave seed at 0"
        )


def check_architecture(architecture: Architecture) -> None:
    """Raise ValueError unless every layer's per-example gradient is supported."""
    unsupported = sorted(
        {layer.KIND for layer in architecture.layers if layer.KIND not in DP_LAYER_KINDS}
    )
    if unsupported:
        raise ValueError(
            f"DP-SGD supports only layers of kinds {', '.join(DP_LAYER_KINDS)} "
            f"(multi-layer perceptrons); this model has {', '.join(unsupported)}"
        )
    if not any(layer.KIND == "linear" for layer in architecture.layers):
        raise ValueError("DP-SGD needs at least one linear layer (nothing else has weights)")


@dataclass(frozen=True)
class DpSgdPlan:
    """A job's DP-SGD parameters, resolved at its start from its spec and row count."""

    clip_norm: float
    noise_multiplier: float
    delta: float
    sampling: FixedSizeSampling  # every step: batch_size of the rows, without replacement

    @property
    def sigma(self) -> float:
        """Standard deviation of the noise on each step's clipped sum: ``z * C``."""
        return self.noise_multiplier * self.clip_norm

    def epsilon(self, steps: int) -> float:
        """Epsilon at :attr:`delta` after ``steps`` steps (0 before any; inf with no noise)."""
        if steps <= 0:
            return 0.0
        return dpsgd_epsilon(self.noise_multiplier, self.sampling, steps, self.delta)


def plan(spec: TrainingSpec, rows: int, noise_multiplier: float | None = None) -> DpSgdPlan:
    """The job's plan; calibrates ``z`` from ``dp_target_epsilon`` unless one is given.

    ``noise_multiplier`` (a value resolved earlier, e.g. in the job's record)
    takes precedence over the spec. Raises ValueError if delta is not below
    ``1 / rows`` or the target cannot be met.
    """
    if not spec.dp:
        raise ValueError("the job does not use DP-SGD")
    delta = spec.dp_delta or DEFAULT_DELTA
    if rows < 1:
        raise ValueError("DP-SGD needs at least one training row")
    if delta >= 1 / rows:
        raise ValueError(
            f"dp_delta={delta:g} is not below 1/rows = {1 / rows:.3g}: with that delta a "
            "mechanism may publish a whole row; choose a smaller dp_delta"
        )
    sampling = FixedSizeSampling(rows, spec.batch_size)
    z = noise_multiplier if noise_multiplier is not None else spec.dp_noise_multiplier
    if z is None:
        steps = spec.steps_total(rows)
        # one evaluation settles a target out of reach (the search for it would take minutes)
        if dpsgd_epsilon(MAX_NOISE_MULTIPLIER, sampling, steps, delta) > spec.dp_target_epsilon:
            raise ValueError(
                f"dp_target_epsilon={spec.dp_target_epsilon:g} over {steps} steps needs a noise "
                f"multiplier over {MAX_NOISE_MULTIPLIER:g}; raise the target"
            )
        try:
            z = calibrate_noise_multiplier(spec.dp_target_epsilon, delta, steps, sampling)
        except (ValueError, ArithmeticError) as exc:
            raise ValueError(
                f"no noise multiplier reaches dp_target_epsilon={spec.dp_target_epsilon:g} "
                f"at dp_delta={delta:g} over {steps} steps: {exc}"
            ) from None
        if not z <= MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"dp_target_epsilon={spec.dp_target_epsilon:g} over {steps} steps needs a noise "
                f"multiplier of {z:.3g} (over {MAX_NOISE_MULTIPLIER:g}); raise the target"
            )
    return DpSgdPlan(spec.dp_clip_norm, float(z), delta, sampling)
