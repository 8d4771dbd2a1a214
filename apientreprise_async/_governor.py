"""Admission control for every call (interface; the full governor replaces the internals).

The client uses it like this::

    async with governor.permit(token_fingerprint, endpoint, max_wait=...) as permit:
        permit.sending()             # just before the request leaves
        response = await send()
        permit.observe(response.status_code, response.headers)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import attrs

from ._catalogue import GROUP_LIMITS, Endpoint

__all__ = ["Governor", "Limits", "Permit"]


@attrs.frozen
class Limits:
    """Rate limits per token and per IP, per ``period`` seconds."""

    groups: Mapping[str, int] = attrs.field(factory=lambda: dict(GROUP_LIMITS))
    overrides: Mapping[str, int] = attrs.field(factory=dict)
    ip: int = 1000
    period: float = 60.0


class Permit:
    """One admitted call."""

    def sending(self) -> None:
        """Mark the moment the request leaves."""

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Learn from the answer's status and headers."""


class Governor:
    """Keeps every token and the whole process under the API's limits."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()

    @asynccontextmanager
    async def permit(
        self, token: str, endpoint: Endpoint, *, max_wait: float | None = None
    ) -> AsyncIterator[Permit]:
        """Wait for a slot for ``endpoint`` under ``token``'s buckets and the IP bucket."""
        yield Permit()
