"""Write the generated modules of the package from the OpenAPI description.

Usage: ``python tools/generate.py [--check] [--shared ../shared]``

It reads ``api-entreprise/openapi.yaml`` and ``api-entreprise/throttle.yml``
from the shared reference folder and writes:

- ``apientreprise_async/_gen_catalogue.py``: one ``Endpoint`` per operation;
- ``apientreprise_async/records/<provider>.py``: attrs records built from each
  operation's 200 response schema, plus ``records/__init__.py``;
- ``apientreprise_async/_gen_resources.py``: one resource group per provider,
  one typed method per logical endpoint (versions folded into ``version=``).
- ``apientreprise_async/_gen_sync_resources.py``: the same groups, blocking, for
  the synchronous ``Client``.

With ``--check`` it writes nothing and exits 1 when a committed module differs
from what it would write. Docstrings come from the tables below, never from the
OpenAPI prose; names, paths and types come from the OpenAPI file.
"""

from __future__ import annotations

import argparse
import json
import keyword
import pathlib
import re
import subprocess
import sys
import unicodedata
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = ROOT / "apientreprise_async" / "_gen_catalogue.py"

TRACEABILITY = {"recipient", "context", "object"}
KINDS = {
    "siren": "SIREN",
    "siret": "SIRET",
    "year": "YEAR",
    "month": "MONTH",
    "siren_or_rna": "SIREN_OR_RNA",
    "siret_or_rna": "SIRET_OR_RNA",
    "siret_or_eori": "SIRET_OR_EORI",
    "siren_or_siret_or_rna": "SIREN_OR_SIRET_OR_RNA",
}
DOCUMENT_GROUPS = {"low_latency_documents", "high_latency_documents"}
PRIVILEGES_ID = "api_entreprise_privileges"
#: Deprecated operations whose successor lives under another path (the RNA moved to
#: the DJEPVA's API Association, which serves the association and its documents).
SUCCESSORS = {
    "api_entreprise_v3_mi_associations": "api_entreprise_v4_mi_unites_legales",
    "api_entreprise_v3_mi_documents_associations": "api_entreprise_v4_mi_unites_legales",
}


