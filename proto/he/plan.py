"""A model as the CKKS server evaluates it: an optional first convolution, then
affine maps and squares.

The owner's torch model is turned into this plan on the client
(``ppml.client.he_compile``): batch norms fold into the layer before them and
every run of linear layers between two squares (Linear, Flatten, AvgPool,
BatchNorm, Dropout) collapses into one affine map ``A x + c``. The plan is
plain numbers, so the server needs neither torch nor the owner's code, and
:meth:`HePlan.forward` is the plaintext reference the encrypted result is
checked against.

Depth: the convolution, each affine map and each square use one rescale each;
:attr:`HePlan.depth` must not exceed the parameter set's depth.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
_MAGIC = "ppml-he-plan-1"
MAX_WEIGHTS = 4_000_000


class PlanError(ValueError):
    """A plan is malformed or cannot be evaluated under CKKS; the message says why."""


@dataclass(frozen=True)
class Conv:
    weight: Floats  # (out_channels, in_channels, kh, kw)
    bias: Floats  # (out_channels,)
    stride: tuple[int, int]
    padding: tuple[int, int]

    def windows(self, input_shape: tuple[int, ...]) -> tuple[int, int]:
        _, h, w = input_shape
        kh, kw = self.weight.shape[2:]
        oh = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
        return oh, ow


@dataclass(frozen=True)
class Affine:
    matrix: Floats  # (m, n)
    bias: Floats  # (m,)


@dataclass(frozen=True)
class Square:
    pass


Step = Affine | Square


@dataclass(frozen=True)
class HePlan:
    input_shape: tuple[int, ...]
    conv: Conv | None
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def conv_windows(self) -> int:
        assert self.conv is not None
        oh, ow = self.conv.windows(self.input_shape)
        return oh * ow

    @property
    def output_size(self) -> int:
        last = self.steps[-1]
        assert isinstance(last, Affine)
        return int(last.matrix.shape[0])

    @property
    def depth(self) -> int:
        return len(self.steps) + (1 if self.conv is not None else 0)

    def kernel_positions(self) -> int:
        assert self.conv is not None
        c, kh, kw = self.conv.weight.shape[1:]
        return int(c * kh * kw)

    def input_features(self, x: Floats) -> Floats:
        """(rows, kernel positions, windows): the im2col columns of a conv plan's input."""
        assert self.conv is not None
        x = np.asarray(x, dtype=np.float64).reshape(x.shape[0], *self.input_shape)
        return _im2col(x, self.conv)

    def forward(self, x: Floats) -> Floats:
        """The plaintext reference: what the encrypted evaluation approximates."""
        rows = x.shape[0]
        if self.conv is not None:
            cols = _im2col(np.asarray(x, dtype=np.float64), self.conv)  # (rows, K, windows)
            w = self.conv.weight.reshape(self.conv.weight.shape[0], -1)
            h = np.einsum("ok,rkw->row", w, cols) + self.conv.bias[None, :, None]
            h = h.reshape(rows, -1)
        else:
            h = np.asarray(x, dtype=np.float64).reshape(rows, -1)
        for step in self.steps:
            h = h * h if isinstance(step, Square) else h @ step.matrix.T + step.bias
        return h

    def to_bytes(self) -> bytes:
        arrays: dict[str, Floats] = {}
        kinds = []
        if self.conv is not None:
            arrays["conv_weight"], arrays["conv_bias"] = self.conv.weight, self.conv.bias
        for i, step in enumerate(self.steps):
            kinds.append("square" if isinstance(step, Square) else "affine")
            if isinstance(step, Affine):
                arrays[f"a{i}"], arrays[f"b{i}"] = step.matrix, step.bias
        header = {
            "magic": _MAGIC,
            "input_shape": list(self.input_shape),
            "steps": kinds,
            "stride": list(self.conv.stride) if self.conv else None,
            "padding": list(self.conv.padding) if self.conv else None,
        }
        buf = io.BytesIO()
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        np.savez_compressed(buf, allow_pickle=False, **arrays)
        return buf.getvalue()

    def skeleton(self) -> HePlan:
        """The same plan with every weight zero: the shapes a client lays its input out by."""
        conv = None
        if self.conv is not None:
            c = self.conv
            conv = Conv(np.zeros_like(c.weight), np.zeros_like(c.bias), c.stride, c.padding)
        steps: list[Step] = [
            Affine(np.zeros_like(s.matrix), np.zeros_like(s.bias)) if isinstance(s, Affine) else s
            for s in self.steps
        ]
        return HePlan(self.input_shape, conv, tuple(steps))

    @staticmethod
    def from_bytes(data: bytes) -> HePlan:
        """Read a plan from untrusted bytes: anything unreadable is a :class:`PlanError`."""
        try:
            _check_archive(data)
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                if header.get("magic") != _MAGIC:
                    raise PlanError("not a ppml CKKS plan")
                conv = None
                if "conv_weight" in z:
                    conv = Conv(
                        np.asarray(z["conv_weight"], dtype=np.float64),
                        np.asarray(z["conv_bias"], dtype=np.float64),
                        _pair(header["stride"]),
                        _pair(header["padding"]),
                    )
                steps: list[Step] = []
                for i, kind in enumerate(header["steps"]):
                    if kind == "square":
                        steps.append(Square())
                    elif kind == "affine":
                        steps.append(
                            Affine(
                                np.asarray(z[f"a{i}"], dtype=np.float64),
                                np.asarray(z[f"b{i}"], dtype=np.float64),
                            )
                        )
                    else:
                        raise PlanError(f"unknown step {kind!r}")
                shape = tuple(int(d) for d in header["input_shape"])
        except PlanError:
            raise
        except Exception as e:  # zip, zlib, npy and json refuse broken bytes in many ways
            raise PlanError(f"the plan cannot be read: {type(e).__name__}: {e}") from None
        return HePlan(shape, conv, tuple(steps))


