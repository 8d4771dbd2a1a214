"""The README's first example, type-checked (never run: it needs a real token)."""

from __future__ import annotations

import anyio

from apientreprise_async import AsyncClient


async def main() -> None:
    """Same lines as the README."""
    async with AsyncClient(recipient="13002526500013", context="Aides", object="dossier-42") as api:
        ul = await api.insee.unites_legales("418 166 096")  # token: API_ENTREPRISE_TOKEN
        print(ul.data.personne_morale_attributs.raison_sociale, ul.rate_limit)


anyio.run(main)
