"""The emulator on a real loopback socket, through uvicorn."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from apientreprise_async import AsyncClient
from apientreprise_async.testing import Emulator, Faults

from .conftest import RECIPIENT, TOKEN
from .test_emulator import private_governor

pytestmark = pytest.mark.anyio

QUERY = {"context": "tests", "recipient": RECIPIENT, "object": "serve"}


async def test_async_client_over_loopback() -> None:
    """``serve(port=0)`` binds 127.0.0.1 and the package's client gets real answers."""
    emulator = Emulator()
    emulator.add_token(TOKEN)
    async with emulator.serve(port=0) as url:
        assert url.startswith("http://127.0.0.1:")
        async with AsyncClient(
            TOKEN,
            base_url=url,
            governor=private_governor(emulator),
            recipient=RECIPIENT,
            context="tests",
            object="serve",
            check_maintenance=False,
        ) as client:
            response = await client.call(
                "api_entreprise_v4_insee_unites_legales", siren="832147656"
            )
    assert "832147656" == response.raw["data"]["siren"]
    assert response.request_id == emulator.requests[0].request_id
    assert "127.0.0.1" == emulator.requests[0].client_ip


def test_sync_use_ban_and_dropped_connection() -> None:
    """From sync code: a banned client times out, a dropped connection is a protocol error."""
    emulator = Emulator(ip_limit=1)
    emulator.add_token(TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with emulator.serve() as url:
        first = httpx.get(f"{url}/privileges", headers=headers, timeout=2)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{url}/privileges", headers=headers, timeout=0.2)
    assert 200 == first.status_code
    assert ["answered", "banned"] == [r.outcome for r in emulator.requests]

    cut = Emulator(faults=Faults(share_dropped=1.0))
    cut.add_token(TOKEN)
    server = cut.serve()
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(
                f"{server.url}/v4/insee/sirene/unites_legales/832147656",
                params=QUERY,
                headers=headers,
                timeout=2,
            )
    finally:
        server.stop()


@pytest.fixture
def anyio_backend() -> Any:
    """One loopback run is enough: asyncio only."""
    return "asyncio"
