"""Hypothesis strategies for the RPC fuzz test: field values, ids, deadlines, raw bytes.

Numbers come with their edge cases (0, -1, 2^31, 2^62, the int64 limits, NaN,
infinities); ids are known ones, ids no server has, and odd ones (empty, long,
unicode, path traversal); bad names hold a control or format character or
are too long, long strings are 20 KB. ``FRESH`` ids are made unique per draw, so no two
examples share a new model, data set, job or request id by accident.
:func:`faulty` breaks a few fields of a valid message at a time.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from ppml.proto.errors import PpmlError
from ppml.proto.ids import check_id
from ppml.proto.names import MAX_STRING_CHARS

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT32_MAX, UINT64_MAX = 2**32 - 1, 2**64 - 1
EDGE_INTS = [0, 1, -1, 2, 3, 2**27, 2**27 + 1, 2**31 - 1, 2**31, 2**32, 2**62, INT64_MAX, INT64_MIN]
EDGE_SHAPES = [
    [], [0], [-1], [0, 2**62], [2**62, 0], [0, 2**31, 2**31], [2**31, 2**31], [2**63 - 1],
    [2**27 + 1], [1] * 65, [0] * 70,
]  # fmt: skip
EDGE_DOUBLES = [
    0.0, -0.0, 1e-320, 0.1, 0.999999, 1.0, -1.0, 100.0, 100.00001, 1e308,
    math.inf, -math.inf, math.nan,
]  # fmt: skip
ODD_IDS = [
    "", ".", "..", "...", "../x", "../../etc/passwd", "/etc/passwd", "a/b", "a\\b", "x" * 64,
    "x" * 65, "x" * 1000, "ünïcødé", "模型", "🙂", "a\x00b", ".tmp-x", "-", "a b", "\u202e",
    "models", "CON", "id\n",
]  # fmt: skip

_PREFIX = secrets.token_hex(3)
_COUNTER = itertools.count()
FRESH = "<fresh>"


def fresh_id() -> str:
    return f"fz-{_PREFIX}-{next(_COUNTER)}"


def _resolve(value: str) -> str:
    return fresh_id() if value == FRESH else value


def int64s() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 8), st.sampled_from(EDGE_INTS), st.integers(INT64_MIN, INT64_MAX)
    )


def uint32s() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 8), st.sampled_from([2**31, UINT32_MAX]), st.integers(0, UINT32_MAX)
    )


def uint64s() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 8), st.sampled_from([2**63, UINT64_MAX]), st.integers(0, UINT64_MAX)
    )


def doubles() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(EDGE_DOUBLES), st.floats())


def texts(max_size: int = 80) -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=max_size), st.sampled_from(ODD_IDS))


# control, format (bidi overrides, zero width, BOM), separator, private-use characters
UNPRINTABLE = [
    "\x00", "\x07", "\x08", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\u00ad",
    "\u200b", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202d", "\u202e",
    "\u2066", "\u2067", "\u2068", "\u2069", "\u2028", "\u2029", "\ufeff", "\ue000",
    "\U000e0001", "\U000f0000",
]  # fmt: skip
LONG = 20_000  # a "long string": 20 KB


def bad_names() -> st.SearchStrategy[str]:
    """Non-empty names no server accepts: an unprintable character anywhere, or too long."""
    with_char = st.builds(
        lambda head, char, tail: head + char + tail,
        st.text(max_size=20),
        st.sampled_from(UNPRINTABLE),
        st.text(max_size=20),
    )
    return st.one_of(
        with_char,
        st.sampled_from(UNPRINTABLE),
        st.lists(st.sampled_from(UNPRINTABLE), min_size=2, max_size=50).map("".join),
        st.integers(MAX_STRING_CHARS + 1, 2 * MAX_STRING_CHARS).map(lambda n: "x" * n),
        st.text(min_size=MAX_STRING_CHARS + 1, max_size=MAX_STRING_CHARS + 40).filter(
            lambda t: len(t) > MAX_STRING_CHARS
        ),
        long_strings(),
    )


def long_strings() -> st.SearchStrategy[str]:
    """Strings of about 20 KB (ASCII, multi-byte, or a text repeated up to that)."""
    return st.one_of(
        st.just("x" * LONG),
        st.just("🙂" * (LONG // 4)),
        st.just("é" * (LONG // 2)),
        st.text(min_size=1, max_size=30).map(lambda t: (t * (LONG // len(t) + 1))[:LONG]),
    )


def known_ids(known: Sequence[str]) -> st.SearchStrategy[str]:
    """One of ``known``, a list that may grow between examples (Hypothesis needs every
    example's choices to mean the same thing: an index, not a draw from the list)."""
    return st.integers(0, 1 << 16).map(lambda i: known[i % len(known)] if known else FRESH)


def ids(known: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Known ids, new valid ids, and odd ones."""
    return st.one_of(
        st.just(FRESH),
        known_ids(known),
        st.sampled_from(ODD_IDS),
        st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True),
        st.text(max_size=70),
    ).map(_resolve)


def _valid_id(value: str) -> bool:
    try:
        check_id(value, "id")
    except PpmlError:
        return False
    return True


def new_ids(existing: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Ids for something to create: unique new ids, ids that exist everywhere, and odd ones.

    Any other valid id is replaced by a unique one: the same new id sent to
    one server in one example and to another server in a later one would
    make those servers hold different things under one id (see the fuzz
    test's docstring).
    """

    def fresh_unless_known(value: str) -> str:
        new = value == FRESH or (_valid_id(value) and value not in existing)
        return fresh_id() if new else value

    return st.one_of(
        st.just(FRESH), known_ids(existing), st.sampled_from(ODD_IDS), st.text(max_size=70)
    ).map(fresh_unless_known)


def lookup_ids(known: Sequence[str]) -> st.SearchStrategy[str]:
    """Ids to look up: half the time one of ``known``."""
    return st.one_of(known_ids(known), ids(known))


def faulty(
    good: dict[str, st.SearchStrategy[Any]],
    bad: dict[str, st.SearchStrategy[Any]],
    most: int = 2,
) -> st.SearchStrategy[dict[str, Any]]:
    """Every field of ``good``, with up to ``most`` of those named in ``bad`` drawn from it.

    Breaking a few fields of a valid message at a time reaches every check of
    the servers, not only their first.
    """

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        broken = draw(st.sets(st.sampled_from(sorted(bad)), max_size=most), label="broken")
        return {name: draw((bad if name in broken else good)[name], label=name) for name in good}

    return build()


def deadlines() -> st.SearchStrategy[float | None]:
    """Client deadlines in seconds; None is no deadline at all."""
    return st.sampled_from([5.0, None, 0.001, 0.2, 1.0, 3600.0, 1e9])


# ---------------------------------------------------------------- raw bytes


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def raw_bodies(good: bytes = b"") -> st.SearchStrategy[bytes]:
    """Bytes that are rarely a valid message: random, bad UTF-8, truncated, deeply nested."""
    bad_string = st.builds(
        lambda field, text: bytes([field << 3 | 2, len(text)]) + text,
        st.integers(1, 15),
        st.binary(min_size=1, max_size=30).filter(_not_utf8),
    )
    truncated = st.integers(0, max(0, len(good) - 1)).map(lambda n: good[:n])
    return st.one_of(
        st.binary(max_size=300),
        bad_string,
        truncated,
        st.binary(min_size=1, max_size=40).map(lambda tail: good + tail),
        st.integers(1, 400).map(lambda depth: b"\x0b" * depth),  # nested groups
        st.just(b"\xf8\xff\xff\xff\x0f\x01"),  # field number 2^29 - 1, varint
        st.just(b"\x0a\xff\xff\xff\xff\x0f"),  # a length of 4 GiB
    )
