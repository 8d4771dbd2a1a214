"""Type-checked, never run: typed methods and records as users write them (mypy --strict)."""

from __future__ import annotations

import datetime as dt
import pathlib

from apientreprise_async import (
    AsyncClient,
    Response,
    Timestamp,
    UnexpectedPayloadError,
    UnfitFieldError,
    records,
)
from apientreprise_async.records import dgfip, gip_mds, infogreffe, insee, urssaf


async def typed_usage() -> None:
    """Methods return Response[Record]; nested fields keep their types."""
    async with AsyncClient(
        token="x.y.z", recipient="13002526500013", context="aides", object="dossier-42"
    ) as client:
        unite: Response[insee.UniteLegale] = await client.insee.unites_legales("418166096")
        name: str | None = unite.data.personne_morale_attributs.raison_sociale
        naf: str | None = unite.data.activite_principale.code
        upper: int | None = unite.data.tranche_effectif_salarie.a
        siren: str = unite.data.siren
        cached: bool | None = unite.cached

        old: Response[insee.UniteLegaleV3] = await client.insee.unites_legales(
            "418166096", version=3
        )
        old_siren: str = old.data.siren

        etab = await client.insee.etablissements("41816609600051", fresh=True)
        city: str | None = etab.data.adresse.libelle_commune
        head_office: bool = etab.data.siege_social

        vigilance = await client.urssaf.attestation_vigilance("418166096", context="marché 12")
        valid_until: dt.date | None = vigilance.data.date_fin_validite
        status_code: str = vigilance.data.entity_status.code
        attestation: urssaf.AttestationVigilance = vigilance.data

        liasses = await client.dgfip.liasses_fiscales("418166096", 2023)
        forms: tuple[dgfip.Declaration, ...] = liasses.data.declarations

        officers = await client.infogreffe.mandataires_sociaux("418166096")
        for item in officers.data:
            person: infogreffe.MandataireSocial = item.data
            fonction: str | None = person.fonction

        headcount = await client.gip_mds.annee("41816609600051", 2023, 3, nature_effectif="boeth")
        by_name = await client.gip_mds.annee("41816609600051", month=3, year=2023)
        old_name = await client.gip_mds.effectifs_mensuels("41816609600051", 3, 2023)
        monthly: tuple[gip_mds.EffectifsMensuels, ...] = (by_name.data, old_name.data)
        privileges = await client.privileges()
        scopes: tuple[str, ...] = privileges.data.privileges
        extra: object = unite.data.extra.get("nouveau_champ")
        base: records.Record = headcount.data

        if vigilance.data.document_url is not None:
            saved: pathlib.Path = await client.download(
                vigilance.data.document_url, pathlib.Path("attestations")
            )

        try:
            await client.insee.successions("41816609600051", strict=True)
        except UnexpectedPayloadError as exc:
            problems: tuple[str, ...] = exc.problems
            received: Response[object] | None = exc.response
            status_of_answer: int | None = exc.http_status
            del received, status_of_answer

        # Lenient by default: what did not fit is named, and kept as sent.
        drift: tuple[str, ...] = unite.problems
        kept: object = unite.data.unfit.get("siren")
        safe: str | None = getattr(unite.data, "siren", None)
        try:
            siren = unite.data.siren
        except UnfitFieldError as unfit:
            sent: object = unfit.value
            del sent
        state: insee.UniteLegaleEtatAdministratif = unite.data.etat_administratif
        active: bool = state == "A" and state.known
        created: Timestamp | None = unite.data.date_creation
        when: dt.datetime | None = None if created is None else created.datetime
        stats_unfit: int = client.stats().unfit_answers
        del drift, kept, safe, active, when, stats_unfit

    del name, naf, upper, siren, cached, old_siren, city, head_office, valid_until
    del status_code, attestation, forms, fonction, scopes, extra, base, saved, problems, monthly
