"""The generated catalogue, records and resource groups: drift and shape."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from apientreprise_async import AsyncClient, all_endpoints, get_endpoint, records
from apientreprise_async._gen_resources import Resources
from apientreprise_async._resource import ResourceGroup

from .conftest import ROOT, TOKEN, shared_or_skip


def test_generated_modules_match_the_openapi_file() -> None:
    """tools/generate.py --check finds no drift in the catalogue, records or resources."""
    shared = shared_or_skip()
    result = subprocess.run(
        [sys.executable, "tools/generate.py", "--check", "--shared", str(shared.parent)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert 0 == result.returncode, result.stderr


def test_every_operation_has_a_record() -> None:
    """Each catalogue entry names the record its 200 answer structures into."""
    missing = [e.operation_id for e in all_endpoints() if e.record is None]
    assert [] == missing
    assert records.api_entreprise.Privileges is get_endpoint("api_entreprise_privileges").record


def _client() -> AsyncClient:
    return AsyncClient(token=TOKEN)


def test_one_group_per_provider_and_one_method_per_logical_endpoint() -> None:
    """Groups are named after the path segment after /vN/; versions fold into one method."""
    client = _client()
    providers = {e.provider for e in all_endpoints() if e.version}
    assert providers == set(Resources.__annotations__)
    methods = {
        (p, name)
        for p in providers
        for name, _ in inspect.getmembers(type(getattr(client, p)), inspect.iscoroutinefunction)
        if not name.startswith("_")
    }
    versioned = {(e.provider, e.path.split("/", 2)[2]) for e in all_endpoints() if e.version}
    assert len(versioned) == len(methods)
    assert isinstance(client.insee, ResourceGroup)


@pytest.mark.parametrize(
    ("provider", "method", "positional"),
    [
        ("insee", "unites_legales", ["siren"]),
        ("insee", "unites_legales_diffusibles", ["siren"]),
        ("insee", "etablissements_adresse", ["siret"]),
        ("insee", "etablissements_diffusibles_adresse", ["siret"]),
        ("urssaf", "attestation_vigilance", ["siren"]),
        ("dgfip", "liasses_fiscales", ["siren", "year"]),
        ("gip_mds", "effectifs_mensuels", ["siret", "month", "year"]),
        ("djepva", "associations_open_data", ["siren_or_rna"]),
    ],
)
def test_method_names_follow_the_dinum_rule(
    provider: str, method: str, positional: list[str]
) -> None:
    """Last meaningful segments, collisions prefixed; path parameters come first, in order."""
    bound = getattr(getattr(_client(), provider), method)
    params = inspect.signature(bound).parameters
    firsts = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == firsts
    for keyword in ("recipient", "context", "object", "fresh", "timeout", "max_wait"):
        assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY


def test_version_keyword_only_where_several_versions_exist() -> None:
    """version= defaults to the newest version, and exists only on multi-version endpoints."""
    client = _client()
    assert 4 == inspect.signature(client.insee.unites_legales).parameters["version"].default
    assert "version" not in inspect.signature(client.insee.successions).parameters


def test_records_are_frozen_and_slotted() -> None:
    """Every generated record class is a frozen, slotted attrs class deriving from Record."""
    import attrs

    classes = [
        getattr(module, name)
        for module in (getattr(records, m) for m in records.__all__ if m != "Record")
        for name in module.__all__
    ]
    assert len(classes) > 100
    for cls in classes:
        assert issubclass(cls, records.Record)
        assert attrs.has(cls)
        assert "__slots__" in cls.__dict__
        assert cls.__setattr__ is not object.__setattr__
