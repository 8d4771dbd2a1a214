"""pytest plugin registered by the package: fixtures wired to the emulator.

``api_entreprise_token``
    A JWT-shaped token valid for 18 months, registered on the emulator.
``api_entreprise_emulator``
    A fresh :class:`~apientreprise_async.testing.Emulator` (real 60 s period,
    built-in companies) that knows that token with every privilege.
``api_entreprise_client``
    An :class:`~apientreprise_async.AsyncClient` talking to it in process, with
    its own governor and traceability parameters set.
``api_entreprise_sync_client``
    The same as a synchronous :class:`~apientreprise_async.Client`, for plain tests.
``api_entreprise_governor``
    The process-wide governor, fresh for the test.

Every fixture is synchronous, so they work whatever runs the async tests:
anyio's plugin (``@pytest.mark.anyio``, on asyncio or trio), pytest-asyncio
(``@pytest.mark.asyncio``, strict or auto mode), or none for sync tests. An
``AsyncClient`` needs no event loop to be built, and its in-process transport
holds no connection, so it is closed after the test on a loop of its own.

Each test also starts with a fresh process-wide governor (unless a call is
in flight in it, from a server a session fixture started for instance), so
that the calls of one test never hold back the next, on whichever loop.

The names carry an ``api_entreprise_`` prefix so they never shadow a
project's own ``client`` or ``emulator`` fixtures.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from apientreprise_async import AsyncClient, Client, Governor, Limits
from apientreprise_async._governor import default_governor, reset_default
from apientreprise_async.backends import InMemoryBackend

from ._emulator import Emulator

__all__ = [
    "api_entreprise_client",
    "api_entreprise_emulator",
    "api_entreprise_governor",
    "api_entreprise_sync_client",
    "api_entreprise_token",
]

#: A public administration SIRET (DINUM), the usual ``recipient`` of examples.
RECIPIENT = "13002526500013"


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.ZW11bGF0b3I"


def _idle(governor: Governor) -> bool:
    return not any(b.in_flight or b.queued for b in governor.snapshot().buckets.values())


@pytest.fixture(autouse=True)
def _api_entreprise_fresh_governor() -> None:
    """Every test starts with a fresh process-wide governor (when nothing uses it right now)."""
    if _idle(default_governor()):
        reset_default()


@pytest.fixture
def api_entreprise_governor() -> Iterator[Governor]:
    """The process-wide governor, fresh: what clients built without ``governor=`` use."""
    reset_default()
    yield default_governor()
    if _idle(default_governor()):
        reset_default()


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


def _options(emulator: Emulator) -> dict[str, Any]:
    # A private backend keeps tests apart; the emulator's wall clock keeps
    # RateLimit-Reset meaningful when the emulator runs at another date.
    governor = Governor(
        Limits(period=emulator.period), backend=InMemoryBackend(), wall_clock=emulator.epoch
    )
    return {
        "base_url": "https://entreprise.api.gouv.fr",
        "transport": emulator.transport(),
        "governor": governor,
        "recipient": RECIPIENT,
        "context": "tests",
        "object": "pytest",
        "check_maintenance": False,
    }


@pytest.fixture
def api_entreprise_client(
    api_entreprise_emulator: Emulator, api_entreprise_token: str
) -> Iterator[AsyncClient]:
    """A client to the emulator, with a governor of its own (use it in an async test)."""
    client = AsyncClient(api_entreprise_token, **_options(api_entreprise_emulator))
    yield client
    # The test's loop is gone by now: close on a loop of its own, in a thread in
    # case this teardown runs inside some other loop.
    closer = threading.Thread(target=anyio.run, args=(client.aclose,))
    closer.start()
    closer.join()


@pytest.fixture
def api_entreprise_sync_client(
    api_entreprise_emulator: Emulator, api_entreprise_token: str
) -> Iterator[Client]:
    """A synchronous client to the emulator, with a governor of its own."""
    with Client(api_entreprise_token, **_options(api_entreprise_emulator)) as client:
        yield client
