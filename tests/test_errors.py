"""Status → exception mapping: the DINUM matrix and a replay of every OpenAPI error example."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import httpx
import pytest

from apientreprise_async import (
    ApiEntrepriseError,
    AsyncClient,
    AuthenticationError,
    AuthorizationError,
    ClientError,
    ConflictError,
    Governor,
    NotFoundError,
    ProviderError,
    ProviderUnavailableError,
    RateLimit,
    RateLimitError,
    ServerError,
    TransportError,
    UnavailableForLegalReasonsError,
    ValidationError,
)
from apientreprise_async._errors import error_from_response
from apientreprise_async._response import parse_rate_limit
from apientreprise_async.backends import InMemoryBackend

from .conftest import RECIPIENT, TOKEN, shared_or_skip

pytestmark = pytest.mark.anyio

PATH = "/v4/insee/sirene/unites_legales/418166096"

MATRIX = [
    (401, "00101", AuthenticationError),
    (401, "00103", AuthenticationError),
    (401, "00105", AuthenticationError),
    (403, "00100", AuthorizationError),
    (404, "01003", NotFoundError),
    (409, "00015", ConflictError),
    (422, "00201", ValidationError),
    (422, "00301", ValidationError),
    (429, "00429", RateLimitError),
    (451, "03451", UnavailableForLegalReasonsError),
    (502, "04001", ProviderError),
    (503, "01001", ProviderUnavailableError),
    (504, "01002", ProviderUnavailableError),
    (418, "99999", ClientError),
    (599, "99999", ServerError),
]


def client_answering(response: httpx.Response | Exception) -> AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        if isinstance(response, Exception):
            raise response
        return response

    return AsyncClient(
        token=TOKEN,
        recipient=RECIPIENT,
        context="tests",
        object="errors",
        transport=httpx.MockTransport(handle),
    )


@pytest.mark.parametrize(("status", "code", "cls"), MATRIX, ids=[str(m[:2]) for m in MATRIX])
async def test_mapping_matrix(status: int, code: str, cls: type[ApiEntrepriseError]) -> None:
    """Each status maps to its exception, with the fields the spec requires."""
    body = {
        "errors": [
            {
                "code": code,
                "title": "Titre",
                "detail": "Détail de l'erreur",
                "source": {"parameter": "siren"},
                "meta": {"provider": "INSEE"},
            }
        ]
    }
    async with client_answering(httpx.Response(status, json=body)) as client:
        with pytest.raises(cls) as info:
            await client.get(PATH)
    error = info.value
    assert type(error) is cls
    assert status == error.http_status  # type: ignore[attr-defined]
    assert code == error.errors[0]["code"]  # type: ignore[attr-defined]
    assert code == error.first_error_code  # type: ignore[attr-defined]
    assert "Détail de l'erreur" == error.first_error_detail  # type: ignore[attr-defined]
    assert {"parameter": "siren"} == error.first_error_source  # type: ignore[attr-defined]
    assert "Titre" == error.first_error_title  # type: ignore[attr-defined]
    assert "INSEE" == error.provider  # type: ignore[attr-defined]
    assert "GET" == error.method  # type: ignore[attr-defined]
    assert PATH in error.url  # type: ignore[attr-defined]
    assert "api_entreprise_v4_insee_unites_legales" == error.operation_id  # type: ignore[attr-defined]
    assert str(status) in str(error)


async def test_network_failure_is_transport_error() -> None:
    """A refused connection is a TransportError with no status and no errors."""
    async with client_answering(httpx.ConnectError("refused")) as client:
        with pytest.raises(TransportError) as info:
            await client.get(PATH)
    assert info.value.http_status is None
    assert [] == info.value.errors
    assert PATH in info.value.url


@pytest.mark.parametrize(
    ("code", "reason"), [("00101", "invalid"), ("00103", "expired"), ("00105", "blacklisted")]
)
def test_authentication_reasons(code: str, reason: str) -> None:
    """The three 401 codes are told apart."""
    error = make_error(401, {"errors": [{"code": code}]})
    assert isinstance(error, AuthenticationError)
    assert reason == error.reason


def make_error(
    status: int, body: Any, headers: dict[str, str] | None = None, now: float = 1000.0
) -> Any:
    h = httpx.Headers(headers or {})
    return error_from_response(
        status,
        body,
        method="GET",
        url="https://x.test" + PATH,
        headers=h,
        operation_id=None,
        rate_limit=parse_rate_limit(h),
        request_id=None,
        now=now,
    )


def test_retry_after_sources_in_order() -> None:
    """Retry-After, then RateLimit-Reset, then meta.retry_in; clamped; None when unknown."""
    reset = {"RateLimit-Limit": "250", "RateLimit-Remaining": "0", "RateLimit-Reset": "1012.5"}
    body = {"errors": [{"code": "00429", "meta": {"retry_in": 7}}]}
    assert 3.25 == make_error(429, body, {"Retry-After": "3.25", **reset}).retry_after
    assert 12.5 == make_error(429, body, reset).retry_after
    assert 7 == make_error(429, body).retry_after
    past = {**reset, "RateLimit-Reset": "900"}
    assert 0 == make_error(429, body, past).retry_after
    assert 0 == make_error(429, body, {"Retry-After": "-4"}).retry_after
    unknown = make_error(429, {"errors": [{"code": "00429"}]})
    assert unknown.retry_after is None
    garbage = make_error(429, {"errors": []}, {"Retry-After": "soon", "RateLimit-Reset": "x"})
    assert garbage.retry_after is None


def test_retry_in_is_surfaced_on_502() -> None:
    """meta.retry_in of a provider error is kept, in seconds."""
    error = make_error(
        502, {"errors": [{"code": "04001", "meta": {"provider": "DGFIP", "retry_in": 10}}]}
    )
    assert isinstance(error, ProviderError)
    assert 10 == error.retry_in
    assert "DGFIP" == error.provider


@pytest.mark.parametrize("body", [None, "oops", {"errors": "x"}, {"errors": [1, None]}, []])
def test_odd_error_bodies_never_crash(body: Any) -> None:
    """Whatever the body, the status still decides the class."""
    error = make_error(502, body)
    assert isinstance(error, ProviderError)
    assert 502 == error.http_status


def test_rate_limit_parser() -> None:
    """Integer and decimal headers parse; missing or malformed give None."""
    rl = parse_rate_limit(
        httpx.Headers(
            {"RateLimit-Limit": "50", "RateLimit-Remaining": "47", "RateLimit-Reset": "1637223155"}
        )
    )
    assert rl is not None
    assert (50, 47, 1637223155.0) == (rl.limit, rl.remaining, rl.reset_epoch)
    assert 2021 == rl.reset_at.year
    decimal = parse_rate_limit(
        httpx.Headers(
            {"RateLimit-Limit": "5", "RateLimit-Remaining": "0", "RateLimit-Reset": "12.75"}
        )
    )
    assert decimal is not None
    assert 12.75 == decimal.reset_epoch
    # Partial or partly malformed headers give what they can (DINUM spec §7.1).
    assert RateLimit(50, None, None) == parse_rate_limit(httpx.Headers({"RateLimit-Limit": "50"}))
    partly = parse_rate_limit(
        httpx.Headers({"RateLimit-Limit": "x", "RateLimit-Remaining": "1", "RateLimit-Reset": "1"})
    )
    assert RateLimit(None, 1, 1.0) == partly
    nan = parse_rate_limit(
        httpx.Headers(
            {"RateLimit-Limit": "nan", "RateLimit-Remaining": "-1", "RateLimit-Reset": "z"}
        )
    )
    assert nan is None


@functools.cache
def _load_spec() -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((shared_or_skip() / "openapi.yaml").read_text("utf-8"), Loader=loader)


def _openapi_examples() -> list[tuple[str, str, int, dict[str, Any]]]:
    spec = _load_spec()
    cases = []
    for path, item in spec["paths"].items():
        for status, response in item["get"]["responses"].items():
            if not status.isdigit() or int(status) < 400:
                continue
            content = response.get("content", {}).get("application/json", {})
            examples = content.get("examples") or {}
            if not examples:
                # Statuses documented without an example still get replayed with a bare body.
                cases.append((path, "no-example", int(status), {"errors": []}))
            for name, example in examples.items():
                cases.append((path, name, int(status), example["value"]))
    return cases


async def _replay(transport: httpx.MockTransport, path: str) -> ApiEntrepriseError:
    async with AsyncClient(
        token=TOKEN,
        recipient=RECIPIENT,
        context="replay",
        object="openapi",
        transport=transport,
        governor=Governor(backend=InMemoryBackend()),
        check_maintenance=False,
    ) as client:
        with pytest.raises(ApiEntrepriseError) as info:
            await client.get(path)
    return info.value


async def test_replay_every_openapi_error_example(anyio_backend: Any) -> None:
    """Every error example of every operation maps to the exception of its status."""
    cases = _openapi_examples()
    expected = {
        401: AuthenticationError,
        403: AuthorizationError,
        404: NotFoundError,
        409: ConflictError,
        422: ValidationError,
        429: RateLimitError,
        451: UnavailableForLegalReasonsError,
        502: ProviderError,
        503: ProviderUnavailableError,
        504: ProviderUnavailableError,
    }
    seen_statuses: set[int] = set()
    current: dict[str, Any] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(current["status"], json=current["body"])

    transport = httpx.MockTransport(handle)
    for path, name, status, body in cases:
        current.update(status=status, body=body)
        concrete = path
        for param, value in (
            ("{siren}", "418166096"),
            ("{siret}", "41816609600051"),
            ("{year}", "2022"),
            ("{month}", "03"),
            ("{siren_or_rna}", "418166096"),
            ("{siret_or_rna}", "41816609600051"),
            ("{siret_or_eori}", "41816609600051"),
            ("{siren_or_siret_or_rna}", "418166096"),
        ):
            concrete = concrete.replace(param, value)
        # A fresh governor per case: a replayed 429 would otherwise pause the bucket.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # v3 paths are replayed too
            error = await _replay(transport, concrete)
        assert isinstance(error, expected[status]), (path, name)
        assert status == error.http_status  # type: ignore[attr-defined]
        raw_errors = body.get("errors") or []
        if raw_errors:
            assert raw_errors[0].get("code") == error.first_error_code, (path, name)
            meta = raw_errors[0].get("meta") or {}
            if "provider" in meta:
                assert meta["provider"] == error.provider
        seen_statuses.add(status)
    statuses_in_spec = {s for _, _, s, _ in cases}
    assert statuses_in_spec == seen_statuses
    assert len(cases) > 300, len(cases)
    print(f"replayed {len(cases)} OpenAPI error examples covering statuses {sorted(seen_statuses)}")
