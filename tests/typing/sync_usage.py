"""Type-checked, never run: the synchronous ``Client`` as users write it (mypy --strict)."""

from __future__ import annotations

import pathlib
from concurrent.futures import ThreadPoolExecutor

from apientreprise_async import Client, NotFoundError, Response, records
from apientreprise_async.records import insee, urssaf


def typed_usage() -> None:
    """The same Response[Record] types as AsyncClient, without await."""
    with Client(
        token="x.y.z", recipient="13002526500013", context="aides", object="d-42"
    ) as client:
        unite: Response[insee.UniteLegale] = client.insee.unites_legales("418166096")
        siren: str = unite.data.siren
        old: Response[insee.UniteLegaleV3] = client.insee.unites_legales("418166096", version=3)
        old_siren: str = old.data.siren
        vigilance = client.urssaf.attestation_vigilance("418166096", context="marché 12")
        attestation: urssaf.AttestationVigilance = vigilance.data
        privileges: tuple[str, ...] = client.privileges().data.privileges
        raw = client.call("api_entreprise_v4_insee_unites_legales", siren="418166096")
        path: pathlib.Path = client.download("https://example.test/a.pdf", "out/")
        other: Client = client.with_options(object="d-43")
        try:
            client.insee.etablissements("41816609600051")
        except NotFoundError as exc:
            status: int | None = exc.http_status
        print(siren, old_siren, attestation, privileges, raw.data, path, other, status)


def fan_out(client: Client, sirens: list[str]) -> list[records.insee.UniteLegale]:
    """One client shared by a pool of threads."""
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda s: client.insee.unites_legales(s).data, sirens))
