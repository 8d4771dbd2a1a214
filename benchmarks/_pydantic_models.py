"""Pydantic models of the same shape as the records, written for the comparison only.

Strict like the cattrs converter (no ``"12"`` for ``12``), frozen like the
records, unknown fields kept (``extra="allow"``) as ``Record.extra`` keeps
them. JSON arrays are lists here: strict pydantic refuses a list for a tuple
field in Python mode, and the shape on the wire is the same.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="allow")


class ActivitePrincipale(_Model):
    code: str | None
    libelle: str
    nomenclature: str | None


class TrancheEffectifSalarie(_Model):
    code: str | None
    intitule: str | None
    date_reference: str | None
    de: int | None
    a: int | None


class PersonneMoraleAttributs(_Model):
    raison_sociale: str | None
    sigle: str | None


class PersonnePhysiqueAttributs(_Model):
    pseudonyme: str | None
    prenom_usuel: str | None
    prenom_1: str | None
    prenom_2: str | None
    prenom_3: str | None
    prenom_4: str | None
    nom_usage: str | None
    nom_naissance: str | None
    sexe: str | None


class FormeJuridique(_Model):
    code: str
    libelle: str


class UniteLegale(_Model):
    siren: str
    rna: str | None
    siret_siege_social: str
    type: str
    personne_morale_attributs: PersonneMoraleAttributs
    personne_physique_attributs: PersonnePhysiqueAttributs
    categorie_entreprise: str | None
    status_diffusion: str
    diffusable_commercialement: bool
    forme_juridique: FormeJuridique
    activite_principale: ActivitePrincipale
    tranche_effectif_salarie: TrancheEffectifSalarie
    etat_administratif: str
    economie_sociale_et_solidaire: bool | None
    date_creation: int | None
    activite_principale_naf_rev2: ActivitePrincipale
    date_cessation: int | None


class EtablissementUniteLegale(_Model):
    siren: str
    rna: str | None
    siret_siege_social: str
    type: str
    personne_morale_attributs: PersonneMoraleAttributs
    personne_physique_attributs: PersonnePhysiqueAttributs
    categorie_entreprise: str | None
    status_diffusion: str
    diffusable_commercialement: bool
    forme_juridique: FormeJuridique
    activite_principale: ActivitePrincipale
    tranche_effectif_salarie: TrancheEffectifSalarie
    etat_administratif: str
    economie_sociale_et_solidaire: bool | None
    date_creation: int | None
    activite_principale_naf_rev2: ActivitePrincipale


class AcheminementPostal(_Model):
    l1: str | None
    l2: str | None
    l3: str | None
    l4: str | None
    l5: str | None
    l6: str | None
    l7: str | None


class Adresse(_Model):
    numero_voie: str
    indice_repetition_voie: str | None
    type_voie: str | None
    libelle_voie: str
    complement_adresse: str | None
    code_commune: str | None
    code_postal: str | None
    distribution_speciale: str | None
    code_cedex: str | None
    libelle_cedex: str | None
    libelle_commune: str | None
    libelle_commune_etranger: str | None
    code_pays_etranger: str | None
    libelle_pays_etranger: str | None
    status_diffusion: str
    acheminement_postal: AcheminementPostal


class Etablissement(_Model):
    siret: str
    siege_social: bool
    etat_administratif: str
    date_fermeture: int | None
    activite_principale: ActivitePrincipale
    tranche_effectif_salarie: TrancheEffectifSalarie
    status_diffusion: str
    diffusable_commercialement: bool
    enseigne: str | None
    unite_legale: EtablissementUniteLegale
    adresse: Adresse
    date_creation: int | None
    activite_principale_naf_rev2: ActivitePrincipale


class ObligationFiscale(_Model):
    id: str
    code: str
    libelle: str
    reference: str
    regime: str


class Regime(_Model):
    code: str
    libelle: str


class Donnee(_Model):
    code: str | None = None
    code_EDI: str | None = None
    code_absolu: str | None = None
    code_type_donnee: str | None = None
    intitule: str | None = None
    code_nref: str
    valeurs: list[str]


class Declaration(_Model):
    numero_imprime: str
    regime: Regime
    date_declaration: str
    date_fin_exercice: str
    duree_exercice: float
    millesime: str
    donnees: list[Donnee]


class LiassesFiscales(_Model):
    obligations_fiscales: list[ObligationFiscale]
    declarations: list[Declaration]


#: Model per operation id.
MODELS: dict[str, type[_Model]] = {
    "api_entreprise_v4_insee_unites_legales": UniteLegale,
    "api_entreprise_v4_insee_etablissements": Etablissement,
    "api_entreprise_v3_dgfip_liasses_fiscales": LiassesFiscales,
}
