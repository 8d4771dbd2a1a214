"""The emulator's built-in companies: fictional, written for this project.

Names, people and addresses are invented; SIREN and SIRET numbers pass the
Luhn check so the client's local validation accepts them. The payload
builders follow the shapes of the real API (v3 and v4 INSEE, attestations,
VIES) so records built by the client's converter fit them.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from apientreprise_async._catalogue import Endpoint

__all__ = [
    "COMPANIES",
    "PROVIDERS",
    "PUBLIC_COMPANIES",
    "Company",
    "Establishment",
    "builtin_answer",
    "pdf_document",
    "tva_number",
]

#: Catalogue provider -> (two-digit error-code prefix, provider name in ``meta``),
#: as the OpenAPI error examples give them.
PROVIDERS: Mapping[str, tuple[str, str]] = {
    "urssaf": ("04", "ACOSS"),
    "ademe": ("19", "ADEME"),
    "banque_de_france": ("17", "Banque de France"),
    "carif_oref": ("33", "CARIF-OREF"),
    "cibtp": ("38", "CIBTP"),
    "cnetp": ("08", "CNETP"),
    "data_subvention": ("52", "DataSubvention"),
    "douanes": ("16", "DGDDI"),
    "dgfip": ("03", "DGFIP - Adélie"),
    "european_commission": ("28", "Commission Européenne"),
    "fabrique_numerique_ministeres_sociaux": ("14", "Fabrique numérique des Ministères Sociaux"),
    "fntp": ("12", "FNTP"),
    "gip_mds": ("31", "GIP-MDS"),
    "infogreffe": ("02", "Infogreffe"),
    "inpi": ("34", "INPI - RNE"),
    "insee": ("01", "INSEE"),
    "ministere_interieur": ("21", "MI"),
    "msa": ("10", "MSA"),
    "opqibi": ("11", "OPQIBI"),
    "probtp": ("09", "ProBTP"),
    "qualibat": ("06", "Qualibat"),
    "qualifelec": ("32", "Qualifelec"),
    "cma_france": ("22", "RNM"),
    "djepva": ("29", "DJEPVA"),
}


@attrs.frozen
class Establishment:
    """One fictional établissement (a SIRET) with its address."""

    siret: str
    siege: bool
    numero_voie: str | None
    type_voie: str
    libelle_voie: str
    code_postal: str
    libelle_commune: str
    code_commune: str
    created: dt.date
    closed: dt.date | None = None
    enseigne: str | None = None
    tranche: tuple[str, int | None, int | None, str] = ("NN", None, None, "Unités non employeuses")


@attrs.frozen
class Company:
    """One fictional unité légale (a SIREN) and its établissements."""

    siren: str
    raison_sociale: str | None
    sigle: str | None
    forme_juridique: tuple[str, str]
    naf: tuple[str, str]
    categorie: str | None
    created: dt.date
    establishments: tuple[Establishment, ...]
    rna: str | None = None
    person: tuple[str, str, str] | None = None  # (prénoms, nom de naissance, sexe)
    diffusible: bool = True
    ess: bool | None = False
    ceased: dt.date | None = None
    tranche: tuple[str, int | None, int | None, str] = ("NN", None, None, "Unités non employeuses")

    @property
    def siege(self) -> Establishment:
        """The head office."""
        return next(e for e in self.establishments if e.siege)

    @property
    def name(self) -> str:
        """The name as the postal address prints it."""
        if self.raison_sociale:
            return self.raison_sociale
        assert self.person is not None
        return f"{self.person[0].split()[0]} {self.person[1]}"


COMPANIES: tuple[Company, ...] = (
    Company(
        siren="832147656",
        raison_sociale="ATELIERS MECANIQUES DU VAL DE LOIRE",
        sigle="AMVL",
        forme_juridique=("5710", "SAS, société par actions simplifiée"),
        naf=("25.62B", "Mécanique industrielle"),
        categorie="PME",
        created=dt.date(2017, 9, 12),
        tranche=("21", 50, 99, "50 à 99 salariés"),
        establishments=(
            Establishment(
                siret="83214765600017",
                siege=True,
                numero_voie="14",
                type_voie="RUE",
                libelle_voie="DES TANNEURS",
                code_postal="45000",
                libelle_commune="ORLEANS",
                code_commune="45234",
                created=dt.date(2017, 9, 12),
                tranche=("12", 20, 49, "20 à 49 salariés"),
            ),
            Establishment(
                siret="83214765600025",
                siege=False,
                numero_voie="3",
                type_voie="ALLEE",
                libelle_voie="DES CHARMILLES",
                code_postal="37100",
                libelle_commune="TOURS",
                code_commune="37261",
                created=dt.date(2020, 2, 3),
                enseigne="AMVL TOURAINE",
                tranche=("11", 10, 19, "10 à 19 salariés"),
            ),
        ),
    ),
    Company(
        siren="794203869",
        raison_sociale="COOPERATIVE LAITIERE DES MONTS DU FOREZ",
        sigle="CLMF",
        forme_juridique=("6317", "Société coopérative agricole"),
        naf=("10.51C", "Fabrication de fromage"),
        categorie="PME",
        created=dt.date(2013, 5, 27),
        ess=True,
        tranche=("22", 100, 199, "100 à 199 salariés"),
        establishments=(
            Establishment(
                siret="79420386900019",
                siege=True,
                numero_voie="2",
                type_voie="ROUTE",
                libelle_voie="DE SAINT-BONNET",
                code_postal="42600",
                libelle_commune="MONTBRISON",
                code_commune="42147",
                created=dt.date(2013, 5, 27),
                enseigne="FROMAGERIE DES MONTS",
                tranche=("22", 100, 199, "100 à 199 salariés"),
            ),
            Establishment(
                siret="79420386900035",
                siege=False,
                numero_voie="48",
                type_voie="COURS",
                libelle_voie="FAURIEL",
                code_postal="42100",
                libelle_commune="SAINT-ETIENNE",
                code_commune="42218",
                created=dt.date(2015, 10, 1),
                closed=dt.date(2022, 12, 31),
                enseigne="BOUTIQUE DES MONTS",
            ),
        ),
    ),
    Company(
        siren="881054324",
        raison_sociale=None,
        sigle=None,
        forme_juridique=("1000", "Entrepreneur individuel"),
        naf=("10.71C", "Boulangerie et boulangerie-pâtisserie"),
        categorie="PME",
        created=dt.date(2020, 1, 6),
        person=("CAMILLE JULIETTE", "LEROUX", "F"),
        diffusible=False,
        ess=None,
        tranche=("01", 1, 2, "1 ou 2 salariés"),
        establishments=(
            Establishment(
                siret="88105432400010",
                siege=True,
                numero_voie="7",
                type_voie="RUE",
                libelle_voie="DE LA MONNAIE",
                code_postal="35000",
                libelle_commune="RENNES",
                code_commune="35238",
                created=dt.date(2020, 1, 6),
                enseigne="AU PAIN DE LA MONNAIE",
                tranche=("01", 1, 2, "1 ou 2 salariés"),
            ),
        ),
    ),
    Company(
        siren="802775197",
        raison_sociale="LES JARDINS PARTAGES DE LA CROIX-ROUSSE",
        sigle="JPCR",
        forme_juridique=("9220", "Association déclarée"),
        naf=("94.99Z", "Autres organisations fonctionnant par adhésion volontaire"),
        categorie="PME",
        created=dt.date(2014, 4, 15),
        rna="W691087452",
        ess=True,
        tranche=("02", 3, 5, "3 à 5 salariés"),
        establishments=(
            Establishment(
                siret="80277519700014",
                siege=True,
                numero_voie="21",
                type_voie="RUE",
                libelle_voie="D'AUSTERLITZ",
                code_postal="69004",
                libelle_commune="LYON 4EME",
                code_commune="69384",
                created=dt.date(2014, 4, 15),
                tranche=("02", 3, 5, "3 à 5 salariés"),
            ),
        ),
    ),
    Company(
        siren="913508263",
        raison_sociale="INFORMATIQUE PYRENEES SERVICES",
        sigle=None,
        forme_juridique=("5499", "Société à responsabilité limitée (sans autre indication)"),
        naf=("62.01Z", "Programmation informatique"),
        categorie="PME",
        created=dt.date(2021, 3, 1),
        ceased=dt.date(2024, 6, 30),
        establishments=(
            Establishment(
                siret="91350826300013",
                siege=True,
                numero_voie="5",
                type_voie="PLACE",
                libelle_voie="CLEMENCEAU",
                code_postal="64000",
                libelle_commune="PAU",
                code_commune="64445",
                created=dt.date(2021, 3, 1),
                closed=dt.date(2024, 6, 30),
            ),
        ),
    ),
)

#: Real public bodies the emulator also knows, so that an example runs unchanged against it
#: and against the API: their identifiers and names are the public ones (the rest is
#: simplified). DINUM's SIRET is also the ``recipient`` of the API's own examples.
PUBLIC_COMPANIES: tuple[Company, ...] = (
    Company(
        siren="130025265",
        raison_sociale="DIRECTION INTERMINISTERIELLE DU NUMERIQUE",
        sigle="DINUM",
        forme_juridique=("7120", "Service central d'un ministère"),
        naf=("84.11Z", "Administration publique générale"),
        categorie="GE",
        created=dt.date(2019, 10, 25),
        ess=None,
        establishments=(
            Establishment(
                siret="13002526500013",
                siege=True,
                numero_voie="20",
                type_voie="AVENUE",
                libelle_voie="DE SEGUR",
                code_postal="75007",
                libelle_commune="PARIS 7",
                code_commune="75107",
                created=dt.date(2019, 10, 25),
            ),
        ),
    ),
)

_KNOWN = (*COMPANIES, *PUBLIC_COMPANIES)
_BY_SIREN = {c.siren: c for c in _KNOWN}
_BY_SIRET = {e.siret: (c, e) for c in _KNOWN for e in c.establishments}
_BY_RNA = {c.rna: c for c in _KNOWN if c.rna}
# A fixed "last update" so answers are reproducible: 2025-01-06 00:00 Paris.
_UPDATED = 1736118000


def _epoch(day: dt.date | None) -> int | None:
    """Midnight in Paris (winter offset) as the INSEE payloads give dates."""
    if day is None:
        return None
    return calendar.timegm(day.timetuple()) - 3600


def tva_number(siren: str) -> str:
    """The French intra-community VAT number of a SIREN."""
    key = (12 + 3 * (int(siren) % 97)) % 97
    return f"FR{key:02d}{siren}"


def _tranche(value: tuple[str, int | None, int | None, str]) -> dict[str, Any]:
    code, low, high, label = value
    return {
        "de": low,
        "a": high,
        "code": code,
        "date_reference": None if code == "NN" else "2022",
        "intitule": label,
    }


def _diffusion(company: Company) -> str:
    return "diffusible" if company.diffusible else "partiellement_diffusible"


def _unite_legale(company: Company, version: int) -> dict[str, Any]:
    person = company.person
    first_names = person[0].split() if person else []
    data: dict[str, Any] = {
        "siren": company.siren,
        "rna": company.rna,
        "siret_siege_social": company.siege.siret,
        "categorie_entreprise": company.categorie,
        "status_diffusion": _diffusion(company),
        "diffusable_commercialement": company.diffusible,
        "type": "personne_physique" if person else "personne_morale",
        "personne_morale_attributs": {
            "raison_sociale": company.raison_sociale,
            "sigle": company.sigle,
        },
        "personne_physique_attributs": {
            "pseudonyme": None,
            "prenom_usuel": first_names[0] if first_names else None,
            "prenom_1": first_names[0] if first_names else None,
            "prenom_2": first_names[1] if len(first_names) > 1 else None,
            "prenom_3": None,
            "prenom_4": None,
            "nom_usage": None,
            "nom_naissance": person[1] if person else None,
            "sexe": person[2] if person else None,
        },
        "forme_juridique": {
            "code": company.forme_juridique[0],
            "libelle": company.forme_juridique[1],
        },
        "activite_principale": {
            "code": company.naf[0],
            "nomenclature": "NAFRev2",
            "libelle": company.naf[1],
        },
        "tranche_effectif_salarie": _tranche(company.tranche),
        "etat_administratif": "C" if company.ceased else "A",
        "economie_sociale_et_solidaire": company.ess,
        "date_cessation": _epoch(company.ceased),
        "date_creation": _epoch(company.created),
    }
    if version >= 4:
        data["activite_principale_naf_rev2"] = dict(data["activite_principale"])
    return data


def _adresse(company: Company, est: Establishment) -> dict[str, Any]:
    street = " ".join(x for x in (est.numero_voie, est.type_voie, est.libelle_voie) if x)
    return {
        "status_diffusion": _diffusion(company),
        "complement_adresse": None,
        "numero_voie": est.numero_voie,
        "indice_repetition_voie": None,
        "type_voie": est.type_voie,
        "libelle_voie": est.libelle_voie,
        "code_postal": est.code_postal,
        "libelle_commune": est.libelle_commune,
        "libelle_commune_etranger": None,
        "distribution_speciale": None,
        "code_commune": est.code_commune,
        "code_cedex": None,
        "libelle_cedex": None,
        "code_pays_etranger": None,
        "libelle_pays_etranger": None,
        "acheminement_postal": {
            "l1": company.name,
            "l2": "",
            "l3": "",
            "l4": street,
            "l5": "",
            "l6": f"{est.code_postal} {est.libelle_commune}",
            "l7": "FRANCE",
        },
    }


def _etablissement(company: Company, est: Establishment, version: int) -> dict[str, Any]:
    unite = _unite_legale(company, version)
    for key in ("date_cessation",):
        unite.pop(key)
    data: dict[str, Any] = {
        "siret": est.siret,
        "siege_social": est.siege,
        "etat_administratif": "F" if est.closed else "A",
        "date_fermeture": _epoch(est.closed),
        "enseigne": est.enseigne,
        "status_diffusion": _diffusion(company),
        "activite_principale": dict(unite["activite_principale"]),
        "tranche_effectif_salarie": _tranche(est.tranche),
        "diffusable_commercialement": company.diffusible,
        "date_creation": _epoch(est.created),
        "unite_legale": unite,
        "adresse": _adresse(company, est),
    }
    if version >= 4:
        data["activite_principale_naf_rev2"] = dict(unite["activite_principale"])
    return data


#: The document endpoints the built-in data answers, with the PDF's title.
_DOCUMENTS: Mapping[str, str] = {
    "api_entreprise_v3_dgfip_attestations_fiscales": "Attestation de régularité fiscale",
    "api_entreprise_v4_dgfip_attestations_fiscales": "Attestation de régularité fiscale",
    "api_entreprise_v3_acoss_attestations_sociales": "Attestation de vigilance",
    "api_entreprise_v4_acoss_attestations_sociales": "Attestation de vigilance",
}

Answer = tuple[int, dict[str, Any]]
#: ``(document title, subject) -> (document_url, seconds before it expires)``
DocumentMaker = Callable[[str, str], tuple[str, int]]


def _ul(op: str, values: Mapping[str, str], base: str, version: int) -> Answer | None:
    company = _BY_SIREN.get(values.get("siren", ""))
    if company is None or ("diffusables" in op and not company.diffusible):
        return None
    v = f"v{version}"
    siege = company.siege.siret
    links = {
        "siege_social": f"{base}/{v}/insee/sirene/etablissements/{siege}",
        "siege_social_adresse": f"{base}/{v}/insee/sirene/etablissements/{siege}/adresse",
    }
    meta = {"date_derniere_mise_a_jour": _UPDATED, "redirect_from_siren": None}
    return 200, {"data": _unite_legale(company, version), "links": links, "meta": meta}


def _etab(op: str, values: Mapping[str, str], base: str, version: int) -> Answer | None:
    if "siege" in op:
        company = _BY_SIREN.get(values.get("siren", ""))
        found = (company, company.siege) if company else None
    else:
        found = _BY_SIRET.get(values.get("siret", ""))
    if found is None or found[0] is None:
        return None
    company, est = found
    if "diffusables" in op and not company.diffusible:
        return None
    links = {"unite_legale": f"{base}/v{version}/insee/sirene/unites_legales/{company.siren}"}
    meta = {"date_derniere_mise_a_jour": _UPDATED, "redirect_from_siret": None}
    if op.startswith("api_entreprise_v3_insee_adresses"):
        return 200, {"data": _adresse(company, est), "links": links, "meta": meta}
    return 200, {"data": _etablissement(company, est, version), "links": links, "meta": meta}


def _adresse_association(est: Establishment) -> dict[str, Any]:
    """An address as the associations directory (RNA / Le Compte Asso) gives it."""
    return {
        "complement": None,
        "numero_voie": est.numero_voie,
        "type_voie": est.type_voie,
        "libelle_voie": est.libelle_voie,
        "distribution": None,
        "code_insee": est.code_commune,
        "code_postal": est.code_postal,
        "commune": est.libelle_commune,
    }


def _association_etablissement(
    company: Company, est: Establishment, make_document: DocumentMaker | None
) -> dict[str, Any]:
    """One établissement of an association; ``make_document=None`` for the open data."""
    code, _, _, label = est.tranche
    data: dict[str, Any] = {
        "siren": company.siren,
        "siret": est.siret,
        "actif": est.closed is None,
        "siege": est.siege,
        "nom": est.enseigne or company.raison_sociale,
        "telephone": "0478301294" if est.siege else None,
        "courriel": "bureau@jardins-croix-rousse.example" if est.siege else None,
        "date_debut_activite": est.created.isoformat(),
        "adresse": _adresse_association(est),
        "activite_principale": {"code": company.naf[0], "libelle": company.naf[1]},
        "tranche_effectif": {"code": code, "libelle": label},
        "rhs": [],
        "comptes": [],
    }
    if est.siege:
        data["rhs"] = [
            {
                "annee": "2023",
                "nombre_benevoles": 27,
                "nombre_volontaires": 2,
                "nombre_salaries": 4,
                "nombre_salaries_etpt": 2.6,
                "nombre_emplois_aides": 1,
                "nombre_personnels_detaches": 0,
                "nombre_adherents": {"hommes": 58, "femmes": 91, "total": 149},
            },
            {
                "annee": "2022",
                "nombre_benevoles": 22,
                "nombre_volontaires": 1,
                "nombre_salaries": 3,
                "nombre_salaries_etpt": 2.1,
                "nombre_emplois_aides": 1,
                "nombre_personnels_detaches": 0,
                "nombre_adherents": {"hommes": 49, "femmes": 83, "total": 132},
            },
        ]
        data["comptes"] = [
            {
                "annee": "2023",
                "commisaire_aux_comptes": False,
                "montant_dons": 2350.0,
                "cause_subventions": "Animation des jardins et ateliers pédagogiques",
                "montant_subventions": 38500.0,
                "montant_aides_sur_3ans": 104200.0,
                "total_charges": 121480.0,
                "total_resultat": 3215.0,
                "total_produits": 124695.0,
            },
        ]
    if make_document is None:
        return data
    data["representants_legaux"] = (
        [
            {
                "civilite": "Madame",
                "nom": "BERTHOLON",
                "prenom": "Maëlle",
                "fonction": "Présidente",
                "valideur_cec": True,
                "publication_internet": False,
                "telephone": None,
                "courriel": "presidence@jardins-croix-rousse.example",
            },
            {
                "civilite": "Monsieur",
                "nom": "FAVRE-GIRAUD",
                "prenom": "Anselme",
                "fonction": "Trésorier",
                "valideur_cec": False,
                "publication_internet": False,
                "telephone": "0478301295",
                "courriel": None,
            },
        ]
        if est.siege
        else []
    )
    documents: list[dict[str, Any]] = []
    if est.siege:
        subject = f"{company.name} (SIRET {est.siret})"
        for nom, type_, annee, etat, depot in (
            ("rapport_activite_2023.pdf", "Rapport d'activité", "2023", "courant", "2024-05-21"),
            ("comptes_2022.pdf", "Comptes du dernier exercice clos", "2022", "archivé", None),
        ):
            url, _ = make_document(type_, subject)
            documents.append(
                {
                    "id": f"{est.siret[-5:]}-{annee}",
                    "nom": nom,
                    "annee_validite": annee,
                    "commentaire": None,
                    "etat": etat,
                    "type": type_,
                    "date_depot": depot,
                    "url": url,
                }
            )
    data["documents_dac"] = documents
    return data


def _association(company: Company, base: str, make_document: DocumentMaker | None) -> Answer:
    """The DJEPVA answer for an association; ``make_document=None`` for the open data.

    The directory's own details (purpose, network, approvals, people,
    accounts) are invented for the project like the companies themselves.
    """
    assert company.rna is not None
    siege = company.siege
    code, _, _, label = company.tranche
    data: dict[str, Any] = {
        "rna": company.rna,
        "ancien_id": None,  # registered after 2010: no pre-RNA prefecture number
        "siren": company.siren,
        "nom": company.raison_sociale,
        "active": company.ceased is None,
        "sigle": company.sigle,
        "reconnue_utilite_publique": False,
        "siret_siege": siege.siret,
        "forme_juridique": {
            "code": company.forme_juridique[0],
            "libelle": company.forme_juridique[1],
        },
        "regime": "Loi 1901",
        "groupement": "Simple",
        "eligibilite_cec": True,
        "raison_non_eligibilite_cec": None,
        "impots_commerciaux": False,
        "date_creation": company.created.isoformat(),
        "date_dissolution": company.ceased.isoformat() if company.ceased else None,
        "date_publication_reconnue_utilite_publique": None,
        "date_publication_journal_officiel": (company.created + dt.timedelta(days=18)).isoformat(),
        "adresse_siege": _adresse_association(siege),
        "adresse_gestion": {
            **_adresse_association(siege),
            "complement": "BOITE AUX LETTRES DU JARDIN",
            "commune": siege.libelle_commune.title(),
        },
        "alsace_moselle": {
            "tribunal_instance": None,
            "volume": None,
            "folio": None,
            "date_publication_registre_association": None,
        },
        "composition_reseau": [],
        "agrements": [
            {
                "numero": "69-JEP-2019-0142",
                "date_attribution": "2019-06-20",
                "type": "Jeunesse et éducation populaire",
                "niveau": "départemental",
                "attributeur": "Service départemental à la jeunesse du Rhône",
                "url": None,
            }
        ],
        "activites": {
            "objet": (
                "Créer et faire vivre des jardins partagés sur les pentes de la Croix-Rousse, "
                "tisser des liens entre habitants et transmettre un jardinage respectueux "
                "de l'environnement."
            ),
            "objet_social1": {"code": "017040", "libelle": "Jardins partagés, jardins familiaux"},
            "objet_social2": {"code": "024030", "libelle": "Éducation à l'environnement"},
            "champ_action_territorial": "local",
            "activite_principale": {
                "code": company.naf[0],
                "libelle": company.naf[1],
                "annee": str(company.created.year),
            },
            "tranche_effectif": {"code": code, "libelle": label, "annee": "2022"},
            "economie_sociale_et_solidaire": company.ess,
            "date_appartenance_ess": "2015-01-01" if company.ess else None,
        },
        "etablissements": [
            _association_etablissement(company, est, make_document)
            for est in company.establishments
        ],
    }
    if make_document is not None:
        data["reseaux_affiliation"] = [
            {
                "nom": "RESEAU DES JARDINS PARTAGES DU RHONE",
                "numero": "RJP-0087",
                "rna": "W691054318",
                "siret": None,
                "objet": "Fédérer et accompagner les jardins partagés du département",
                "adresse": {
                    "complement": None,
                    "numero_voie": "9",
                    "type_voie": "QUAI",
                    "libelle_voie": "PIERRE SCIZE",
                    "distribution": None,
                    "code_insee": "69385",
                    "code_postal": "69005",
                    "commune": "LYON 5EME",
                },
                "telephone": None,
                "courriel": None,
                "attestation_affiliation_url": None,
                "nombre_licencies": {"hommes": None, "femmes": None, "total": 149},
            }
        ]
        subject = f"{company.name} ({company.rna})"
        documents: list[dict[str, Any]] = []
        for type_, code_, libelle, depot in (
            ("Pièce", "STC", "Statuts", "2014-04-15T10:42:07.000+02:00"),
            ("Pièce", "PV", "Procès-verbal d'assemblée générale", "2023-03-28T18:05:51.000+02:00"),
        ):
            url, _ = make_document(libelle, subject)
            documents.append(
                {
                    "id": None,
                    "type": type_,
                    "sous_type": {"code": code_, "libelle": libelle},
                    "date_depot": depot,
                    "annee_depot": depot[:4],
                    "url": url,
                }
            )
        data["documents_rna"] = documents
    siege_url = f"{base}/v3/insee/sirene/etablissements/{siege.siret}"
    links = {"insee_siege_social": siege_url, "insee_siege_social_adresse": f"{siege_url}/adresse"}
    meta = {
        "internal_id": company.rna[-6:],
        "date_derniere_mise_a_jour_sirene": "2025-01-06",
        "date_derniere_mise_a_jour_rna": "2024-11-18",
    }
    return 200, {"data": data, "links": links, "meta": meta}


def builtin_answer(
    endpoint: Endpoint, values: Mapping[str, str], base: str, make_document: DocumentMaker
) -> Answer | None:
    """The built-in answer for an operation, or ``None`` when the data has none (a 404).

    ``values`` are the normalized path values; ``base`` is the emulator's own
    base URL, for links; ``make_document`` registers a PDF and returns its URL.
    """
    op = endpoint.operation_id
    if op.startswith(
        ("api_entreprise_v3_insee_unites_legales", "api_entreprise_v4_insee_unites_legales")
    ):
        return _ul(op, values, base, endpoint.version)
    if "_insee_" in op and op != "api_entreprise_v3_insee_successions":
        return _etab(op, values, base, endpoint.version)
    if op == "api_entreprise_v3_european_commission_vies":
        company = _BY_SIREN.get(values.get("siren", ""))
        if company is None:
            return None
        return 200, {"data": {"tva_number": tva_number(company.siren)}, "links": {}, "meta": {}}
    if op in (
        "api_entreprise_v4_mi_unites_legales",
        "api_entreprise_v4_mi_unites_legales_open_data",
    ):
        key = values.get("siren_or_rna", "")
        company = _BY_SIREN.get(key) or _BY_RNA.get(key)
        if company is None or company.rna is None:
            return None
        open_data = op.endswith("_open_data")
        return _association(company, base, None if open_data else make_document)
    title = _DOCUMENTS.get(op)
    if title is not None:
        company = _BY_SIREN.get(values.get("siren", ""))
        if company is None:
            return None
        url, expires_in = make_document(title, f"{company.name} (SIREN {company.siren})")
        data: dict[str, Any] = {"document_url": url}
        if endpoint.version >= 4:
            data["document_url_expires_in"] = expires_in
            if "dgfip" in op:
                data["date_delivrance_attestation"] = "2025-01-06"
                data["date_periode_analysee"] = "2024-12-31"
            else:
                data["entity_status"] = {
                    "code": "ok",
                    "libelle": "Attestation délivrée par l'Urssaf",
                    "description": "L'entité est à jour de ses cotisations sociales.",
                }
                data["date_debut_validite"] = "2025-01-06"
                data["date_fin_validite"] = "2025-06-30"
                # A made-up security code in the real format (15 capitals and digits).
                data["code_securite"] = f"EM{company.siren}{company.siren[:4]}"
        else:
            data["expires_in"] = expires_in
        return 200, {"data": data, "links": {}, "meta": {}}
    return None


def pdf_document(title: str, subject: str) -> bytes:
    """A tiny valid one-page PDF that names what it stands for."""

    def escape(text: str) -> str:
        ascii_text = text.encode("ascii", "replace").decode("ascii")
        return ascii_text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    stream = (
        f"BT /F1 16 Tf 72 760 Td ({escape(title)}) Tj ET\n"
        f"BT /F1 11 Tf 72 735 Td ({escape(subject)}) Tj ET\n"
        "BT /F1 9 Tf 72 710 Td (Document fictif produit par l'emulateur API Entreprise.) Tj ET\n"
    ).encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"endstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