def _load(shared: pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = yaml.safe_load((shared / "api-entreprise" / "openapi.yaml").read_text("utf-8"))
    throttle = yaml.safe_load((shared / "api-entreprise" / "throttle.yml").read_text("utf-8"))
    return spec, throttle["shared"]


def _groups(throttle: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    by_op: dict[str, tuple[str, bool]] = {}
    for name, group in throttle.items():
        per_endpoint = group["throttle_type"] == "by_single_endpoint"
        for op in group["endpoints"]:
            by_op[op] = (name, per_endpoint)
    return by_op


def _operation_id(path: str, op: dict[str, Any]) -> str:
    if path == "/privileges":
        # The OpenAPI file carries a mangled id for this route.
        return PRIVILEGES_ID
    return str(op["responses"]["200"]["x-operationId"])


def _entries(spec: dict[str, Any], throttle: dict[str, Any]) -> list[dict[str, Any]]:
    groups = _groups(throttle)
    entries: list[dict[str, Any]] = []
    ids = {_operation_id(p, item["get"]) for p, item in spec["paths"].items()}
    for path, item in spec["paths"].items():
        op = item["get"]
        op_id = _operation_id(path, op)
        segments = path.strip("/").split("/")
        version = (
            int(segments[0][1:]) if segments[0].startswith("v") and segments[0][1:].isdigit() else 0
        )
        provider = segments[1] if version else "api_entreprise"
        v3_twin = op_id.replace("_v4_", "_v3_")
        group, per_endpoint = groups.get(op_id) or groups.get(
            v3_twin, ("json_resources_entreprise", False)
        )
        params = op.get("parameters", [])
        path_params = [
            (p["name"], KINDS.get(p["name"], "TEXT")) for p in params if p["in"] == "path"
        ]
        # The reference client takes path parameters in the OpenAPI file's order
        # (gip_mds: siret, year, month); the catalogue keeps them in path order.
        declared = [name for name, _ in path_params]
        path_params.sort(key=lambda p: path.index("{" + p[0] + "}"))
        query = []
        for p in params:
            if p["in"] != "query" or p["name"] in TRACEABILITY:
                continue
            schema = p.get("schema", {})
            query.append((p["name"], bool(p.get("required")), tuple(schema.get("enum", ()))))
        names = {p["name"] for p in params}
        successor = None
        if op.get("deprecated"):
            candidate = SUCCESSORS.get(op_id, op_id.replace("_v3_", "_v4_"))
            successor = candidate if candidate in ids and candidate != op_id else None
        maint = op.get("x-maintenances")
        is_document = group in DOCUMENT_GROUPS or "document_url" in json.dumps(
            op["responses"]["200"]
        )
        entries.append(
            {
                "operation_id": op_id,
                "path": path,
                "provider": provider,
                "version": version,
                "path_params": path_params,
                "declared": declared,
                "query_params": query,
                "rate_group": group,
                "per_endpoint": per_endpoint,
                "timeout_class": "DOCUMENT" if is_document else "JSON",
                "deprecated": bool(op.get("deprecated")),
                "successor": successor,
                "maintenance": (maint["from_hour"], maint["to_hour"]) if maint else None,
                "traceability": names >= TRACEABILITY,
                "cache_control": "Cache-Control" in names,
                "statuses": tuple(sorted(int(s) for s in op["responses"] if s.isdigit())),
            }
        )
    entries.sort(key=lambda e: e["operation_id"])
    return entries


def _time(value: str) -> str:
    hour, minute = value.split(":")
    return f"dt.time({int(hour)}, {int(minute)})"


def render(entries: list[dict[str, Any]], records: dict[str, str] | None = None) -> str:
    """Render the catalogue module's source (with each operation's record when given)."""
    records = records or {}
    modules = sorted({r.removeprefix("tuple[").split(".")[0] for r in records.values()})
    out = [
        '"""Generated by tools/generate.py from the OpenAPI description. Do not edit."""',
        "",
        "from __future__ import annotations",
        "",
        "import datetime as dt",
        "",
        "from ._catalogue import (",
        "    Endpoint, IdKind, Maintenance, PathParam, QueryParam, TimeoutClass,",
        ")",
        *(["from .records import " + ", ".join(modules)] if modules else []),
        "",
        '__all__ = ["ENDPOINTS"]',
        "",
        "ENDPOINTS: tuple[Endpoint, ...] = (",
    ]
    for e in entries:
        out.append("    Endpoint(")
        out.append(f"        operation_id={e['operation_id']!r},")
        out.append(f"        path={e['path']!r},")
        out.append(f"        provider={e['provider']!r},")
        out.append(f"        version={e['version']},")
        if e["path_params"]:
            pp = ", ".join(f"PathParam({n!r}, IdKind.{k})" for n, k in e["path_params"])
            out.append(f"        path_params=({pp},),")
        if e["query_params"]:
            qp = ", ".join(
                f"QueryParam({n!r}, required={r}, choices={c!r})" for n, r, c in e["query_params"]
            )
            out.append(f"        query_params=({qp},),")
        out.append(f"        rate_group={e['rate_group']!r},")
        if e["per_endpoint"]:
            out.append("        per_endpoint=True,")
        out.append(f"        timeout_class=TimeoutClass.{e['timeout_class']},")
        if e["deprecated"]:
            out.append("        deprecated=True,")
        if e["successor"]:
            out.append(f"        successor={e['successor']!r},")
        if e["maintenance"]:
            start, end = e["maintenance"]
            out.append(f"        maintenance=Maintenance({_time(start)}, {_time(end)}),")
        if not e["traceability"]:
            out.append("        traceability=False,")
        if e["cache_control"]:
            out.append("        cache_control=True,")
        if e["operation_id"] in records:
            out.append(f"        record={records[e['operation_id']]},")
        out.append(f"        statuses={e['statuses']!r},")
        out.append("    ),")
    out.append(")")
    out.append("")
    return "\n".join(out)


# -- records -------------------------------------------------------------------------

RECORDS_DIR = ROOT / "apientreprise_async" / "records"
RESOURCES_TARGET = ROOT / "apientreprise_async" / "_gen_resources.py"
SYNC_RESOURCES_TARGET = ROOT / "apientreprise_async" / "_gen_sync_resources.py"

#: Methods renamed to follow the DINUM spec's naming rule literally: old name -> new name.
#: The old names stay as deprecated aliases (same signature) for one minor version.
RENAMED: dict[tuple[str, str], str] = {
    ("djepva", "associations_open_data"): "open_data",
    ("gip_mds", "effectifs_mensuels"): "annee",
    ("insee", "etablissements_diffusibles_adresse"): "diffusibles_adresse",
    ("insee", "unites_legales_diffusibles_siege_social"): "diffusibles_siege_social",
}
RESERVED_FIELDS = {"extra", "_absent"}

#: The server's ``/privileges`` answer has no schema in the OpenAPI file.
PRIVILEGES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"privileges": {"type": "array", "items": {"type": "string"}}},
    "required": ["privileges"],
}

#: Where a provider sends values its schema does not announce, by (operation, field path).
#: The RNA copies filing timestamps into ``date_depot`` and keeps impossible dates
#: ("2022-02-30") in the DAC documents, so a strict date would refuse real answers.
TYPE_OVERRIDES: dict[tuple[str, str], str] = {
    ("api_entreprise_v4_mi_unites_legales", "documents_rna[].date_depot"): "dt.datetime",
    ("api_entreprise_v4_mi_unites_legales", "etablissements[].documents_dac[].date_depot"): "str",
}

