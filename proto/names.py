"""What a client may send as a name or string, and how errors quote it: one set of limits.

Every server enforces these on its own, before any work starts
(``ppml.servers.api.request_strings`` on every request, and the stores on
the fields they keep); the SDK checks them before sending. The limits:

* every string of a client request is *printable* -- no control characters
  (NUL, BEL, newline, DEL, C1), no Unicode format characters (bidi overrides
  such as U+202E, zero-width characters, the BOM), no line or paragraph
  separators, no surrogates or private-use characters -- and at most
  :data:`MAX_STRING_CHARS` characters long; a repeated string field holds at
  most :data:`MAX_LIST_ITEMS` entries;
* a display name (model, data set, job result, federation) is such a string,
  possibly empty, of at most :data:`MAX_NAME_CHARS` characters;
* an identity in an ``allowed``, ``release`` or ``participants`` list is such
  a string of 1 to :data:`MAX_IDENTITY_CHARS` characters;
* ids are stricter still (``ppml.proto.ids``: 1-64 of ``[A-Za-z0-9_.-]``).

:func:`check_message_strings` applies the string rules to every string of a
protobuf message (the servers' interceptor and the SDK both use it). A refusal
is INVALID_ARGUMENT with ``ppml-error-code: INVALID_NAME``.

Error messages quote what a client sent through :func:`quote`: at most
:data:`QUOTE_CHARS` characters, with an ellipsis and the full length when cut,
so no message grows with the input.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ppml.proto.errors import ErrorCode, PpmlError

MAX_STRING_CHARS = 200
MAX_NAME_CHARS = 200
MAX_IDENTITY_CHARS = 200
MAX_LIST_ITEMS = 1000
MAX_ID_CHARS = 64
QUOTE_CHARS = 64

# Cc control, Cf format (bidi overrides, zero width), Cs surrogate, Co private use,
# Zl line separator, Zp paragraph separator
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` of at most ``limit`` characters of ``value``, the repr itself at most
    ``2 * limit`` characters; a cut one is marked with an ellipsis and its length
    (``'xxxx'... (20000 characters)``)."""
    text = value if isinstance(value, str) else str(value)
    shown = repr(text[:limit])
    if len(shown) > 2 * limit:  # escapes (\U0001f600, \x07) make a repr up to 10x longer
        shown = shown[: 2 * limit]
    elif len(text) <= limit:
        return shown
    return f"{shown}... ({len(text)} characters)"


def unprintable(value: str) -> str | None:
    """The first character of ``value`` a name may not hold, as ``U+XXXX``, or None."""
    for char in value:
        if unicodedata.category(char) in _UNPRINTABLE:
            return f"U+{ord(char):04X}"
    return None


def check_string(
    value: str,
    what: str,
    max_chars: int = MAX_STRING_CHARS,
    code: ErrorCode = ErrorCode.INVALID_NAME,
) -> str:
    """``value`` is printable and at most ``max_chars`` characters long."""
    if len(value) > max_chars:
        raise PpmlError(
            code,
            f"{what} must be at most {max_chars} characters, got {len(value)} ({quote(value)})",
        )
    bad = unprintable(value)
    if bad is not None:
        raise PpmlError(
            code,
            f"{what} holds the unprintable character {bad} (control or format characters "
            f"such as NUL or a bidi override are refused): {quote(value)}",
        )
    return value


def check_name(value: str, what: str, code: ErrorCode = ErrorCode.INVALID_NAME) -> str:
    """A display name: printable, at most :data:`MAX_NAME_CHARS` characters (may be empty)."""
    return check_string(value, what, MAX_NAME_CHARS, code)


def check_identities(
    identities: Iterable[str], what: str, code: ErrorCode = ErrorCode.INVALID_NAME
) -> tuple[str, ...]:
    """At most :data:`MAX_LIST_ITEMS` printable identities of 1-:data:`MAX_IDENTITY_CHARS`
    characters each."""
    items = tuple(identities)
    if len(items) > MAX_LIST_ITEMS:
        raise PpmlError(code, f"{what}: at most {MAX_LIST_ITEMS} identities, got {len(items)}")
    for identity in items:
        if not identity:
            raise PpmlError(code, f"{what}: an identity is empty")
        check_string(identity, f"{what}: an identity", MAX_IDENTITY_CHARS, code)
    return items


def _check_list(items: list[str], what: str) -> None:
    if len(items) > MAX_LIST_ITEMS:
        raise PpmlError(
            ErrorCode.INVALID_NAME,
            f"{what} has {len(items)} entries; at most {MAX_LIST_ITEMS} are accepted",
        )
    for index, item in enumerate(items):
        check_string(item, f"{what}[{index}]")


def check_message_strings(message: Message, prefix: str = "") -> None:
    """Raise INVALID_NAME at the first string of ``message`` (nested messages too) that
    is unprintable or longer than :data:`MAX_STRING_CHARS`, or at a repeated string
    field of more than :data:`MAX_LIST_ITEMS` entries; the error names the field path."""
    for field, value in message.ListFields():
        what = prefix + field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                _check_list(list(value), what)
            else:
                check_string(value, what)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                for key, item in value.items():
                    if isinstance(key, str):
                        check_string(key, f"{what} key")
                    if isinstance(item, Message):
                        check_message_strings(item, f"{what}[{quote(key, 16)}].")
                    elif isinstance(item, str):
                        check_string(item, f"{what} value")
            elif field.is_repeated:
                for index, item in enumerate(value):
                    check_message_strings(item, f"{what}[{index}].")
            else:
                check_message_strings(value, f"{what}.")
