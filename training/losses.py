"""Which losses fit which model outputs and labels, and the target each uses.

Labels always arrive one-hot, shape ``(rows, num_classes)``:

- ``cross_entropy``: output ``(num_classes,)``, target the one-hot row;
  accuracy by arg-max.
- ``binary_cross_entropy`` (on logits): two classes, output ``(1,)``,
  target the one-hot column of class 1; accuracy by the logit's sign.
- ``mse``: output ``(num_classes,)``, target the one-hot row (regression onto
  the indicator); accuracy by arg-max.
"""

from __future__ import annotations

from ppml.proto.jobs import LOSSES


class LossMismatch(ValueError):
    """The loss does not fit the model's output size or the labels."""


def check_fits(loss: str, output_shape: tuple[int, ...], num_classes: int) -> None:
    if loss not in LOSSES:
        raise LossMismatch(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if loss == "binary_cross_entropy":
        if num_classes != 2:
            raise LossMismatch(
                f"binary_cross_entropy needs labels with 2 classes; the data has {num_classes}"
            )
        if output_shape != (1,):
            raise LossMismatch(
                f"binary_cross_entropy needs a model output of shape (1,) (one logit); "
                f"the model outputs {output_shape}"
            )
        return
    if output_shape != (num_classes,):
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