#: Provider groups: attribute docstrings (our words).
PROVIDERS: dict[str, str] = {
    "ademe": "ADEME: RGE environmental certifications.",
    "banque_de_france": "Banque de France: company balance sheets.",
    "carif_oref": "Carif-Oref: Qualiopi and France Compétences certifications.",
    "cibtp": "CIBTP: paid-leave and bad-weather contribution certificates (construction).",
    "cma_france": "CMA France: the trades register (RNM).",
    "cnetp": "CNETP: paid-leave and bad-weather contribution certificates (public works).",
    "data_subvention": "Data Subvention: grants requested and paid to associations.",
    "dgfip": "DGFIP: tax certificates, turnover, tax returns and shareholdings.",
    "djepva": "DJEPVA: the associations directory (API Association).",
    "douanes": "Customs: EORI registrations.",
    "european_commission": "European Commission: intra-EU VAT numbers (VIES).",
    "fabrique_numerique_ministeres_sociaux": "Social ministries: collective agreements.",
    "fntp": "FNTP: public-works professional cards.",
    "gip_mds": "GIP-MDS: headcounts declared in the DSN.",
    "infogreffe": "Infogreffe: trade register extracts and officers.",
    "inpi": "INPI: the national companies register (RNE).",
    "insee": "INSEE: the Sirene directory of legal units and establishments.",
    "ministere_interieur": "Ministry of the Interior: the associations register (RNA).",
    "msa": "MSA: farm-sector social contribution compliance.",
    "opqibi": "OPQIBI: engineering certifications.",
    "probtp": "PRO BTP: pension contribution certificates and compliance.",
    "qualibat": "Qualibat: building certifications.",
    "qualifelec": "Qualifelec: electrical-trade certificates.",
    "urssaf": "URSSAF: social contribution certificates.",
}

#: (provider, method) -> (record class name, one-line summary). Our words.
METHODS: dict[tuple[str, str], tuple[str, str]] = {
    ("ademe", "certification_rge"): (
        "CertificationRge",
        "RGE certificates held by an establishment.",
    ),
    ("banque_de_france", "bilans"): (
        "Bilan",
        "Balance sheets of a legal unit, with computed ratios.",
    ),
    ("carif_oref", "certifications_qualiopi_france_competences"): (
        "CertificationsQualiopi",
        "Qualiopi certification and France Compétences accreditations of an establishment.",
    ),
    ("cibtp", "attestation_cotisations_conges_payes_chomage_intemperies"): (
        "AttestationCotisations",
        "Link to the CIBTP contribution certificate of an establishment.",
    ),
    ("cma_france", "unites_legales"): (
        "EntrepriseArtisanale",
        "A craft business in the trades register.",
    ),
    ("cnetp", "attestation_cotisations_conges_payes_chomage_intemperies"): (
        "AttestationCotisations",
        "Link to the CNETP contribution certificate of a legal unit.",
    ),
    ("data_subvention", "subventions"): (
        "Subvention",
        "Grants requested by and paid to an association.",
    ),
    ("dgfip", "attestation_fiscale"): (
        "AttestationFiscale",
        "Link to the tax compliance certificate of a legal unit.",
    ),
    ("dgfip", "chiffres_affaires"): (
        "ChiffreAffaires",
        "Turnover declared by an establishment, per fiscal year.",
    ),
    ("dgfip", "liasses_fiscales"): (
        "LiassesFiscales",
        "Tax return forms of a legal unit for one year.",
    ),
    ("dgfip", "liens_capitalistiques"): (
        "LiensCapitalistiques",
        "Shareholders and holdings of a legal unit for one year.",
    ),
    ("djepva", "associations"): (
        "Association",
        "An association, with its establishments and documents.",
    ),
    ("djepva", "open_data"): (
        "AssociationOpenData",
        "The public data of an association.",
    ),
    ("douanes", "immatriculations_eori"): (
        "ImmatriculationEori",
        "The EORI registration of an establishment.",
    ),
    ("european_commission", "numero_tva"): (
        "NumeroTva",
        "The intra-EU VAT number of a legal unit.",
    ),
    ("fabrique_numerique_ministeres_sociaux", "conventions_collectives"): (
        "ConventionCollective",
        "Collective agreements that apply to an establishment.",
    ),
    ("fntp", "carte_professionnelle_travaux_publics"): (
        "CarteProfessionnelle",
        "Link to the public-works professional card of a legal unit.",
    ),
    ("gip_mds", "effectifs_annuels"): ("EffectifsAnnuels", "Yearly headcount of a legal unit."),
    ("gip_mds", "annee"): (
        "EffectifsMensuels",
        "Monthly headcount of an establishment.",
    ),
    ("infogreffe", "extrait_kbis"): (
        "ExtraitKbis",
        "The trade register extract (Kbis data) of a legal unit.",
    ),
    ("infogreffe", "mandataires_sociaux"): (
        "MandataireSocial",
        "Officers of a legal unit, people and companies.",
    ),
    ("inpi", "actes_bilans"): ("ActesBilans", "Deeds and balance sheets filed at the RNE."),
    ("inpi", "beneficiaires_effectifs"): (
        "BeneficiaireEffectif",
        "Beneficial owners of a legal unit.",
    ),
    ("inpi", "extrait_rne"): ("ExtraitRne", "The RNE extract of a legal unit."),
    ("insee", "etablissements"): ("Etablissement", "An establishment of the Sirene directory."),
    ("insee", "etablissements_adresse"): (
        "AdresseEtablissement",
        "The address of an establishment.",
    ),
    ("insee", "etablissements_diffusibles"): (
        "Etablissement",
        "An establishment, public data only (non-diffusible ones are refused).",
    ),
    ("insee", "diffusibles_adresse"): (
        "AdresseEtablissement",
        "The address of an establishment, public data only.",
    ),
    ("insee", "successions"): ("Successions", "Predecessors and successors of an establishment."),
    ("insee", "unites_legales"): ("UniteLegale", "A legal unit of the Sirene directory."),
    ("insee", "unites_legales_diffusibles"): ("UniteLegale", "A legal unit, public data only."),
    ("insee", "diffusibles_siege_social"): (
        "Etablissement",
        "The head office of a legal unit, public data only.",
    ),
    ("insee", "unites_legales_siege_social"): ("Etablissement", "The head office of a legal unit."),
    ("ministere_interieur", "associations"): ("Association", "An association of the RNA."),
    ("ministere_interieur", "documents"): (
        "DocumentAssociation",
        "Documents filed by an association.",
    ),
    ("msa", "conformite_cotisations"): (
        "ConformiteCotisations",
        "Whether an establishment is up to date with MSA.",
    ),
    ("opqibi", "certification_ingenierie"): (
        "CertificationIngenierie",
        "The OPQIBI certificate of a legal unit.",
    ),
    ("probtp", "attestation_cotisations_retraite"): (
        "AttestationCotisationsRetraite",
        "Link to the PRO BTP pension certificate of an establishment.",
    ),
    ("probtp", "conformite_cotisations_retraite"): (
        "ConformiteCotisationsRetraite",
        "Whether an establishment is up to date with PRO BTP.",
    ),
    ("qualibat", "certification_batiment"): (
        "CertificationBatiment",
        "The Qualibat certificate of an establishment.",
    ),
    ("qualifelec", "certificats"): ("Certificat", "Qualifelec certificates of an establishment."),
    ("urssaf", "attestation_vigilance"): (
        "AttestationVigilance",
        "The URSSAF vigilance certificate of a legal unit.",
    ),
}

