"""Checks of the caller's rows against a model's input, done before anything is sent.

The servers only see shares of the rows and could report a mismatch only
after the upload (or not at all, as a wrong result); the SDK names what was
expected and what was given instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from ppml.client.errors import InputShapeMismatch


def check_rows(expected: Sequence[int], given: Sequence[int], what: str) -> None:
    """Rows (``given``: the array's shape, rows first) must each have shape ``expected``."""
    if len(given) < 1 or tuple(given[1:]) != tuple(expected):
        raise InputShapeMismatch(
            f"rows of shape {tuple(given[1:])} (array of shape {tuple(given)}), but {what} "
            f"expects rows of shape {tuple(expected)}; nothing was sent"
        )
