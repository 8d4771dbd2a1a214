"""A FastAPI back end that serves API Entreprise data to a browser front end.

API Entreprise forbids CORS: the browser calls this server, which holds the
token and decides the traceability parameters from the signed-in agent and
the case they are working on.

Run it from the repository root::

    pip install -e '.[fastapi]'
    uvicorn examples.fastapi_app:app

Without ``API_ENTREPRISE_TOKEN`` it answers from the bundled emulator
(fictional companies, no network). With a token it calls the real API; set
``API_ENTREPRISE_RECIPIENT`` (your administration's SIRET) and
``API_ENTREPRISE_CONTEXT`` too. ``FRONTEND_ORIGIN`` (e.g.
``https://instruction.example.gouv.fr``) allows that one origin through CORS.

Then open http://127.0.0.1:8000/ for a small page that looks companies up
through the proxy, or, as agent Alice working on case ``dossier-42``::

    curl -H 'Authorization: Bearer demo-alice' \\
        http://127.0.0.1:8000/cases/dossier-42/entreprises/832147656

Every error, whoever raises it, has one shape: ``{"detail": {"error": <slug>,
"message": <text>, ...}}``; the page shows ``detail.message``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

import attrs
from fastapi import Depends, FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from apientreprise_async.fastapi import (
    ApiEntrepriseClient,
    ApiEntrepriseSettings,
    ProxyOperation,
    Traceability,
    UserRateLimit,
    install_exception_handlers,
    make_lifespan,
    make_proxy_router,
)

logger = logging.getLogger("fastapi_app")

# Stand-ins for your session store and case database.
SESSIONS = {"demo-alice": "alice", "demo-bob": "bob"}
CASES = {"dossier-42": "alice", "dossier-77": "bob"}
DEMO_RECIPIENT = "13002526500013"  # DINUM's SIRET, as in the API's examples


async def current_agent(
    credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))
    ],
) -> str:
    """The signed-in agent (replace with your real authentication)."""
    agent = SESSIONS.get(credentials.credentials) if credentials else None
    if agent is None:
        raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})
    return agent


async def tracing(case_id: str, agent: Annotated[str, Depends(current_agent)]) -> Traceability:
    """Traceability of a proxied call: the case the agent handles, checked server side."""
    if CASES.get(case_id) != agent:
        raise HTTPException(403, "this case is not yours")
    # recipient and context come from API_ENTREPRISE_RECIPIENT / API_ENTREPRISE_CONTEXT.
    return Traceability(object=case_id)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
    """One client for the app; the emulator stands in for the API when there is no token."""
    settings = ApiEntrepriseSettings.from_env()
    extra: dict[str, Any] = {}
    if settings.token is None:
        from apientreprise_async.testing import Emulator

        emulator = Emulator()
        settings = attrs.evolve(
            settings,
            token=emulator.add_token("emulator-demo-token"),
            recipient=settings.recipient or DEMO_RECIPIENT,
            context=settings.context or "Démonstration",
        )
        extra["transport"] = emulator.transport()
        logger.warning("API_ENTREPRISE_TOKEN is not set: answering from the emulator")
    async with make_lifespan(settings, **extra)(app) as state:
        yield state


app = FastAPI(title="API Entreprise proxy example", lifespan=lifespan)
install_exception_handlers(app)

if origin := os.environ.get("FRONTEND_ORIGIN"):
    # One listed origin, never "*": only your own front end may read these answers.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[origin],
        allow_methods=["GET"],
        allow_headers=["Authorization"],
    )

app.include_router(
    make_proxy_router(
        [
            ProxyOperation(
                "api_entreprise_v4_insee_unites_legales",
                path="/entreprises/{siren}",
                fields=[
                    "siren",
                    "personne_morale_attributs.raison_sociale",
                    "categorie_entreprise",
                    "etat_administratif",
                    "forme_juridique.libelle",
                ],
            ),
            ProxyOperation(
                "api_entreprise_v4_insee_etablissements",
                path="/etablissements/{siret}",
                fields=["siret", "siege_social", "etat_administratif", "adresse"],
            ),
        ],
        tracing=tracing,
        rate_limit=UserRateLimit(calls=30, period=60.0, key=current_agent),
    ),
    prefix="/cases/{case_id}",
)


@app.get("/cases/{case_id}/fiches/{siren}")
async def fiche(
    siren: str,
    client: ApiEntrepriseClient,
    trace: Annotated[Traceability, Depends(tracing)],
) -> dict[str, Any]:
    """A route of your own: two calls combined server side, errors answered by the handlers."""
    ul = await client.call(
        "api_entreprise_v4_insee_unites_legales", siren=siren, object=trace.object
    )
    siege = await client.call(
        "api_entreprise_v4_insee_sieges_unites_legales", siren=siren, object=trace.object
    )
    return {
        "raison_sociale": ul.data.personne_morale_attributs.raison_sociale,
        "commune_du_siege": siege.data.adresse.libelle_commune,
    }


# A front end in one page: no framework, no build step. It signs in with a demo
# session, calls the proxy with fetch() and shows either the company or the
# error's message (one body shape for every error, so one code path).
PAGE = """<!doctype html>
<html lang="fr">
<head>
<meta charset="utf-8">
<title>Recherche d'entreprise</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }
  label { display: block; margin: .5rem 0; }
  #error { color: #b00020; }
</style>
</head>
<body>
<h1>Recherche d'entreprise</h1>
<form id="lookup">
  <label>Agent
    <select id="session">
      <option value="demo-alice">Alice</option>
      <option value="demo-bob">Bob</option>
    </select>
  </label>
  <label>Dossier <input id="case" value="dossier-42" required></label>
  <label>SIREN <input id="siren" inputmode="numeric" required></label>
  <button type="submit">Rechercher</button>
</form>
<dl id="result" hidden>
  <dt>Raison sociale</dt><dd id="raison_sociale"></dd>
  <dt>État administratif</dt><dd id="etat"></dd>
  <dt>Forme juridique</dt><dd id="forme"></dd>
</dl>
<p id="error" role="alert" hidden></p>
<script>
const form = document.getElementById("lookup");
const result = document.getElementById("result");
const error = document.getElementById("error");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  result.hidden = true;
  error.hidden = true;
  const caseId = encodeURIComponent(document.getElementById("case").value.trim());
  const siren = encodeURIComponent(document.getElementById("siren").value.trim());
  const session = document.getElementById("session").value;
  const answer = await fetch(`/cases/${caseId}/entreprises/${siren}`, {
    headers: { Authorization: `Bearer ${session}` },
  });
  const body = await answer.json();
  if (!answer.ok) {
    error.textContent = `${answer.status} ${body.detail.error}: ${body.detail.message}`;
    error.hidden = false;
    return;
  }
  const data = body.data;
  document.getElementById("raison_sociale").textContent =
    data.personne_morale_attributs?.raison_sociale ?? "";
  document.getElementById("etat").textContent = data.etat_administratif ?? "";
  document.getElementById("forme").textContent = data.forme_juridique?.libelle ?? "";
  result.hidden = false;
});
</script>
</body>
</html>
"""


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> str:
    """The front end: a form that calls the proxy from the browser."""
    return PAGE
