"""The README's first example, type-checked (tests/test_readme.py runs it)."""

from __future__ import annotations

import anyio

from apientreprise_async import AsyncClient


async def main() -> None:
    """Same lines as the README."""
    async with AsyncClient() as api:  # token, recipient, context, object: API_ENTREPRISE_*
        ul = await api.insee.unites_legales("832147656")
        print(ul.data.personne_morale_attributs.raison_sociale, ul.rate_limit)


anyio.run(main)
