"""The loss table: which losses fit which model outputs, their targets and both implementations.

Labels always arrive one-hot, shape ``(rows, num_classes)``. Each :class:`Loss`
says which model output it needs, which slice of the one-hot labels is its
target, and how it is computed in plaintext PyTorch (the twin) and in MPC
(the name of the ``crypten.nn`` module the MPC trainer builds; this package
never imports CrypTen):

- ``cross_entropy``: output ``(num_classes,)``, target the one-hot row;
  accuracy by arg-max.
- ``binary_cross_entropy`` (on logits): two classes, output ``(1,)``,
  target the one-hot column of class 1; accuracy by the logit's sign.
- ``mse``: output ``(num_classes,)``, target the one-hot row (regression onto
  the indicator); accuracy by arg-max.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from ppml.proto.domain.jobs import LOSSES
from ppml.proto.names import quote


class LossMismatch(ValueError):
    """The loss does not fit the model's output size or the labels."""


@dataclass(frozen=True)
class Loss:
    name: str
    binary: bool  # one logit for two classes (else one output per class)
    crypten_module: str  # class name in crypten.nn
    skips_forward: bool  # the crypten module can skip its forward value when not revealed
    torch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def output_shape(self, num_classes: int) -> tuple[int, ...]:
        return (1,) if self.binary else (num_classes,)

    def target(self, one_hot: Any) -> Any:
        """The training target from one-hot labels (a torch tensor or an MPCTensor)."""
        return one_hot[:, 1:2] if self.binary else one_hot


TABLE: dict[str, Loss] = {
    "cross_entropy": Loss("cross_entropy", False, "CrossEntropyLoss", True, F.cross_entropy),
    "binary_cross_entropy": Loss(
        "binary_cross_entropy", True, "BCEWithLogitsLoss", True, F.binary_cross_entropy_with_logits
    ),
    "mse": Loss("mse", False, "MSELoss", False, F.mse_loss),
}
assert tuple(TABLE) == LOSSES  # the wire's list of loss names and this table agree


def get(name: str) -> Loss:
    if name not in TABLE:
        raise LossMismatch(f"unknown loss {quote(name)}; choose one of {', '.join(TABLE)}")
    return TABLE[name]


def check_fits(loss: str, output_shape: tuple[int, ...], num_classes: int) -> None:
    spec = get(loss)
    if spec.binary:
        if num_classes != 2:
            raise LossMismatch(
                f"{loss} needs labels with 2 classes; the data has {num_classes}"
            )
        if output_shape != (1,):
            raise LossMismatch(
                f"{loss} needs a model output of shape (1,) (one logit); "
                f"the model outputs {output_shape}"
            )
        return
    if output_shape != spec.output_shape(num_classes):
        raise LossMismatch(
            f"{loss} needs a model output of shape ({num_classes},) for {num_classes} classes; "
            f"the model outputs {output_shape}"
        )


def accuracy_kind(output_shape: tuple[int, ...], num_classes: int) -> str:
    """``"argmax"`` or ``"sign"``: how a prediction is compared with a one-hot label."""
    if output_shape == (num_classes,):
        return "argmax"
    if output_shape == (1,) and num_classes == 2:
        return "sign"
    raise LossMismatch(
        f"a model with output shape {output_shape} cannot be scored against "
        f"{num_classes}-class labels"
    )
