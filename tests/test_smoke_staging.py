"""``pytest -m smoke``: the staging playbook (DINUM testing guide §2 and §5), over the network.

Skipped unless a staging token is given: ``API_ENTREPRISE_STAGING_TOKEN``, or
``API_ENTREPRISE_TOKEN`` when the run asks for ``-m smoke`` explicitly (so a production token
in a developer's environment never reaches staging by accident). The test token lives in the
operator's repository (``mocks/tokens/default``). Cases come from the staging fixtures
(``../shared/api-entreprise/payloads``), read at run time as the guide asks, never hard-coded.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest

from apientreprise_async import (
    ApiError,
    AsyncClient,
    AuthenticationError,
    InvalidParameterError,
    InvalidSirenError,
    NotFoundError,
    ValidationError,
    get_endpoint,
)

from .conftest import shared_or_skip

pytestmark = [pytest.mark.smoke, pytest.mark.anyio]

#: Billed to the DINUM by convention on staging (testing guide §1).
RECIPIENT = "13002526500013"
EXPECTED = {401: AuthenticationError, 404: NotFoundError, 422: ValidationError}


def _token(config: pytest.Config) -> str:
    token = os.environ.get("API_ENTREPRISE_STAGING_TOKEN")
    if token:
        return token
    if "smoke" in (config.option.markexpr or ""):
        token = os.environ.get("API_ENTREPRISE_TOKEN")
        if token:
            return token
    pytest.skip(
        "no staging token: set API_ENTREPRISE_STAGING_TOKEN (or API_ENTREPRISE_TOKEN with -m smoke)"
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the network is the subject here, not the event loop


@pytest.fixture
async def staging(pytestconfig: pytest.Config) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        token=_token(pytestconfig),
        environment="staging",
        recipient=RECIPIENT,
        context="Conformance DINUM (pytest -m smoke)",
        object="smoke",
    ) as client:
        yield client


def _cases(status: int) -> list[tuple[str, dict[str, Any]]]:
    """One case of ``status`` per operation, from the staging fixtures."""
    import yaml

    found: dict[str, dict[str, Any]] = {}
    for path in sorted((shared_or_skip() / "payloads").glob("*/*.y*ml")):
        case = yaml.safe_load(path.read_text("utf-8"))
        if case.get("status") == status and path.parent.name not in found:
            found[path.parent.name] = {k: str(v) for k, v in (case.get("params") or {}).items()}
    return sorted(found.items())


async def test_smoke_happy_path_on_every_provider(staging: AsyncClient) -> None:
    """Guide §2.1: a 200 per operation, data parsed, RateLimit-* populated, meta surfaced."""
    cases = _cases(200)
    failures = []
    for operation_id, params in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pinned deprecated versions
            try:
                response = await staging.call(operation_id, **params)
            except (ApiError, InvalidParameterError) as exc:
                failures.append(f"{operation_id}: {type(exc).__name__} {exc}")
                continue
        rate = response.rate_limit
        if response.http_status != 200 or rate is None or None in (rate.limit, rate.remaining):
            failures.append(f"{operation_id}: status {response.http_status}, rate_limit {rate}")
        assert isinstance(response.meta, dict)
    assert [] == failures
    assert {get_endpoint(op).provider for op, _ in cases} >= {"insee", "dgfip", "urssaf"}


async def test_smoke_error_mapping(staging: AsyncClient) -> None:
    """Guide §2.2: each error fixture raises the class its status maps to, with its code."""
    checked = 0
    for status, cls in EXPECTED.items():
        for operation_id, params in _cases(status)[:3]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    with pytest.raises(ApiError) as info:
                        await staging.call(operation_id, **params)
                except InvalidParameterError:
                    continue  # refused locally, before the network: §4.1 at work
            assert isinstance(info.value, cls), f"{operation_id}: {info.value!r}"
            assert status == info.value.http_status
            assert info.value.first_error_code
            checked += 1
    assert checked > 0


async def test_smoke_envelope_headers_and_escape_hatch(staging: AsyncClient) -> None:
    """Guide §2.5: every field on a 200, case-insensitive headers, client.get() same pipeline."""
    response = await staging.get("/v3/insee/sirene/unites_legales/418166096")
    assert 200 == response.http_status
    assert response.data["siren"] == response.raw["data"]["siren"] == "418166096"
    assert isinstance(response.links, dict)
    assert isinstance(response.meta, dict)
    headers = response.headers
    assert headers["RateLimit-Limit"] == headers["ratelimit-limit"] == headers["RATELIMIT-LIMIT"]
    assert response.rate_limit is not None
    assert response.rate_limit.reset_at is not None


async def test_smoke_local_validation_sends_nothing(staging: AsyncClient) -> None:
    """Guide §2.3: a Luhn-invalid SIREN is refused before any request."""
    before = staging.stats().attempts
    with pytest.raises(InvalidSirenError):
        await staging.insee.unites_legales("418166097")
    assert before == staging.stats().attempts


async def test_smoke_an_invalid_token_is_an_authentication_error(staging: AsyncClient) -> None:
    """Guide §2.2, first row: any call with an invalid token."""
    bad = staging.with_options(token="not-a-valid-token")
    with pytest.raises(AuthenticationError) as info:
        await bad.insee.unites_legales("418166096")
    assert 401 == info.value.http_status


def test_smoke_fixtures_are_where_the_playbook_expects_them() -> None:
    """The playbook reads the fixtures at run time; without them the smoke run has nothing."""
    payloads = pathlib.Path(shared_or_skip() / "payloads")
    assert any(payloads.glob("*/200.yaml"))
