"""The README's Redis example and the backend's options, type-checked (never run)."""

from __future__ import annotations

import redis.asyncio as aioredis

from apientreprise_async import AsyncClient, Governor, Limits
from apientreprise_async.backends import GovernorBackend
from apientreprise_async.redis import FailMode, RedisBackend, RedisUnavailableError


async def main(token: str) -> None:
    """Same lines as the README."""
    async with (
        RedisBackend("redis://localhost:6379/0", prefix="myapp", workers=4) as backend,
        AsyncClient(token, governor=Governor(backend=backend)) as client,
    ):
        await client.insee.unites_legales("418166096")


async def options(client: aioredis.Redis) -> GovernorBackend:
    """A caller-owned client and every option."""
    mode: FailMode = "local"
    backend = RedisBackend(
        client,
        prefix="{myapp}",
        fail_mode=mode,
        workers=8,
        key=b"shared secret",
        ip_scope="10.0.0.7",
        lease=120.0,
        idle_ttl=600.0,
        recheck=2.0,
        timeout=1.0,
    )
    try:
        async with AsyncClient(token="x.y.z", governor=Governor(Limits(), backend=backend)):
            pass
    except RedisUnavailableError as exc:
        print(exc)
    await backend.aclose()
    return backend
