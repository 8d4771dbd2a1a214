"""The typed resource groups: smoke test of every method, versions, deprecation, maintenance."""

from __future__ import annotations

import datetime as dt
import inspect
import warnings
from typing import Any

import httpx
import pytest

from apientreprise_async import (
    AsyncClient,
    Limits,
    MaintenanceWindowError,
    all_endpoints,
    get_endpoint,
)
from apientreprise_async._catalogue import GROUP_LIMITS, IdKind, Maintenance, match_path
from apientreprise_async._gen_resources import RENAMED
from apientreprise_async.records import api_entreprise, insee

from .conftest import RECIPIENT, TOKEN
from .record_examples import UNITE_LEGALE, example_data

pytestmark = pytest.mark.anyio

DUMMY = {
    IdKind.SIREN: "418166096",
    IdKind.SIRET: "41816609600051",
    IdKind.YEAR: 2023,
    IdKind.MONTH: 3,
    IdKind.SIRET_OR_EORI: "41816609600051",
    IdKind.SIRET_OR_RNA: "W751004076",
    IdKind.SIREN_OR_RNA: "W751004076",
    IdKind.SIREN_OR_SIRET_OR_RNA: "41816609600051",
}


class Stub:
    """A transport answering any catalogue path with a valid example of its record."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        found = match_path(request.url.path)
        assert found is not None, request.url.path
        endpoint, _ = found
        return httpx.Response(
            200, json={"data": example_data(endpoint.record), "links": {}, "meta": {}}
        )


def client_for(stub: Stub, **kw: Any) -> AsyncClient:
    limits = Limits(groups=dict.fromkeys(GROUP_LIMITS, 100_000), ip=1_000_000, period=1.0)
    kw.setdefault("check_maintenance", False)
    kw.setdefault("strict", True)
    return AsyncClient(
        token=TOKEN,
        recipient=RECIPIENT,
        context="tests",
        object="case-1",
        transport=httpx.MockTransport(stub),
        limits=limits,
        **kw,
    )


def _groups(client: AsyncClient) -> list[tuple[str, str, Any]]:
    from apientreprise_async._gen_resources import Resources

    found = []
    for provider in sorted(Resources.__annotations__):
        group = getattr(client, provider)
        for name, method in inspect.getmembers(group, inspect.iscoroutinefunction):
            if not name.startswith("_"):
                found.append((provider, name, method))
    return found


async def test_every_method_runs_with_dummy_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    """Smoke test (DINUM spec): each typed method, valid dummies, a stub, no local error."""
    stub = Stub()
    calls = 0
    async with client_for(stub) as client:
        for provider, name, method in _groups(client):
            kinds = {}
            for e in all_endpoints():
                if e.provider == provider:
                    kinds.update({p.name: p.kind for p in e.path_params})
            params = inspect.signature(method).parameters
            args = [
                DUMMY.get(kinds[n], "418166096")
                for n, p in params.items()
                if p.kind is p.POSITIONAL_OR_KEYWORD
            ]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                response = await method(*args)
            assert response.operation_id is not None
            endpoint = get_endpoint(response.operation_id)
            # Deprecated operations warn, and so do the old names of renamed methods.
            expected = [DeprecationWarning] * (endpoint.deprecated + ((provider, name) in RENAMED))
            assert expected == [w.category for w in caught], f"{provider}.{name}"
            calls += 1
            assert 200 == response.http_status
            record = endpoint.record
            if isinstance(record, type):
                assert isinstance(response.data, record)
            else:
                assert isinstance(response.data, tuple)
    assert calls == len(stub.requests) == len(_groups(client))
    with capsys.disabled():
        print(f"\nsmoke test: {calls} typed methods called against the stub")


async def test_typed_method_returns_the_record_and_sends_the_path() -> None:
    """client.insee.unites_legales(siren) calls v4 and returns a UniteLegale."""
    stub = Stub()
    async with client_for(stub) as client:
        response = await client.insee.unites_legales("418166096", context="other", fresh=True)
    assert isinstance(response.data, insee.UniteLegale)
    sent = stub.requests[0]
    assert "/v4/insee/sirene/unites_legales/418166096" == sent.url.path
    assert "other" == sent.url.params["context"]
    assert "no-cache" == sent.headers["cache-control"]


async def test_path_params_positional_and_query_params_keywords() -> None:
    """gip_mds.annee(siret, year, month, nature_effectif=...) fills path and query.

    The reference client's order (year, month), by position or by keyword; the old name
    keeps its old order (month, year) and warns.
    """
    stub = Stub()
    async with client_for(stub) as client:
        await client.gip_mds.annee("41816609600051", 2023, 3, nature_effectif="boeth")
        await client.gip_mds.annee("41816609600051", month=3, year=2023, profondeur=None)
        with pytest.warns(DeprecationWarning, match="gip_mds.annee"):
            await client.gip_mds.effectifs_mensuels("41816609600051", 3, 2023)
    path = "/v3/gip_mds/etablissements/41816609600051/effectifs_mensuels/03/annee/2023"
    assert [path] * 3 == [r.url.path for r in stub.requests]
    assert "boeth" == stub.requests[0].url.params["nature_effectif"]
    assert "profondeur" not in stub.requests[1].url.params


async def test_version_pins_an_older_version_with_a_deprecation_warning() -> None:
    """version=3 calls v3, warns and names the successor; the record is the v3 one."""
    stub = Stub()
    async with client_for(stub) as client:
        with pytest.warns(
            DeprecationWarning, match="use api_entreprise_v4_insee_unites_legales"
        ) as caught:
            response = await client.insee.unites_legales("418166096", version=3)
    assert "/v3/insee/sirene/unites_legales/418166096" == stub.requests[0].url.path
    assert isinstance(response.data, insee.UniteLegaleV3)
    assert __file__ == caught[0].filename


async def test_call_by_operation_id_also_warns() -> None:
    """call() on a deprecated operation warns too, pointing at the caller."""
    stub = Stub()
    async with client_for(stub) as client:
        with pytest.warns(
            DeprecationWarning, match="api_entreprise_v3_dgfip_attestations_fiscales"
        ) as caught:
            await client.call("api_entreprise_v3_dgfip_attestations_fiscales", siren="418166096")
    assert __file__ == caught[0].filename


@pytest.mark.parametrize("version", [2, 5, True])
async def test_unknown_version_is_a_value_error(version: Any) -> None:
    """A version the endpoint does not have raises ValueError before any request."""
    stub = Stub()
    async with client_for(stub) as client:
        with pytest.raises(ValueError, match="version"):
            await client.insee.unites_legales("418166096", version=version)
    assert [] == stub.requests


async def test_maintenance_window_refuses_generated_methods_locally() -> None:
    """During its window an operation raises MaintenanceWindowError, unless checks are off."""
    import attrs

    from apientreprise_async import _catalogue

    endpoint = get_endpoint("api_entreprise_v4_insee_unites_legales")
    always = Maintenance(dt.time(0, 0), dt.time(23, 59))
    original = _catalogue._BY_ID[endpoint.operation_id]
    _catalogue._BY_ID[endpoint.operation_id] = attrs.evolve(endpoint, maintenance=always)
    try:
        stub = Stub()
        async with client_for(stub, check_maintenance=True) as client:
            with pytest.raises(MaintenanceWindowError):
                await client.insee.unites_legales("418166096")
            assert [] == stub.requests
            relaxed = client.with_options(check_maintenance=False)
            await relaxed.insee.unites_legales("418166096")
        assert 1 == len(stub.requests)
    finally:
        _catalogue._BY_ID[endpoint.operation_id] = original


async def test_privileges_returns_a_record() -> None:
    """client.privileges() structures the token's privileges."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert "/privileges" == request.url.path
        assert "recipient" not in request.url.params
        return httpx.Response(
            200, json={"data": {"privileges": ["unites_legales_etablissements_insee"]}}
        )

    limits = Limits(groups=dict.fromkeys(GROUP_LIMITS, 1000), period=1.0)
    async with AsyncClient(
        token=TOKEN, transport=httpx.MockTransport(handle), limits=limits
    ) as client:
        response = await client.privileges()
    assert isinstance(response.data, api_entreprise.Privileges)
    assert ("unites_legales_etablissements_insee",) == response.data.privileges


async def test_get_keeps_raw_json() -> None:
    """The escape hatch returns the parsed JSON, not a record."""
    stub = Stub()
    async with client_for(stub) as client:
        response = await client.get("/v4/insee/sirene/unites_legales/418166096")
    assert isinstance(response.data, dict)
    assert UNITE_LEGALE.keys() <= response.data.keys()
