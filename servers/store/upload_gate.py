"""What the registries need from the two-phase upload protocol (``ppml.servers.control.uploads``).

The store is the lowest server layer, so it names the protocol's one entry
point as a structural type instead of importing the control layer.
"""

from __future__ import annotations

from typing import Any, Protocol

from ppml.proto.shares import Ring


class UploadGate(Protocol):
    def stage(
        self, kind: str, meta: Any, shares: dict[str, Ring], upload: str, timeout_s: float
    ) -> None:
        """Stage an upload on this server, announce it and wait; raises unless committed."""
