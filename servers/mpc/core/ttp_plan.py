"""Dealer requests asked for ahead: a recorded sequence, sent in one message, answered in a stream.

In CrypTen's TTP protocol rank 0 asks the dealer for a correction on every
Beaver triple, wrap count and B2A bit, and waits for the answer: one dealer
round trip, and the dealer's computation, on the online path of every
multiplication and comparison (about 270 per Network A training step at
batch 128).

A *planned section* removes both waits for work that repeats. The first time
a section runs under a key (a training step of a given batch size), rank 0
records the requests it makes (function and public sizes only, what it sends
anyway). Every later run of that section under that key starts with one
``batch`` message carrying the recorded sequence; the dealer computes the
answers in order and sends each as soon as it is made, so it works ahead
while rank 0 computes, and rank 0 reads each answer when CrypTen asks for
it. Nothing else changes: the same requests, answered the same way, in the
same order (the dealer's per-party streams advance exactly as one request
at a time would advance them), so the other parties, which draw their parts
locally, stay in step.

Invariant: a planned section makes exactly the recorded requests, in order.
The dealer has already answered (and advanced every party's stream for) the
whole plan, so a section that asks for anything else, or stops early, has
lost step with the other parties: :class:`PlanMismatch` fails the job
rather than compute with misaligned randomness, and any failure inside a
planned section ends the MPC session (answers may be left unread on the
dealer link), so the parties start the next one in step. Use it only around code
whose requests depend on public shapes alone (CrypTen's protocols do not
branch on secret data).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any

BATCH = "batch"  # the dealer's function name for a planned sequence
MAX_PLAN = 100_000  # requests in one plan (the dealer refuses longer ones)

Request = dict[str, Any]  # {"function", "device", "args", "kwargs"}: CrypTen's TTP message


class PlanMismatch(RuntimeError):
    """A planned section asked the dealer for something other than its plan."""


class _Section:
    def __init__(self, plan: list[Request] | None) -> None:
        self.recorded: list[Request] = []
        self.plan = plan
        self.next = 0


_active = threading.local()


class Plans:
    """Recorded request sequences of one job, by section key (rank 0 uses them)."""

    def __init__(self, enabled: bool = True) -> None:
        self._plans: dict[Hashable, list[Request]] = {}
        self._enabled = enabled

    @contextmanager
    def section(self, key: Hashable) -> Iterator[None]:
        """Run the body as a planned section (a no-op off rank 0 or without the TTP)."""
        comm = _rank0_comm() if self._enabled else None
        if comm is None or getattr(_active, "section", None) is not None:
            yield
            return
        plan = self._plans.get(key)
        section = _Section(plan)
        if plan is not None:
            message: Request = {"function": BATCH, "device": None, "args": (plan,), "kwargs": {}}
            comm.send_obj(message, comm.get_ttp_rank())
        _active.section = section
        try:
            yield
            if plan is not None and section.next != len(plan):
                raise PlanMismatch(
                    f"a planned section made {section.next} of its {len(plan)} dealer requests"
                )
        except BaseException:
            if plan is not None:  # answers may be unread, every party's dealer stream moved on
                comm.break_session("a planned section of dealer requests did not complete")
            raise
        finally:
            _active.section = None
        if plan is None and len(section.recorded) <= MAX_PLAN:
            self._plans[key] = section.recorded


def _rank0_comm() -> Any:
    from ppml.servers.mpc.core.crypten_compat import crypten

    if not crypten.communicator.is_initialized():
        return None
    if _provider() != "TTP":  # TFP (tests only): no dealer
        return None
    comm = crypten.communicator.get()
    return comm if comm.get_rank() == 0 else None


def _provider() -> str | None:
    from ppml.servers.mpc.core.crypten_compat import crypten

    provider = getattr(crypten.cfg.mpc, "provider", None)
    return None if provider is None else str(provider)


def request(client: Any, func_name: str, device: Any, *args: Any, **kwargs: Any) -> Any:
    """``TTPClient.ttp_request``: live, or the next answer of the running plan."""
    import torch

    from ppml.servers.mpc.core.crypten_compat import crypten

    comm = crypten.communicator.get()
    if comm.get_rank() != 0:
        raise RuntimeError("only party 0 asks the dealer")
    message: Request = {
        "function": func_name,
        "device": None if device is None else str(device),
        "args": args,
        "kwargs": kwargs,
    }
    dealer = comm.get_ttp_rank()
    section: _Section | None = getattr(_active, "section", None)
    if section is None or section.plan is None:
        if section is not None:
            section.recorded.append(message)
        comm.send_obj(message, dealer, client.ttp_group)
    else:
        plan = section.plan
        if section.next >= len(plan) or plan[section.next] != message:
            raise PlanMismatch(
                f"dealer request {section.next + 1} of a planned section is not the planned one"
            )
        section.next += 1
    size = comm.recv_obj(dealer, client.ttp_group)
    result = torch.empty(size, dtype=torch.long, device=message["device"])
    comm.broadcast(result, dealer, client.comm_group)
    return result


def install() -> None:
    """Route CrypTen's ``TTPClient.ttp_request`` through :func:`request` (idempotent)."""
    from ppml.servers.mpc.core.crypten_compat import crypten

    client_class = crypten.mpc.provider.ttp_provider.TTPClient._TTPClient__TTPClient
    client_class.ttp_request = request