PARAM_DOCS = {
    "siren": "SIREN of the legal unit (9 digits).",
    "siret": "SIRET of the establishment (14 digits).",
    "year": "the year (four digits).",
    "month": "the month (1 to 12).",
    "siren_or_rna": "a SIREN, or an RNA number (W followed by 9 digits).",
    "siret_or_rna": "a SIRET, or an RNA number (W followed by 9 digits).",
    "siret_or_eori": "a SIRET, or an EORI number.",
    "siren_or_siret_or_rna": "a SIREN, a SIRET or an RNA number.",
}


def _camel(name: str) -> str:
    parts = name.replace("-", "_").split("_")
    return "".join(part[:1].upper() + part[1:] for part in parts if part)


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _closed_set(schema: dict[str, Any]) -> bool:
    """A documented closed set of strings (``null`` aside)."""
    values = [v for v in schema.get("enum") or () if v is not None]
    return bool(values) and all(isinstance(v, str) for v in values)


def _nullable(schema: dict[str, Any]) -> bool:
    return bool(schema.get("nullable")) or None in (schema.get("enum") or ())


def _is_epoch(schema: dict[str, Any], hint: str) -> bool:
    """An integer date: seconds since the epoch (INSEE's dates, Infogreffe's birth dates)."""
    about = str(schema.get("description", "")).lower()
    return hint.startswith("date") or "timestamp" in about


def _is_date(schema: dict[str, Any]) -> bool:
    """``format: date``, or a string documented only by a calendar-date example."""
    return schema.get("format") == "date" or bool(_ISO_DATE.match(str(schema.get("example", ""))))


def _member_name(value: str) -> str:
    """An enumeration member name for a value: ASCII, upper case, never starting with a digit."""
    text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    name = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").upper() or "EMPTY"
    return "V_" + name if name[0].isdigit() else name


def _singular(name: str) -> str:
    words = []
    for word in name.split("_"):
        if word.endswith("eaux"):
            word = word[:-1]
        elif word.endswith("aux") and len(word) > 4:
            word = word[:-3] + "al"
        elif word.endswith("s") and len(word) > 3 and word not in {"pays", "prenoms"}:
            word = word[:-1]
        words.append(word)
    return "_".join(words)


def _literals(path: str) -> list[str]:
    segments = path.strip("/").split("/")[2:]
    return [s.replace("-", "_").lower() for s in segments if not s.startswith("{")]


def _unversioned(path: str) -> str:
    parts = path.split("/", 2)
    return parts[2] if len(parts) > 2 else path


