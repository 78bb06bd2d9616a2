"""Where each image's numbers sit in the slots of a ciphertext: two layouts.

A ciphertext has ``S = N/2`` slots, cut into *regions* of ``R`` slots (a
power of two). Image ``i`` of a group owns region ``i``, so a group holds
``S / R`` images and every homomorphic operation works on all of them at once
(SIMD). The model's input is a vector of *features*: for a plan that starts
with a convolution, its im2col columns (feature ``k * windows + w`` is the
pixel kernel position ``k`` sees in output window ``w``), else the flattened
input. A layout says, for each feature, which ciphertext and which slot of the
image's region hold it; every other slot is zero.

* ``batch``: one ciphertext per kernel position (or per chunk of ``R``
  features), ``R`` as small as the layers allow (64 for the reference CNN), so
  a group holds many images. The convolution needs no rotation; this is the
  throughput layout.
* ``single``: all features of an image in one ciphertext, kernel position
  ``k`` at slots ``k * W .. k * W + windows - 1`` (``W`` the windows rounded
  up to a power of two). One ciphertext per group of ``S / R`` images: what a
  small request sends.

The output is always ciphertext 0 of each group, logits at slots ``0 .. m-1``
of each image's region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ppml.proto.he.plan import Affine, HePlan, PlanError

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
MODES = ("single", "batch")


@dataclass(frozen=True)
class InputLayout:
    mode: str
    region: int  # R: slots per image
    ciphertexts: int  # per group
    where: Ints  # (features, 2): ciphertext, slot in the region
    channel_block: int  # W: slots per conv window block (power of two), or 0

    def images_per_group(self, slots: int) -> int:
        return slots // self.region


def pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def input_layout(plan: HePlan, mode: str, slots: int) -> InputLayout:
    if mode not in MODES:
        raise PlanError(f"unknown layout {mode!r}; one of {MODES}")
    widths = [int(s.matrix.shape[0]) for s in plan.steps if isinstance(s, Affine)]
    if plan.conv is not None:
        k = plan.kernel_positions()
        windows = plan.conv_windows
        w_pad = pow2(windows)
        channels = int(plan.conv.weight.shape[0])
        kk, ww = np.meshgrid(np.arange(k), np.arange(windows), indexing="ij")
        if mode == "batch":
            region = pow2(max([w_pad, 8, *widths]))
            where = np.stack([kk.ravel(), ww.ravel()], axis=1)
            cts = k
        else:
            region = pow2(max([k * w_pad, channels * w_pad, *widths]))
            where = np.stack([np.zeros(k * windows, np.int64), (kk * w_pad + ww).ravel()], axis=1)
            cts = 1
        block = w_pad
    else:
        n = plan.input_size
        f = np.arange(n)
        if mode == "batch":
            region = pow2(max([min(n, 64), 8, *widths]))
        else:
            region = pow2(max([n, 8, *widths]))
        where = np.stack([f // region, f % region], axis=1)
        cts = -(-n // region)
        block = 0
    if region > slots:
        raise PlanError(
            f"the {mode} layout needs {region} slots per image; a ciphertext has {slots}"
        )
    return InputLayout(mode, region, cts, where.astype(np.int64), block)


def input_features(plan: HePlan, x: Floats) -> Floats:
    """(rows, features): im2col columns for a conv plan, else the flattened input."""
    x = np.asarray(x, dtype=np.float64)
    if plan.conv is None:
        return x.reshape(x.shape[0], -1)
    return plan.input_features(x).reshape(x.shape[0], -1)


def pack(layout: InputLayout, features: Floats, slots: int) -> list[Floats]:
    """One group's features (rows <= images per group) -> one slot vector per ciphertext."""
    rows = features.shape[0]
    if rows > layout.images_per_group(slots):
        raise PlanError(f"{rows} images exceed a group of {layout.images_per_group(slots)}")
    out = np.zeros((layout.ciphertexts, slots))
    base = np.arange(rows)[:, None] * layout.region  # (rows, 1)
    ct, slot = layout.where[:, 0], layout.where[:, 1]
    out[ct[None, :].repeat(rows, 0), base + slot[None, :]] = features
    return list(out)


def unpack(
    layout: InputLayout, values: Floats, rows: int, outputs: int, first_row: int = 0
) -> Floats:
    """Decoded slots of a group's output ciphertext -> its (rows, outputs) logits.

    ``first_row``: where the rows start when the server merged concurrent
    requests into one group (``HePredictResponse.first_row``).
    """
    start, stop = first_row * layout.region, (first_row + rows) * layout.region
    if stop > len(values):
        raise ValueError(f"rows {first_row}..{first_row + rows} lie outside the group")
    return np.asarray(values[start:stop]).reshape(rows, layout.region)[:, :outputs]


def groups(rows: int, per_group: int) -> list[range]:
    return [range(s, min(rows, s + per_group)) for s in range(0, rows, per_group)]
