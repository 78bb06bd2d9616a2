"""Per-object event logs with watchers: what training jobs and federations stream.

An :class:`EventLog` keeps, per object id, the newest events (each with an
absolute ``index``: 0, 1, 2, ... the same on every server) and lets any
number of watchers follow them: every event so far, then new ones as they are
appended, until an event with a final state. An object this process never
logged (it was created before a restart) is replayed from its persisted
record. The log shares its owner's condition variable, so an owner's state
and its events change together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class _State(Protocol):
    @property
    def terminal(self) -> bool: ...


class Event(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def state(self) -> _State: ...

    def public(self) -> Event: ...


E = TypeVar("E", bound=Event)


class EventLog(Generic[E]):
    def __init__(self, cond: threading.Condition, keep: int) -> None:
        self._cond = cond
        self._keep = keep
        self._events: dict[str, list[E]] = {}

    def append(self, key: str, make: Callable[[int], E]) -> None:
        """Append ``make(next index)`` for ``key`` and wake its watchers (keeps the newest)."""
        with self._cond:
            events = self._events.setdefault(key, [])
            events.append(make(events[-1].index + 1 if events else 0))
            del events[: max(0, len(events) - self._keep)]
            self._cond.notify_all()

    def watch(
        self,
        key: str,
        replay: Callable[[], list[E]],
        owner: bool,
        active: Callable[[], bool],
    ) -> Iterator[E]:
        """Every event so far, then new ones, until a final state (or the caller leaves).

        Non-owners get each event's public form.
        """
        sent = 0
        while active():
            with self._cond:
                events = self._events.get(key)
                if events is None:
                    events = replay()
                first = events[0].index if events else 0  # older events were trimmed
                batch = events[max(0, sent - first) :]
                if not batch:
                    self._cond.wait(1.0)
                    continue
            for event in batch:
                yield event if owner else event.public()  # type: ignore[misc]
                sent = event.index + 1
                if event.state.terminal:
                    return
