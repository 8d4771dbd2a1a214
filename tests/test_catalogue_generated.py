"""The generated catalogue, records and resource groups: drift and shape."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from apientreprise_async import AsyncClient, all_endpoints, get_endpoint, records
from apientreprise_async._gen_resources import RENAMED, Resources
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
        if not name.startswith("_") and (p, name) not in RENAMED
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
        ("insee", "diffusibles_adresse", ["siret"]),
        ("insee", "diffusibles_siege_social", ["siren"]),
        ("insee", "unites_legales_siege_social", ["siren"]),
        ("urssaf", "attestation_vigilance", ["siren"]),
        ("dgfip", "liasses_fiscales", ["siren", "year"]),
        # The OpenAPI file's order, as the reference client takes them.
        ("gip_mds", "annee", ["siret", "year", "month"]),
        ("djepva", "open_data", ["siren_or_rna"]),
        # Deprecated aliases keep their old signature.
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


def test_version_keyword_defaults_to_the_newest_version() -> None:
    """version= defaults to the newest version; a single-version method takes its only one."""
    client = _client()
    assert 4 == inspect.signature(client.insee.unites_legales).parameters["version"].default
    only = inspect.signature(client.insee.successions).parameters["version"]
    assert (3, inspect.Parameter.KEYWORD_ONLY) == (only.default, only.kind)


def test_renamed_methods_keep_their_old_names_as_deprecated_aliases() -> None:
    """Each old name maps to a method that exists; the old one is still there."""
    client = _client()
    for (provider, old), new in RENAMED.items():
        group = getattr(client, provider)
        assert inspect.iscoroutinefunction(getattr(group, new))
        assert inspect.iscoroutinefunction(getattr(group, old))
        assert "deprecated" in (getattr(group, old).__doc__ or "")


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
