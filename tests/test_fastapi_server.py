"""The proxy served by a real uvicorn on 127.0.0.1, with the emulator served behind its client."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from apientreprise_async import AsyncClient, Governor
from apientreprise_async.backends import InMemoryBackend
from apientreprise_async.fastapi import (
    STATE_KEY,
    ApiEntrepriseClient,
    ApiEntrepriseSettings,
    ProxyOperation,
    install_exception_handlers,
    make_lifespan,
    make_proxy_router,
)
from apientreprise_async.testing import Emulator

from .conftest import RECIPIENT, TOKEN
from .test_fastapi import ETAB, SIREN, SIRET, UL, UNKNOWN_SIREN, scan_for_token, tracing

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn (lifespan on) in a thread on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", log_config=None, log_level="warning", access_log=False, ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        with anyio.fail_after(10):
            while not server.started:
                assert thread.is_alive(), "uvicorn stopped during startup"
                await anyio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await anyio.to_thread.run_sync(thread.join, 10)
        sock.close()


async def test_proxy_through_real_servers() -> None:
    """Browser -> uvicorn proxy -> client -> emulator on loopback: data, errors, no token."""
    emulator = Emulator()
    emulator.add_token(TOKEN)
    clients: list[AsyncClient] = []
    with emulator.serve(port=0) as upstream_url:
        app = FastAPI(
            lifespan=make_lifespan(
                ApiEntrepriseSettings(
                    token=TOKEN, base_url=upstream_url, recipient=RECIPIENT, context="serveur"
                ),
                governor=Governor(backend=InMemoryBackend()),
                check_maintenance=False,
            )
        )
        install_exception_handlers(app)
        app.include_router(
            make_proxy_router([UL, ProxyOperation(ETAB, fields=["siret"])], tracing=tracing),
            prefix="/p",
        )

        @app.get("/client")
        async def which(client: ApiEntrepriseClient) -> dict[str, Any]:
            clients.append(client)
            return {"base_url": client.settings.base_url}

        async with serve(app) as url, httpx.AsyncClient(base_url=url) as browser:
            alice = {"X-User": "alice"}
            responses = [
                await browser.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}", headers=alice),
                await browser.get(f"/p/v4/insee/sirene/etablissements/{SIRET}", headers=alice),
                await browser.get(
                    f"/p/v4/insee/sirene/unites_legales/{UNKNOWN_SIREN}", headers=alice
                ),
                await browser.get("/p/v4/insee/sirene/unites_legales/123456789", headers=alice),
                await browser.get(
                    f"/p/v4/insee/sirene/unites_legales/{SIREN}?recipient=1", headers=alice
                ),
                await browser.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}"),
                await browser.get("/client"),
                await browser.get("/client"),
            ]
            assert clients[0] is clients[1]
            assert clients[0] is getattr(app.state, STATE_KEY)
    assert [200, 200, 404, 422, 400, 401, 200, 200] == [r.status_code for r in responses]
    assert SIREN == responses[0].json()["data"]["siren"]
    assert {"data": {"siret": SIRET}} == responses[1].json()
    assert {"base_url": upstream_url} == responses[-1].json()
    scan_for_token(responses, TOKEN)
    assert [
        ("api_entreprise_v4_insee_unites_legales", 200),
        ("api_entreprise_v4_insee_etablissements", 200),
        ("api_entreprise_v4_insee_unites_legales", 404),
    ] == [(r.operation_id, r.status) for r in emulator.requests]
    with pytest.raises(RuntimeError, match="closed"):
        await clients[0].call(UL, siren=SIREN)