def _method_names(entries: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Name each logical endpoint per the DINUM spec §9.1, keyed by (provider, unversioned path).

    The last non-templated segment names the method; names that collide within a
    provider take the segment before theirs, until none collides.
    """
    items: dict[str, list[list[Any]]] = {}
    for e in entries:
        if not e["version"]:
            continue
        key = (e["provider"], _unversioned(e["path"]))
        group = items.setdefault(e["provider"], [])
        if any(item[0] == key for item in group):
            continue
        literals = _literals(e["path"])
        group.append([key, literals, len(literals) - 1])
    names: dict[tuple[str, str], str] = {}
    for group in items.values():
        while True:
            counts: dict[str, int] = {}
            for _, literals, start in group:
                name = "_".join(literals[start:])
                counts[name] = counts.get(name, 0) + 1
            clashing = [i for i in group if counts["_".join(i[1][i[2] :])] > 1 and i[2] > 0]
            if not clashing:
                break
            for item in clashing:
                item[2] -= 1
        for key, literals, start in group:
            names[key] = "_".join(literals[start:])
    return names


class _Module:
    """The classes of one records module, deduplicated by structure."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.classes: list[tuple[str, str, list[tuple[str, str, str]]]] = []
        self.by_key: dict[tuple[Any, ...], str] = {}
        self.names: set[str] = set()
        self.overrides: dict[str, str] = {}
        self.reserved: set[str] = set()
        self.enums: list[tuple[str, str, list[tuple[str, str]]]] = []
        self.enum_by_values: dict[tuple[str, ...], str] = {}

    def type_of(self, schema: dict[str, Any], hint: str, parent: str, path: str) -> str:
        override = self.overrides.get(path)
        if override:
            return override
        kind = schema.get("type")
        if schema.get("properties"):
            return self.klass(schema, _camel(hint), f"The ``{hint}`` object.", parent, path)
        if kind == "object":
            return "Mapping[str, Any]"
        if kind == "array":
            items = schema.get("items") or {}
            item = self.type_of(items, _singular(hint), parent, path + "[]")
            if items.get("nullable"):
                item += " | None"
            return f"tuple[{item}, ...]"
        if kind == "string" and _closed_set(schema):
            return self.enum(schema, hint, parent)
        if kind == "integer" and _is_epoch(schema, hint):
            return "Timestamp"
        if kind == "date" or (kind == "string" and _is_date(schema)):
            return "dt.date"
        if kind == "string" and schema.get("format") == "date-time":
            return "dt.datetime"
        return {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}.get(
            str(kind), "Any"
        )

    def klass(self, schema: dict[str, Any], name: str, doc: str, parent: str, path: str) -> str:
        required = set(schema.get("required") or ())
        fields: list[tuple[str, str, str]] = []
        for prop, sub in (schema.get("properties") or {}).items():
            if not prop.isidentifier() or keyword.iskeyword(prop) or prop in RESERVED_FIELDS:
                raise SystemExit(f"{self.provider}: field {prop!r} needs a rename rule")
            sub_path = f"{path}.{prop}" if path else prop
            annotation = self.type_of(sub, prop, name, sub_path)
            if prop in required and not _nullable(sub):
                fields.append((prop, annotation, ""))
            elif prop in required:
                fields.append((prop, f"{annotation} | None", ""))
            else:
                fields.append((prop, f"{annotation} | None", " = None"))
        return self.register(name, doc, parent, fields)

    def enum(self, schema: dict[str, Any], hint: str, parent: str) -> str:
        """The OpenEnum class of a documented closed set of strings (one per distinct set)."""
        values = tuple(v for v in schema["enum"] if v is not None)
        found = self.enum_by_values.get(values)
        if found:
            return found
        name = _camel(hint)
        if name in self.names or "_" not in hint:  # "code", "type": say whose
            name = parent + name
        base, counter = name, 2
        while name in self.names:
            name = f"{base}{counter}"
            counter += 1
        self.names.add(name)
        self.enum_by_values[values] = name
        members: list[tuple[str, str]] = []
        taken: set[str] = set()
        for value in values:
            member = _member_name(value)
            while member in taken:
                member += "_"
            taken.add(member)
            members.append((member, value))
        self.enums.append((name, f"The values of ``{hint}`` the API documents.", members))
        return name

    def register(self, name: str, doc: str, parent: str, fields: list[tuple[str, str, str]]) -> str:
        key = tuple(fields)
        if key in self.by_key:
            return self.by_key[key]
        final = name
        if final in self.names or (parent and final in self.reserved):
            final = parent + name if parent and parent != name else name
            counter = 2
            base = final
            while final in self.names:
                final = f"{base}{counter}"
                counter += 1
            if not parent:
                # Top-level names come from METHODS and must not be numbered.
                raise SystemExit(f"{self.provider}: two record shapes want the name {name}")
        self.names.add(final)
        self.by_key[key] = final
        self.classes.append((final, doc, fields))
        return final

    def bases(self, text: str) -> list[str]:
        """What the module imports from ``_base``."""
        names = ["OpenEnum"] if self.enums else []
        names.append("Record")
        if re.search(r"\bTimestamp\b", text):
            names.append("Timestamp")
        return names

    def render(self) -> str:
        text = " ".join(a for _, _, fields in self.classes for _, a, _ in fields)
        out = [
            f'"""Records of the ``{self.provider}`` provider.',
            "",
            "Generated by tools/generate.py from the OpenAPI description; do not edit.",
            '"""',
            "",
            *(["import datetime as dt"] if "dt." in text else []),
            *(["from collections.abc import Mapping"] if "Mapping[" in text else []),
            *(["from typing import Any"] if "Any" in text else []),
            "",
            "import attrs",
            "",
            "from ._base import " + ", ".join(self.bases(text)),
            "",
            # Records only: the enumerations are reached as attributes of the module.
            "__all__ = [" + ", ".join(repr(n) for n, _, _ in sorted(self.classes)) + "]",
            "",
        ]
        for name, doc, members in self.enums:
            out += ["", f"class {name}(OpenEnum):", f'    """{doc}"""', ""]
            out += [f"    {member} = {value!r}" for member, value in members]
            out.append("")
        for name, doc, fields in self.classes:
            # repr and == come from Record: a field left unset (it did not fit) must not raise.
            decorator = "@attrs.frozen(kw_only=True, repr=False, eq=False)"
            out += ["", decorator, f"class {name}(Record):"]
            out += [f'    """{doc}"""', ""]
            out += [f"    {prop}: {annotation}{default}" for prop, annotation, default in fields]
            out.append("")
        return "\n".join(out)


def _records(
    spec: dict[str, Any], entries: list[dict[str, Any]]
) -> tuple[dict[str, _Module], dict[str, str]]:
    """Build every records module; return them and each operation's record expression."""
    names = _method_names(entries)
    schemas: dict[str, dict[str, Any]] = {}
    for path, item in spec["paths"].items():
        op = item["get"]
        content = op["responses"]["200"].get("content")
        if content:
            data = content["application/json"]["schema"]["properties"]["data"]
            schemas[_operation_id(path, op)] = data
    schemas[PRIVILEGES_ID] = PRIVILEGES_SCHEMA
    modules: dict[str, _Module] = {}
    records: dict[str, str] = {}
    newest: dict[tuple[str, str], int] = {}
    for e in entries:
        key = (e["provider"], _unversioned(e["path"]))
        newest[key] = max(newest.get(key, 0), e["version"])
    for e in entries:
        if e["version"]:
            method = names[(e["provider"], _unversioned(e["path"]))]
            modules.setdefault(e["provider"], _Module(e["provider"])).reserved.add(
                METHODS[(e["provider"], method)][0]
            )
    # Newest versions first, so that they get the plain names.
    for e in sorted(entries, key=lambda e: (e["provider"], -e["version"], e["operation_id"])):
        op_id = e["operation_id"]
        if e["version"]:
            method = names[(e["provider"], _unversioned(e["path"]))]
            record_name, summary = METHODS[(e["provider"], method)]
        else:
            record_name, summary = "Privileges", "The privileges (scopes) granted to the token."
        module = modules.setdefault(e["provider"], _Module(e["provider"]))
        module.overrides = {p: t for (o, p), t in TYPE_OVERRIDES.items() if o == op_id}
        if e["version"] and e["version"] < newest[(e["provider"], _unversioned(e["path"]))]:
            record_name += f"V{e['version']}"
            summary = summary.rstrip(".") + f" (v{e['version']} shape)."
        schema = schemas[op_id]
        if schema.get("type") == "array" and "data" in (schema["items"].get("properties") or {}):
            props = schema["items"]["properties"]
            inner = module.klass(props["data"], record_name, summary, "", "")
            fields = [
                ("data", inner, ""),
                ("links", "Mapping[str, Any] | None", " = None"),
                ("meta", "Mapping[str, Any] | None", " = None"),
            ]
            doc = f"One entry of a list of :class:`{inner}`, with its own links and meta."
            item = module.register(inner + "Item", doc, "", fields)
            records[op_id] = f"tuple[{e['provider']}.{item}, ...]"
        else:
            records[op_id] = f"{e['provider']}.{module.klass(schema, record_name, summary, '', '')}"
    return modules, records


def _render_records_init(modules: dict[str, _Module]) -> str:
    names = sorted(modules)
    out = [
        '"""Typed records of every API Entreprise answer, one module per data provider.',
        "",
        "Generated by tools/generate.py from the OpenAPI description; do not edit.",
        "Every class derives from :class:`Record`, frozen and slotted.",
        '"""',
        "",
        "from . import " + ", ".join(names),
        "from ._base import Record",
        "",
        "__all__ = [" + ", ".join(repr(n) for n in ["Record", *names]) + "]",
        "",
    ]
    return "\n".join(out)


# -- resources -----------------------------------------------------------------------

COMMON_KW = (
    "        recipient: str | None = None,",
    "        context: str | None = None,",
    "        object: str | None = None,",
    "        fresh: bool = False,",
    "        timeout: float | None = None,",
    "        max_wait: float | UseDefault | None = USE_DEFAULT,",
    "        strict: bool | None = None,",
)
CALL_KW = (
    "recipient=recipient, context=context, object_=object, "
    "fresh=fresh, timeout=timeout, max_wait=max_wait, strict=strict"
)


def _query_types(spec: dict[str, Any]) -> dict[str, dict[str, str]]:
    types: dict[str, dict[str, str]] = {}
    for path, item in spec["paths"].items():
        op = item["get"]
        found: dict[str, str] = {}
        for p in op.get("parameters", []):
            if p["in"] != "query" or p["name"] in TRACEABILITY:
                continue
            schema = p.get("schema", {})
            if schema.get("enum"):
                annotation = "Literal[" + ", ".join(repr(v) for v in schema["enum"]) + "]"
            else:
                annotation = {"integer": "int", "number": "int", "boolean": "bool"}.get(
                    schema.get("type", ""), "str"
                )
            if schema.get("type") == "array":
                annotation = "Sequence[str]"
            found[p["name"]] = annotation
        types[_operation_id(path, op)] = found
    return types


def _render_method(
    provider: str,
    method: str,
    versions: dict[int, dict[str, Any]],
    records: dict[str, str],
    query_types: dict[str, str],
    *,
    alias: str | None = None,
    sync: bool = False,
) -> list[str]:
    """One typed method; with ``alias``, the deprecated old name of ``method`` instead.

    ``sync``: the blocking twin for :class:`Client` (``def``, no ``await``).
    """
    name = alias or method
    define = "def" if sync else "async def"
    newest = max(versions)
    default = versions[newest]
    _, summary = METHODS[(provider, method)]
    kinds = dict(default["path_params"])
    # An alias keeps the order it always had (path order); the method the declared one.
    order = list(kinds) if alias else default["declared"]
    params = [
        f"        {n}: {'int | str' if kinds[n] in ('YEAR', 'MONTH') else 'str'}," for n in order
    ]
    query = [
        (qname, qname.removesuffix("[]").replace("-", "_"), query_types.get(qname, "str"))
        for qname, _, _ in default["query_params"]
    ]
    keywords = [f"        {py}: {annotation} | None = None," for _, py, annotation in query]
    keywords += COMMON_KW
    path_values = "{" + ", ".join(f'"{n}": {n}' for n in order) + "}"
    query_values = "{" + ", ".join(f'"{qname}": {py}' for qname, py, _ in query) + "}"
    by_record: dict[str, list[int]] = {}
    for v in sorted(versions, reverse=True):
        by_record.setdefault(records[versions[v]["operation_id"]], []).append(v)
    out: list[str] = []
    if len(versions) > 1 and len(by_record) > 1:
        for record, group in by_record.items():
            literal = "Literal[" + ", ".join(str(v) for v in group) + "]"
            out += ["    @overload", f"    {define} {name}(", "        self,"]
            out += [*params, "        *,"]
            out += keywords
            out.append(f"        version: {literal}{' = ...' if newest in group else ''},")
            out.append(f"    ) -> Response[{record}]: ...")
            out.append("")
    returns = " | ".join(f"Response[{r}]" for r in by_record)
    out += [f"    {define} {name}(", "        self,", *params, "        *,", *keywords]
    literal = "Literal[" + ", ".join(str(v) for v in sorted(versions)) + "]"
    annotation = "int" if len(by_record) > 1 else literal
    out.append(f"        version: {annotation} = {newest},")
    out.append(f"    ) -> {returns}:")
    doc = [f'        """{summary}', ""]
    indent = " " * 12
    args = [f"{indent}{n}: {PARAM_DOCS.get(n, 'the ' + n + '.')}" for n in order]
    args += [f"{indent}{py}: the ``{qname}`` query parameter (optional)." for qname, py, _ in query]
    labels = [
        str(v)
        + (" (default)" if v == newest and len(versions) > 1 else "")
        + (" (deprecated)" if versions[v]["deprecated"] else "")
        for v in sorted(versions, reverse=True)
    ]
    only = " (the only one)" if len(versions) == 1 else ""
    args.append(f"            version: the API version to call: {' or '.join(labels)}{only}.")
    doc += ["        Args:", *args, ""]
    doc.append("        Traceability and call options: see :class:`ResourceGroup`.")
    if default["deprecated"]:
        doc += ["", "        .. deprecated:: the API marks this operation as deprecated."]
    if alias:
        doc += [
            "",
            f"        .. deprecated:: 0.2.0 renamed :meth:`{method}` (the DINUM naming rule);",
            "           this name goes away in a later minor version.",
        ]
    doc.append('        """')
    out += doc
    if alias:
        out.append(
            f'        warnings.warn("{provider}.{alias} is deprecated; use {provider}.{method}", '
            "DeprecationWarning, stacklevel=2)"
        )
    pairs = (f'{v}: "{versions[v]["operation_id"]}"' for v in sorted(versions))
    table = "{" + ", ".join(pairs) + "}"
    out.append(f'        endpoint = self._pick("{name}", {table}, version)')
    call = f"endpoint, {path_values}, {query_values}, {CALL_KW}"
    out.append(f"        return {'' if sync else 'await '}self._client._request({call})")
    out.append("")
    return out


def render_resources(
    spec: dict[str, Any],
    entries: list[dict[str, Any]],
    records: dict[str, str],
    *,
    sync: bool = False,
) -> str:
    """Render the resource groups module's source (``sync``: the blocking twins for ``Client``)."""
    names = _method_names(entries)
    query_types = _query_types(spec)
    groups: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for e in entries:
        if not e["version"]:
            continue
        method = names[(e["provider"], _unversioned(e["path"]))]
        groups.setdefault(e["provider"], {}).setdefault(method, {})[e["version"]] = e
    providers = sorted(groups)
    prefix, base, client, mixin = (
        ("Sync", "SyncResourceGroup", "Client", "SyncResources")
        if sync
        else ("", "ResourceGroup", "AsyncClient", "Resources")
    )
    classes = {p: prefix + _camel(p) + "Resource" for p in providers}
    body: list[str] = []
    for provider in providers:
        body += ["", f"class {classes[provider]}({base}):"]
        body += [f'    """{PROVIDERS[provider]}"""', ""]
        methods = {m: (m, None) for m in groups[provider]}
        methods.update({old: (new, old) for (p, old), new in RENAMED.items() if p == provider})
        for _, (method, alias) in sorted(methods.items()):
            versions = groups[provider][method]
            newest = versions[max(versions)]["operation_id"]
            types = query_types.get(newest, {})
            body += _render_method(
                provider, method, versions, records, types, alias=alias, sync=sync
            )
    body += [
        "",
        f"class {mixin}:",
        f'    """Mixin of :class:`{client}`: one attribute per data provider."""',
        "",
        *(f"    {p}: {classes[p]}" for p in providers),
        "",
        "    def _init_resources(self) -> None:",
        '        """Attach the provider groups to a freshly set-up client."""',
        f'        client = cast("{client}", self)',
        *(f"        self.{p} = {classes[p]}(client)" for p in providers),
        "",
    ]
    text = "\n".join(body)
    head = [
        '"""Typed resource groups, one per data provider'
        + (", blocking (for :class:`Client`)." if sync else "."),
        "",
        "Generated by tools/generate.py from the OpenAPI description; do not edit.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import warnings",
        *(["from collections.abc import Sequence"] if "Sequence[" in text else []),
        "from typing import TYPE_CHECKING, Literal, cast, overload",
        "",
        *(["from ._catalogue import get_endpoint"] if "get_endpoint(" in text else []),
        "from ._config import USE_DEFAULT, UseDefault",
        f"from ._resource import {base}",
        "from ._response import Response",
        "from .records import " + ", ".join(providers),
        "",
        "if TYPE_CHECKING:",
        f"    from .{'_sync' if sync else '_client'} import {client}",
        "",
        "__all__ = [" + ", ".join(repr(n) for n in sorted([mixin, *classes.values()])) + "]",
        "",
    ]
    if not sync:
        head += [
            "#: Deprecated method names and the methods that replaced them, per provider.",
            "RENAMED = {"
            + ", ".join(f"({p!r}, {o!r}): {n!r}" for (p, o), n in sorted(RENAMED.items()))
            + "}",
            "",
        ]
    return "\n".join(head) + text


def _format(source: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "-"],
        input=source,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    """Generate, or check, the generated modules."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--shared", type=pathlib.Path, default=ROOT.parent / "shared")
    args = parser.parse_args(argv)
    spec, throttle = _load(args.shared)
    entries = _entries(spec, throttle)
    modules, records = _records(spec, entries)
    outputs = {
        TARGET: render(entries, records),
        RECORDS_DIR / "__init__.py": _render_records_init(modules),
        RESOURCES_TARGET: render_resources(spec, entries, records),
        SYNC_RESOURCES_TARGET: render_resources(spec, entries, records, sync=True),
    }
    for provider, module in modules.items():
        outputs[RECORDS_DIR / f"{provider}.py"] = module.render()
    stale = sorted(
        p for p in RECORDS_DIR.glob("*.py") if p not in outputs and not p.name.startswith("_")
    )
    if args.check:
        drifted = [
            p
            for p, source in outputs.items()
            if not p.exists() or p.read_text("utf-8") != _format(source)
        ]
        for path in drifted + stale:
            print(f"{path.relative_to(ROOT)} drifted from the OpenAPI file", file=sys.stderr)
        return 1 if drifted or stale else 0
    RECORDS_DIR.mkdir(exist_ok=True)
    for path, source in outputs.items():
        path.write_text(_format(source), "utf-8")
    for path in stale:
        path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
