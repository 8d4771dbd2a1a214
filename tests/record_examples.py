"""Payloads written for this project: a few by hand, the rest built from the record types.

Everything here is fictional (SIREN 418166096 is the API's own public example)
and is present on a fresh clone, so these tests never need ``../shared``.
"""

from __future__ import annotations

import datetime as dt
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

import attrs

from apientreprise_async import OpenEnum, Timestamp
from apientreprise_async.records import Record

SIREN = "418166096"
SIRET = "41816609600051"

#: The v4 INSEE legal unit of a fictional cooperative.
UNITE_LEGALE: dict[str, Any] = {
    "siren": SIREN,
    "rna": None,
    "siret_siege_social": SIRET,
    "type": "personne_morale",
    "personne_morale_attributs": {"raison_sociale": "COOPERATIVE DES TESTS", "sigle": "CDT"},
    "personne_physique_attributs": {
        "pseudonyme": None,
        "prenom_usuel": None,
        "prenom_1": None,
        "prenom_2": None,
        "prenom_3": None,
        "prenom_4": None,
        "nom_usage": None,
        "nom_naissance": None,
        "sexe": None,
    },
    "categorie_entreprise": "PME",
    "status_diffusion": "diffusible",
    "diffusable_commercialement": True,
    "forme_juridique": {"code": "5499", "libelle": "Société à responsabilité limitée"},
    "activite_principale": {
        "code": "62.01Z",
        "libelle": "Programmation informatique",
        "nomenclature": "NAFRev2",
    },
    "tranche_effectif_salarie": {
        "code": "12",
        "intitule": "20 à 49 salariés",
        "date_reference": "2022",
        "de": 20,
        "a": 49,
    },
    "etat_administratif": "A",
    "economie_sociale_et_solidaire": True,
    "date_creation": 1262300400,
    "activite_principale_naf_rev2": {
        "code": "62.01Z",
        "libelle": "Programmation informatique",
        "nomenclature": "NAFRev2",
    },
    "date_cessation": None,
}

#: The v4 URSSAF vigilance certificate of the same company.
ATTESTATION_VIGILANCE: dict[str, Any] = {
    "entity_status": {
        "code": "ok",
        "libelle": "Attestation délivrable",
        "description": "Exemple écrit pour les tests du projet.",
    },
    "date_debut_validite": "2024-05-01",
    "date_fin_validite": "2024-10-31",
    "code_securite": "EXEMPLE123",
    "document_url": "https://storage.example.test/attestations/vigilance.pdf",
    "document_url_expires_in": 86400,
}

#: The v4 DGFIP tax certificate.
ATTESTATION_FISCALE: dict[str, Any] = {
    "document_url": "https://storage.example.test/attestations/fiscale.pdf",
    "document_url_expires_in": 86400,
    "date_delivrance_attestation": "2024-05-02",
    "date_periode_analysee": "2024-04-30",
}

#: Two officers from Infogreffe (a list answer: each item has data, links, meta).
MANDATAIRES_SOCIAUX: list[dict[str, Any]] = [
    {
        "data": {
            "type": "personne_physique",
            "fonction": "GERANT",
            "nom": "MARTIN",
            "prenom": "Camille",
            "date_naissance": "1980-02-29",
            "date_naissance_timestamp": 320626800,
            "lieu_naissance": "RENNES",
            "pays_naissance": "FRANCE",
            "code_pays_naissance": "FR",
            "nationalite": "FRANCAISE",
            "code_nationalite": "FR",
        },
        "links": {},
        "meta": {},
    },
    {
        "data": {
            "numero_identification": "552049447",
            "type": "personne_morale",
            "fonction": "COMMISSAIRE AUX COMPTES TITULAIRE",
            "raison_sociale": "AUDIT EXEMPLE",
            "code_greffe": "3501",
            "libelle_greffe": "RENNES",
        },
        "links": {},
        "meta": {},
    },
]


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0], len(args) != len(get_args(tp))
    return tp, False


def example_value(tp: Any, name: str = "valeur") -> Any:
    """A JSON value of type ``tp``, deterministic and fictional."""
    tp, _ = _strip_optional(tp)
    origin = get_origin(tp)
    if origin is tuple:
        return [example_value(get_args(tp)[0], name)]
    if tp is Mapping or origin is Mapping:
        return {"exemple": name}
    if isinstance(tp, type) and issubclass(tp, Record):
        return example_payload(tp)
    if isinstance(tp, type) and issubclass(tp, OpenEnum):
        return next(iter(tp)).value
    if tp is Timestamp:
        return 1_711_872_000
    if tp is str:
        return f"exemple-{name}"
    if tp is bool:
        return True
    if tp is int:
        return 42
    if tp is float:
        return 12.5
    if tp is dt.datetime:
        return "2024-03-31T10:15:00+02:00"
    if tp is dt.date:
        return "2024-03-31"
    return f"exemple-{name}"


def example_payload(cls: type[Record], *, nulls: bool = False) -> dict[str, Any]:
    """A payload for ``cls``: every field set, or (``nulls``) optional ones null."""
    attrs.resolve_types(cls)
    out: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if field.name in ("extra", "unfit", "_absent"):
            continue
        _, optional = _strip_optional(field.type)
        out[field.name] = None if nulls and optional else example_value(field.type, field.name)
    return out


def example_data(record: Any) -> Any:
    """The ``data`` of an answer for an ``Endpoint.record`` (a class or ``tuple[Class, ...]``)."""
    return example_value(record, "data")
