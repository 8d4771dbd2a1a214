"""Type-checked, never run: the FastAPI integration as users write it (mypy --strict)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse

from apientreprise_async import AsyncClient, NotFoundError
from apientreprise_async.fastapi import (
    ApiEntrepriseClient,
    ApiEntrepriseSettings,
    ProxyOperation,
    Traceability,
    UserRateLimit,
    error_response,
    get_client,
    install_exception_handlers,
    make_lifespan,
    make_proxy_router,
)


async def current_agent(x_agent: Annotated[str, Header()]) -> str:
    """An authentication dependency."""
    return x_agent


async def tracing(case_id: str, agent: Annotated[str, Depends(current_agent)]) -> Traceability:
    """Traceability from the agent and the case."""
    return Traceability(object=case_id, context=f"instruction {agent}")


settings = ApiEntrepriseSettings.from_env()
app = FastAPI(lifespan=make_lifespan(settings, max_wait=2.0))
install_exception_handlers(app, expose_upstream_errors=False)
app.include_router(
    make_proxy_router(
        [
            "api_entreprise_v4_insee_unites_legales",
            ProxyOperation("api_entreprise_v4_insee_etablissements", fields=["siret", "adresse"]),
            ProxyOperation(
                "api_entreprise_v4_insee_sieges_unites_legales",
                fields=lambda data: {"siret": data["siret"]},
                path="/sieges/{siren}",
            ),
        ],
        tracing=tracing,
        rate_limit=UserRateLimit(calls=30, period=60.0, key=current_agent),
    ),
    prefix="/cases/{case_id}",
)


@app.get("/mine/{siren}")
async def mine(siren: str, client: ApiEntrepriseClient) -> dict[str, Any]:
    """A route of one's own with the shared client."""
    response = await client.call("api_entreprise_v4_insee_unites_legales", siren=siren)
    return {"status": response.http_status}


@app.get("/explicit/{siren}")
async def explicit(
    siren: str, request: Request, client: Annotated[AsyncClient, Depends(get_client)]
) -> JSONResponse | dict[str, str]:
    """Handling one error locally with the same mapping as the handlers."""
    try:
        await client.call("api_entreprise_v4_insee_unites_legales", siren=siren)
    except NotFoundError as exc:
        return error_response(exc)
    return {"siren": siren}
