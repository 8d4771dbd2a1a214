"""pytest plugin registered by the package: fixtures wired to the emulator.

``api_entreprise_token``
    A JWT-shaped token valid for 18 months, registered on the emulator.
``api_entreprise_emulator``
    A fresh :class:`~apientreprise_async.testing.Emulator` (real 60 s period,
    built-in companies) that knows that token with every privilege.
``api_entreprise_client``
    An :class:`~apientreprise_async.AsyncClient` talking to it in process, with
    its own governor and traceability parameters set; an async fixture, so the
    test runs under anyio (``pytest.mark.anyio`` or ``anyio_mode = "auto"``).

The names carry an ``api_entreprise_`` prefix so they never shadow a
project's own ``client`` or ``emulator`` fixtures.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from apientreprise_async import AsyncClient, Governor, Limits
from apientreprise_async.backends import InMemoryBackend

from ._emulator import Emulator

__all__ = ["api_entreprise_client", "api_entreprise_emulator", "api_entreprise_token"]

#: A public administration SIRET (DINUM), the usual ``recipient`` of examples.
RECIPIENT = "13002526500013"


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.ZW11bGF0b3I"


@pytest.fixture
def api_entreprise_token() -> str:
    """A JWT-shaped token that expires in 18 months (unsigned: the emulator never checks)."""
    now = int(time.time())
    return _jwt({"sub": "emulator", "iat": now, "exp": now + 548 * 86400, "jti": "pytest"})


@pytest.fixture
def api_entreprise_emulator(api_entreprise_token: str) -> Emulator:
    """A fresh emulator knowing ``api_entreprise_token`` with every privilege."""
    emulator = Emulator()
    emulator.add_token(api_entreprise_token)
    return emulator


@pytest.fixture
async def api_entreprise_client(
    anyio_backend: Any, api_entreprise_emulator: Emulator, api_entreprise_token: str
) -> AsyncIterator[AsyncClient]:
    """An open client to the emulator, with a governor of its own."""
    # A private backend keeps tests apart; the emulator's wall clock keeps
    # RateLimit-Reset meaningful when the emulator runs at another date.
    governor = Governor(
        Limits(period=api_entreprise_emulator.period),
        backend=InMemoryBackend(),
        wall_clock=api_entreprise_emulator.epoch,
    )
    async with AsyncClient(
        api_entreprise_token,
        base_url="https://entreprise.api.gouv.fr",
        transport=api_entreprise_emulator.transport(),
        governor=governor,
        recipient=RECIPIENT,
        context="tests",
        object="pytest",
        check_maintenance=False,
    ) as client:
        yield client