def _check_archive(data: bytes) -> None:
    """Refuse an archive that would unpack to more than a plan can hold (a zip bomb)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > 8 * MAX_WEIGHTS + (1 << 20):
        raise PlanError(f"the plan unpacks to {unpacked} bytes; at most {MAX_WEIGHTS} weights")


def _pair(v: object) -> tuple[int, int]:
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) for i in v)):
        raise PlanError(f"expected two integers, got {v!r}")
    return int(v[0]), int(v[1])


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _im2col(x: Floats, conv: Conv) -> Floats:
    """(rows, C, H, W) -> (rows, C*kh*kw, windows): the pixel each kernel position sees."""
    _, kh, kw = conv.weight.shape[1:]
    ph, pw = conv.padding
    sh, sw = conv.stride
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = conv.windows(x.shape[1:])
    cols = [
        xp[:, :, ky : ky + sh * (oh - 1) + 1 : sh, kx : kx + sw * (ow - 1) + 1 : sw]
        for ky in range(kh)
        for kx in range(kw)
    ]  # each (rows, C, oh, ow)
    stacked = np.stack(cols, axis=2)  # (rows, C, kh*kw, oh, ow)
    return stacked.reshape(x.shape[0], -1, oh * ow)


def _validate(plan: HePlan) -> None:
    if len(plan.input_shape) not in (1, 3) or any(d < 1 for d in plan.input_shape):
        raise PlanError(f"input shape {plan.input_shape} must be (features,) or (C, H, W)")
    if not plan.steps or not isinstance(plan.steps[-1], Affine):
        raise PlanError("a plan must end with an affine layer (Linear)")
    total = 0
    if plan.conv is not None:
        w = plan.conv.weight
        if len(plan.input_shape) != 3 or w.ndim != 4 or w.shape[1] != plan.input_shape[0]:
            raise PlanError(f"conv weight {w.shape} does not fit input {plan.input_shape}")
        if plan.conv.bias.shape != (w.shape[0],):
            raise PlanError("conv bias must have one value per output channel")
        oh, ow = plan.conv.windows(plan.input_shape)
        if oh < 1 or ow < 1 or min(plan.conv.stride) < 1 or min(plan.conv.padding) < 0:
            raise PlanError("the convolution leaves no output window")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(plan.conv.bias))):
            raise PlanError("weights must be finite")
        total += w.size
        width = int(w.shape[0] * oh * ow)
    else:
        width = int(np.prod(plan.input_shape))
    for step in plan.steps:
        if isinstance(step, Affine):
            m, n = step.matrix.shape if step.matrix.ndim == 2 else (-1, -1)
            if n != width or step.bias.shape != (m,):
                raise PlanError(f"an affine layer {step.matrix.shape} does not fit {width} inputs")
            width = m
            total += step.matrix.size
        for arr in (step.matrix, step.bias) if isinstance(step, Affine) else ():
            if not np.all(np.isfinite(arr)):
                raise PlanError("weights must be finite")
    if total > MAX_WEIGHTS:
        raise PlanError(f"{total} weights; at most {MAX_WEIGHTS} are served in CKKS mode")
