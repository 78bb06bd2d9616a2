"""What every layer kind is: :class:`LayerBase`, the :data:`KINDS` registry, and op modules.

A layer kind is one frozen dataclass registered under its ``Layer`` oneof
name in ``ppml/v1/common.proto`` (:func:`register`). :mod:`.layers` holds the
kinds of convolutional and residual networks, :mod:`.tensor_layers` the
shape and arithmetic kinds of a transformer, and :mod:`.nonlinear_layers`
its smooth non-linearities (with their CrypTen approximations).

A kind that neither ``torch.nn`` nor ``crypten.nn`` has as a module builds
an :func:`op_class` module: the kind's own :meth:`OpLayer.forward` run on
torch tensors (``plain``: torch's own functions, the reference semantics) or
on CrypTen ``MPCTensor`` s (their methods).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

Pair = tuple[int, int]
Shape = tuple[int, ...]

KINDS: dict[str, type[LayerBase]] = {}
_L = TypeVar("_L", bound="type[LayerBase]")


def register(kind: str) -> Callable[[_L], _L]:
    def add(cls: _L) -> _L:
        cls.KIND = kind
        KINDS[kind] = cls
        return cls

    return add


class LayerBase:
    KIND: ClassVar[str] = ""
    ARITY: ClassVar[int] = 1  # how many tensors the layer takes (Add: 2)
    TRAINABLE: ClassVar[bool] = True  # whether a training job or a federation may use it

    def check(self) -> None:
        """Raise ValueError if the fields are out of range."""

    def params(self) -> dict[str, Shape]:
        """Secret parameters: name -> shape."""
        return {}

    def out_shape(self, shape: Shape) -> Shape:
        """One sample's shape after this layer; ValueError if ``shape`` does not fit."""
        return shape

    def join_shapes(self, shapes: tuple[Shape, ...]) -> Shape:
        """One sample's shape after this layer, given each input's shape (``ARITY`` of them)."""
        if len(shapes) != self.ARITY:
            raise ValueError(f"takes {self.ARITY} input(s), gets {len(shapes)}")
        return self.out_shape(shapes[0])

    def module(self, nn: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class OpLayer(LayerBase):
    """A kind computed by its own :meth:`forward` in an :func:`op_class` module (served only)."""

    TRAINABLE: ClassVar[bool] = False

    def forward(self, xs: tuple[Any, ...], params: dict[str, Any], plain: bool) -> Any:
        """The output for inputs ``xs`` (batch first) and parameters by name.

        ``plain``: torch tensors (exact reference semantics); else CrypTen
        ``MPCTensor`` s.
        """
        raise NotImplementedError

    def module(self, nn: Any) -> Any:
        return op_class(nn, type(self).__name__)(self)


def positive(*values: int) -> bool:
    return all(v > 0 for v in values)


@functools.cache
def op_class(nn: Any, name: str) -> type:
    """The module class ``name`` for ``torch.nn`` or ``crypten.nn`` running an :class:`OpLayer`.

    Parameters are registered at their defaults (``weight`` ones, others
    zeros) under the layer's parameter names, so a state dict or CrypTen's
    ``set_parameter`` fills them like any module's.
    """
    import torch

    plain = nn is torch.nn

    def init(self: Any, layer: OpLayer) -> None:
        nn.Module.__init__(self)
        self.layer = layer
        for pname, shape in layer.params().items():
            value = torch.ones(shape) if pname == "weight" else torch.zeros(shape)
            # torch.nn wants a Parameter; crypten.nn takes the tensor it will later encrypt
            self.register_parameter(pname, torch.nn.Parameter(value) if plain else value)

    def forward(self: Any, *xs: Any) -> Any:
        params = {pname: getattr(self, pname) for pname in self.layer.params()}
        return self.layer.forward(xs, params, plain)

    return type(name, (nn.Module,), {"__init__": init, "forward": forward})
