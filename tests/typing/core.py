"""Type-checked, never run: the core API as users write it (mypy --strict)."""

from __future__ import annotations

from apientreprise_async import (
    AsyncClient,
    Limits,
    NotFoundError,
    RateLimitError,
    Response,
    Timeouts,
)


async def core_usage() -> None:
    """Generic calls, errors and settings keep precise types."""
    limits = Limits(period=60.0)
    async with AsyncClient(
        token="x.y.z",
        recipient="13002526500013",
        context="aides publiques",
        object="dossier-42",
        timeouts=Timeouts(json=10.0),
        limits=limits,
    ) as client:
        response: Response[object] = await client.call(
            "api_entreprise_v4_insee_unites_legales", siren="418166096"
        )
        status: int = response.http_status
        remaining: int | None = response.rate_limit.remaining if response.rate_limit else None
        try:
            await client.get("/v4/insee/sirene/unites_legales/418166096")
        except RateLimitError as exc:
            wait: float | None = exc.retry_after
            del wait
        except NotFoundError as exc:
            code: str | None = exc.first_error_code
            del code
        other: AsyncClient = client.with_options(object="dossier-43")
        del other, status, remaining
