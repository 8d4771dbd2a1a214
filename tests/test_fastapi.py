"""FastAPI integration: lifespan, error handlers, and the browser proxy, against the emulator."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware

import apientreprise_async.fastapi as af
from apientreprise_async import (
    AsyncClient,
    AuthenticationError,
    AuthorizationError,
    ConflictError,
    Governor,
    InvalidSirenError,
    MaintenanceWindowError,
    MissingParameterError,
    NotFoundError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    ServiceUnreachable,
    TokenExpiredError,
    TransportError,
    UnavailableForLegalReasonsError,
    UnknownOperationError,
    ValidationError,
)
from apientreprise_async._governor import default_backend
from apientreprise_async.backends import InMemoryBackend
from apientreprise_async.fastapi import (
    ApiEntrepriseClient,
    ApiEntrepriseSettings,
    ProxyOperation,
    Traceability,
    UserRateLimit,
    install_exception_handlers,
    make_lifespan,
    make_proxy_router,
)
from apientreprise_async.testing import Emulator

from .conftest import RECIPIENT, ROOT, TOKEN, make_jwt

pytestmark = pytest.mark.anyio

UL = "api_entreprise_v4_insee_unites_legales"
ETAB = "api_entreprise_v4_insee_etablissements"
RGE = "api_entreprise_v3_ademe_certificats_rge"
SIREN = "832147656"  # a built-in company of the emulator
SIRET = "83214765600017"
UNKNOWN_SIREN = "418166096"  # valid checksum, unknown to the emulator
OTHER_TOKEN = make_jwt({"sub": "not-registered"})

# The app's users and the cases they handle; the browser only says who it is (X-User).
USERS = {"alice": "dossier-42", "bob": "dossier-77"}


async def current_user(x_user: Annotated[str | None, Header()] = None) -> str:
    """Stand-in for a real authentication dependency."""
    if x_user not in USERS:
        raise HTTPException(401, "who are you?")
    return x_user


async def tracing(user: Annotated[str, Depends(current_user)]) -> Traceability:
    """Traceability from the authenticated user and the case they handle."""
    return Traceability(object=USERS[user], context=f"Instruction par {user}")


class Recording(httpx.AsyncBaseTransport):
    """Keeps every request the client sends upstream, then passes it on."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Record, then forward."""
        self.sent.append(request)
        return await self.inner.handle_async_request(request)


class Harness:
    """An app with the proxy, the emulator behind its client, and a browser in front."""

    def __init__(self, app: FastAPI, emulator: Emulator, upstream: Recording) -> None:
        self.app = app
        self.emulator = emulator
        self.upstream = upstream
        self.responses: list[httpx.Response] = []

    async def request(
        self, method: str, url: str, user: str | None = "alice", **kw: Any
    ) -> httpx.Response:
        """Send a request through the app as a browser of ``user``; keep the answer."""
        headers = dict(kw.pop("headers", {}))
        if user is not None:
            headers["X-User"] = user
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as browser:
            response = await browser.request(method, url, headers=headers, **kw)
        self.responses.append(response)
        return response

    async def get(self, url: str, user: str | None = "alice", **kw: Any) -> httpx.Response:
        """GET through the app as a browser of ``user``."""
        return await self.request("GET", url, user, **kw)


def build_app(
    operations: Sequence[str | ProxyOperation],
    *,
    token: str = TOKEN,
    emulator: Emulator | None = None,
    tracing_dep: Callable[..., Any] = tracing,
    middleware: Callable[[FastAPI], None] | None = None,
    settings: ApiEntrepriseSettings | None = None,
    **router_kw: Any,
) -> tuple[FastAPI, Emulator, Recording]:
    """A FastAPI app proxying ``operations`` to an emulator that knows ``TOKEN``."""
    if emulator is None:
        emulator = Emulator()
        emulator.add_token(TOKEN)
    upstream = Recording(emulator.transport())
    app = FastAPI(
        lifespan=make_lifespan(
            settings or ApiEntrepriseSettings(token=token, recipient=RECIPIENT, context="defaut"),
            transport=upstream,
            # A backend of its own: the process-wide one is shared with other tests' loops.
            governor=Governor(backend=InMemoryBackend()),
            check_maintenance=False,
        )
    )
    if middleware is not None:
        middleware(app)
    install_exception_handlers(app)
    app.include_router(make_proxy_router(operations, tracing=tracing_dep, **router_kw), prefix="/p")
    return app, emulator, upstream


@asynccontextmanager
async def running(
    operations: Sequence[str | ProxyOperation] = (UL, ETAB, RGE), **kw: Any
) -> AsyncIterator[Harness]:
    """The app of :func:`build_app` between startup and shutdown."""
    app, emulator, upstream = build_app(operations, **kw)
    async with app.router.lifespan_context(app):
        yield Harness(app, emulator, upstream)


def scan_for_token(responses: Sequence[httpx.Response], token: str) -> None:
    """Fail if the token, or its payload or signature part, shows in any body or header."""
    secrets = [token, *(part for part in token.split(".")[1:] if len(part) >= 8)]
    for response in responses:
        texts = [response.text, *(f"{k}: {v}" for k, v in response.headers.multi_items())]
        for text in texts:
            for secret in secrets:
                assert secret not in text, f"token material in {response.request.url}"


# -- module surface ---------------------------------------------------------------------


def test_all_lists_the_public_names() -> None:
    """``__all__`` is resolvable and covers every public name of the module."""
    assert len(set(af.__all__)) == len(af.__all__)
    for name in af.__all__:
        assert hasattr(af, name)
    own = {
        name
        for name, value in vars(af).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == af.__name__
    }
    assert own <= set(af.__all__)


def test_root_import_does_not_need_fastapi() -> None:
    """Importing the package never imports FastAPI or Starlette."""
    code = (
        "import sys, apientreprise_async; "
        "assert 'fastapi' not in sys.modules and 'starlette' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FastAPI the import fails with the pip command of the extra."""
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "apientreprise_async.fastapi")
    with pytest.raises(ImportError, match=r"pip install 'apientreprise_async\[fastapi\]'"):
        importlib.import_module("apientreprise_async.fastapi")


def test_settings_from_environment() -> None:
    """Settings come from API_ENTREPRISE_* variables; the token stays out of repr."""
    settings = ApiEntrepriseSettings.from_env(
        {
            "API_ENTREPRISE_TOKEN": TOKEN,
            "API_ENTREPRISE_ENV": "staging",
            "API_ENTREPRISE_RECIPIENT": RECIPIENT,
            "API_ENTREPRISE_CONTEXT": "Aides publiques",
            "API_ENTREPRISE_MAX_WAIT": "2.5",
        }
    )
    assert TOKEN not in repr(settings)
    assert {
        "token": TOKEN,
        "environment": "staging",
        "recipient": RECIPIENT,
        "context": "Aides publiques",
        "max_wait": 2.5,
    } == settings.client_kwargs()
    assert 10.0 == ApiEntrepriseSettings.from_env({}).max_wait
    assert ApiEntrepriseSettings.from_env({"API_ENTREPRISE_MAX_WAIT": "none"}).max_wait is None
    with pytest.raises(ValueError, match="API_ENTREPRISE_MAX_WAIT"):
        ApiEntrepriseSettings.from_env({"API_ENTREPRISE_MAX_WAIT": "soon"})


# -- lifespan and dependency ------------------------------------------------------------


async def test_lifespan_shares_one_client_and_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request gets the same client, built from the environment and closed at shutdown."""
    monkeypatch.setenv("API_ENTREPRISE_TOKEN", TOKEN)
    monkeypatch.setenv("API_ENTREPRISE_MAX_WAIT", "3")
    monkeypatch.setenv("API_ENTREPRISE_RECIPIENT", RECIPIENT)
    monkeypatch.setenv("API_ENTREPRISE_CONTEXT", "tests")
    seen: list[AsyncClient] = []
    app = FastAPI(lifespan=make_lifespan())

    @app.get("/who")
    async def who(client: ApiEntrepriseClient) -> dict[str, Any]:
        seen.append(client)
        return {"max_wait": client.settings.max_wait}

    async with app.router.lifespan_context(app) as state:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as browser:
            first = await browser.get("/who")
            await browser.get("/who")
        assert {"max_wait": 3.0} == first.json()
        assert state is not None
        assert seen[0] is seen[1] is state[af.STATE_KEY]
    assert getattr(app.state, af.STATE_KEY) is None
    with pytest.raises(RuntimeError, match="closed"):
        await seen[0].call(UL, siren=SIREN, recipient=RECIPIENT, context="c", object="o")


async def test_dependency_without_lifespan_says_what_to_do() -> None:
    """A route asking for the client in an app without the lifespan fails with the fix."""
    app = FastAPI()

    @app.get("/who")
    async def who(client: ApiEntrepriseClient) -> None:
        raise AssertionError("not reached")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as browser:
        with pytest.raises(RuntimeError, match=r"lifespan=make_lifespan\(\)"):
            await browser.get("/who")


@pytest.mark.parametrize(
    "cors",
    [{"allow_origins": ["*"]}, {"allow_origin_regex": r"https://.*"}],
    ids=["star", "regex"],
)
async def test_startup_refuses_wildcard_cors(cors: dict[str, Any]) -> None:
    """An app letting every origin read its answers does not start."""
    app, _, _ = build_app([UL], middleware=lambda a: a.add_middleware(CORSMiddleware, **cors))
    with pytest.raises(RuntimeError, match="allows every origin"):
        async with app.router.lifespan_context(app):
            pass


async def test_proxy_refuses_wildcard_cors_added_after_startup() -> None:
    """The proxy itself stays closed if a wildcard CORS middleware slips in later."""
    async with running([UL]) as h:
        h.app.add_middleware(CORSMiddleware, allow_origins=["*"])
        response = await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}")
    assert 500 == response.status_code
    assert "server_misconfigured" == response.json()["detail"]["error"]
    assert [] == h.upstream.sent


async def test_specific_origin_cors() -> None:
    """A listed front-end origin is allowed; any other gets no CORS header."""
    front = "https://front.example.gouv.fr"

    def cors(app: FastAPI) -> None:
        app.add_middleware(
            CORSMiddleware, allow_origins=[front], allow_methods=["GET"], allow_headers=["X-User"]
        )

    async with running([UL], middleware=cors) as h:
        url = f"/p/v4/insee/sirene/unites_legales/{SIREN}"
        ours = await h.get(url, headers={"Origin": front})
        theirs = await h.get(url, headers={"Origin": "https://evil.example"})
        asking = {"Access-Control-Request-Method": "GET"}
        preflight = await h.request("OPTIONS", url, headers={"Origin": front, **asking})
        refused = await h.request(
            "OPTIONS", url, headers={"Origin": "https://evil.example", **asking}
        )
    assert 200 == ours.status_code
    assert front == ours.headers["access-control-allow-origin"]
    assert "access-control-allow-origin" not in theirs.headers
    assert front == preflight.headers["access-control-allow-origin"]
    assert 400 == refused.status_code
    assert "access-control-allow-origin" not in refused.headers


# -- error handlers ---------------------------------------------------------------------


def _api(cls: type[Any], status: int, **kw: Any) -> Any:
    errors: list[dict[str, Any]] = [
        {"code": "99999", "title": "secret upstream title", "detail": "secret detail"}
    ]
    if "retry_in" in kw:
        errors[0]["meta"] = {"retry_in": kw.pop("retry_in")}
    return cls(
        f"HTTP {status}: secret upstream title",
        http_status=status,
        errors=errors,
        url="https://entreprise.api.gouv.fr/v3/x?recipient=1",
        request_id="req-1",
        **kw,
    )


def _timeout() -> TransportError:
    try:
        raise TransportError("timed out: ReadTimeout on /v3/x") from httpx.ReadTimeout("slow")
    except TransportError as exc:
        return exc


ERROR_CASES: list[tuple[str, Callable[[], Exception], int, str, str | None]] = [
    (
        "siren",
        lambda: InvalidSirenError("siren", "'1' is not a valid SIREN"),
        422,
        "invalid_parameter",
        None,
    ),
    ("traceability", lambda: MissingParameterError("recipient"), 500, "server_misconfigured", None),
    ("404", lambda: _api(NotFoundError, 404), 404, "not_found", None),
    ("451", lambda: _api(UnavailableForLegalReasonsError, 451), 451, "not_diffusible", None),
    ("422", lambda: _api(ValidationError, 422), 422, "invalid_parameter", None),
    ("429", lambda: _api(RateLimitError, 429, retry_after=12.2), 503, "rate_limited", "13"),
    ("429-unknown", lambda: _api(RateLimitError, 429), 503, "rate_limited", "60"),
    ("409", lambda: _api(ConflictError, 409), 503, "in_progress", "1"),
    (
        "504",
        lambda: _api(ProviderUnavailableError, 504, retry_in=7),
        503,
        "provider_unavailable",
        "7",
    ),
    ("maintenance", lambda: MaintenanceWindowError(UL, 90.5), 503, "maintenance", "91"),
    ("unreachable", lambda: ServiceUnreachable("silence"), 503, "unreachable", "60"),
    ("401", lambda: _api(AuthenticationError, 401), 502, "upstream_refused", None),
    ("expired", lambda: TokenExpiredError("expired"), 502, "upstream_refused", None),
    ("403", lambda: _api(AuthorizationError, 403), 502, "upstream_refused", None),
    ("502", lambda: _api(ProviderError, 502), 502, "upstream_error", None),
    ("timeout", _timeout, 504, "upstream_timeout", None),
    ("transport", lambda: TransportError("reset"), 502, "upstream_error", None),
    ("unknown-op", lambda: UnknownOperationError("nope"), 500, "internal_error", None),
]


@pytest.mark.parametrize(
    ("make", "status", "slug", "retry_after"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
async def test_exception_handlers(
    make: Callable[[], Exception], status: int, slug: str, retry_after: str | None
) -> None:
    """Each library error becomes its HTTP answer, without upstream details by default."""
    app = FastAPI()
    install_exception_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise make()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as browser:
        response = await browser.get("/boom")
    assert status == response.status_code
    assert slug == response.json()["detail"]["error"]
    assert retry_after == response.headers.get("retry-after")
    assert "no-store" == response.headers["cache-control"]
    assert "secret" not in response.text
    assert "upstream" not in response.json()["detail"]


async def test_upstream_errors_exposed_when_configured() -> None:
    """With ``expose_upstream_errors`` the answer carries API Entreprise's error items."""
    app = FastAPI()
    install_exception_handlers(app, expose_upstream_errors=True)

    @app.get("/boom")
    async def boom() -> None:
        raise _api(ProviderUnavailableError, 504, retry_in=3)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as browser:
        response = await browser.get("/boom")
    assert 503 == response.status_code
    assert "3" == response.headers["retry-after"]
    upstream = response.json()["detail"]["upstream"]
    assert 504 == upstream["status"]
    assert "req-1" == upstream["request_id"]
    assert "secret detail" == upstream["errors"][0]["detail"]


async def test_unauthorized_token_is_502_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A token the API refuses gives the browser a 502 and the operator an error log."""
    caplog.set_level(logging.DEBUG)
    async with running([UL], token=OTHER_TOKEN) as h:
        response = await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}")
    assert 502 == response.status_code
    assert "upstream_refused" == response.json()["detail"]["error"]
    records = [r for r in caplog.records if r.name == "apientreprise_async.fastapi"]
    assert ["ERROR"] == [r.levelname for r in records]
    assert "token was refused (invalid)" in records[0].getMessage()
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert OTHER_TOKEN not in logged
    scan_for_token(h.responses, OTHER_TOKEN)


# -- proxy ------------------------------------------------------------------------------


async def test_proxy_answers_data_with_server_side_traceability() -> None:
    """A listed operation answers ``{"data": ...}``; traceability comes from ``tracing``."""
    async with running() as h:
        response = await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}", user="bob")
    assert 200 == response.status_code
    data = response.json()["data"]
    assert SIREN == data["siren"]
    assert (
        "ATELIERS MECANIQUES DU VAL DE LOIRE" == data["personne_morale_attributs"]["raison_sociale"]
    )
    assert ["data"] == list(response.json())
    assert "no-store" == response.headers["cache-control"]
    for upstream_only in ("ratelimit-limit", "x-request-id", "authorization"):
        assert upstream_only not in response.headers
    [sent] = h.upstream.sent
    assert {
        "recipient": RECIPIENT,
        "context": "Instruction par bob",
        "object": "dossier-77",
    } == dict(sent.url.params)
    assert 200 == h.emulator.requests[0].status


async def test_browser_traceability_parameters_are_refused() -> None:
    """``recipient``, ``context`` or ``object`` from the browser get 400; nothing is sent."""
    async with running() as h:
        url = f"/p/v4/insee/sirene/unites_legales/{SIREN}"
        for query in (
            {"object": "mine"},
            {"recipient": RECIPIENT},
            {"context": "x", "object": "y"},
        ):
            response = await h.get(url, params=query)
            assert 400 == response.status_code
            assert "traceability_from_browser" == response.json()["detail"]["error"]
    assert [] == h.upstream.sent


async def test_only_listed_operations_and_query_parameters() -> None:
    """Unlisted operations do not exist; unknown query parameters are not forwarded."""
    async with running([UL, RGE]) as h:
        unlisted = await h.get(f"/p/v4/insee/sirene/etablissements/{SIRET}")
        await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}", params={"fresh": "1", "x": "y"})
        await h.get(f"/p/v3/ademe/etablissements/{SIRET}/certification_rge", params={"limit": "3"})
    assert 404 == unlisted.status_code
    assert [
        "/v4/insee/sirene/unites_legales/832147656",
        f"/v3/ademe/etablissements/{SIRET}/certification_rge",
    ] == [r.url.path for r in h.upstream.sent]
    assert {"recipient", "context", "object"} == set(h.upstream.sent[0].url.params)
    assert "3" == h.upstream.sent[1].url.params["limit"]


async def test_local_and_upstream_errors_through_the_proxy() -> None:
    """A malformed SIREN is 422 before any call; an unknown one is the API's 404."""
    async with running() as h:
        invalid = await h.get("/p/v4/insee/sirene/unites_legales/123456789")
        assert [] == h.upstream.sent
        unknown = await h.get(f"/p/v4/insee/sirene/unites_legales/{UNKNOWN_SIREN}")
    assert 422 == invalid.status_code
    assert "siren" == invalid.json()["detail"]["parameter"]
    assert 404 == unknown.status_code
    assert {
        "detail": {
            "error": "not_found",
            "message": "No such entity at API Entreprise.",
            "codes": ["01003"],
        }
    } == unknown.json()


async def test_provider_outage_and_rate_limit_are_503_with_retry_after() -> None:
    """An upstream 504 and a throttled token both reach the browser as 503 + Retry-After."""
    emulator = Emulator()
    emulator.add_token(TOKEN, limits={"json_resources_entreprise": 2})
    outage = {"errors": [{"code": "01999", "title": "secret", "meta": {"retry_in": 5}}]}
    emulator.add_case(ETAB, {"siret": SIRET}, 504, outage)
    settings = ApiEntrepriseSettings(token=TOKEN, recipient=RECIPIENT, context="c", max_wait=0)
    async with running(emulator=emulator, settings=settings) as h:
        down = await h.get(f"/p/v4/insee/sirene/etablissements/{SIRET}")
        first = await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}")
        throttled = await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}")
    assert (503, "5") == (down.status_code, down.headers["retry-after"])
    assert "secret" not in down.text
    assert 200 == first.status_code
    assert 503 == throttled.status_code
    assert "rate_limited" == throttled.json()["detail"]["error"]
    assert 1 <= int(throttled.headers["retry-after"]) <= 2 * 60


async def test_field_filtering() -> None:
    """Dotted paths keep only what the browser needs; a callable may reshape ``data``."""
    operations = [
        ProxyOperation(UL, fields=["siren", "personne_morale_attributs.raison_sociale", "nope"]),
        ProxyOperation(ETAB, fields=lambda data: {"cp": data["adresse"]["code_postal"]}),
    ]
    async with running(operations) as h:
        ul = await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}")
        etab = await h.get(f"/p/v4/insee/sirene/etablissements/{SIRET}")
    assert {
        "siren": SIREN,
        "personne_morale_attributs": {"raison_sociale": "ATELIERS MECANIQUES DU VAL DE LOIRE"},
    } == ul.json()["data"]
    assert {"data": {"cp": "45000"}} == etab.json()


def test_field_paths_pick_through_lists() -> None:
    """A path crosses lists item by item; scalars where objects were expected are dropped."""
    select = ProxyOperation(UL, fields=["a.b", "a", "c.d", "e.f"]).selector()
    data = {"a": {"b": 1, "z": 2}, "c": [{"d": 1, "x": 0}, {"x": 1}], "e": "scalar", "g": 1}
    assert {"a": {"b": 1, "z": 2}, "c": [{"d": 1}, {}], "e": None} == select(data)


def test_router_configuration_errors() -> None:
    """Mistakes in the proxy's configuration fail when the router is built."""
    with pytest.raises(UnknownOperationError):
        make_proxy_router(["api_entreprise_v9_nope"], tracing=tracing)
    with pytest.raises(ValueError, match="twice"):
        make_proxy_router([UL, ProxyOperation(UL)], tracing=tracing)
    with pytest.raises(ValueError, match="siren"):
        make_proxy_router([ProxyOperation(UL, path="/entreprises/{id}")], tracing=tracing)
    with pytest.raises(ValueError, match="dotted path"):
        ProxyOperation(UL, fields=["a..b"])
    with pytest.raises(TypeError, match="not one string"):
        ProxyOperation(UL, fields="siren")


async def test_custom_route_path() -> None:
    """An operation can be exposed under a path of the app's choosing."""
    async with running([ProxyOperation(UL, path="/entreprises/{siren}")]) as h:
        response = await h.get(f"/p/entreprises/{SIREN}")
    assert SIREN == response.json()["data"]["siren"]


async def test_tracing_dependency_guards_the_proxy(caplog: pytest.LogCaptureFixture) -> None:
    """An unauthenticated browser gets the auth dependency's 401; a bad tracing value is 500."""

    def wrong(request: Request) -> dict[str, str]:
        return {"object": "x"}

    async with running() as h:
        anonymous = await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}", user=None)
        stranger = await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}", user="mallory")
    async with running(tracing_dep=wrong) as h2:
        misconfigured = await h2.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}")
    assert (401, 401) == (anonymous.status_code, stranger.status_code)
    assert [] == h.upstream.sent
    assert 500 == misconfigured.status_code
    assert [] == h2.upstream.sent
    assert "not Traceability" in caplog.text


async def test_per_user_rate_limit() -> None:
    """Each user gets ``calls`` per ``period``; the next is 429 with Retry-After, then room again."""
    limit = UserRateLimit(calls=2, period=0.3, key=current_user)
    async with running(rate_limit=limit) as h:
        url = f"/p/v4/insee/sirene/unites_legales/{SIREN}"
        statuses = [(await h.get(url, user="alice")).status_code for _ in range(3)]
        refused = h.responses[-1]
        other = await h.get(url, user="bob")
        await anyio.sleep(0.35)
        again = await h.get(url, user="alice")
    assert [200, 200, 429] == statuses
    assert "1" == refused.headers["retry-after"]
    assert "too_many_requests" == refused.json()["detail"]["error"]
    assert 200 == other.status_code
    assert 200 == again.status_code
    assert 4 == len(h.upstream.sent)


async def test_rate_limit_defaults_to_the_client_address() -> None:
    """Without a key dependency, the limit applies per client IP."""
    async with running(rate_limit=UserRateLimit(calls=1)) as h:
        url = f"/p/v4/insee/sirene/unites_legales/{SIREN}"
        first = await h.get(url, user="alice")
        second = await h.get(url, user="bob")  # same address, other user
    assert (200, 429) == (first.status_code, second.status_code)
    assert 55 <= int(second.headers["retry-after"]) <= 60


async def test_no_proxy_response_carries_the_token(caplog: pytest.LogCaptureFixture) -> None:
    """Across every kind of answer, no body, header or log line holds the token."""
    caplog.set_level(logging.DEBUG)
    emulator = Emulator()
    emulator.add_token(TOKEN, limits={"json_resources_entreprise": 3})
    emulator.add_case(ETAB, {"siret": "79420386900019"}, 502, {"errors": [{"code": "01000"}]})
    operations: list[str | ProxyOperation] = [UL, ProxyOperation(ETAB, fields=["siret"]), RGE]
    settings = ApiEntrepriseSettings(token=TOKEN, recipient=RECIPIENT, context="c", max_wait=0)
    async with running(
        operations,
        emulator=emulator,
        settings=settings,
        rate_limit=UserRateLimit(calls=5, key=current_user),
        expose_upstream_errors=True,
    ) as h:
        for url in (
            f"/p/v4/insee/sirene/unites_legales/{SIREN}",
            f"/p/v4/insee/sirene/etablissements/{SIRET}",
            "/p/v4/insee/sirene/etablissements/79420386900019",
            f"/p/v4/insee/sirene/unites_legales/{UNKNOWN_SIREN}",
            "/p/v4/insee/sirene/unites_legales/123456789",
            f"/p/v4/insee/sirene/unites_legales/{SIREN}?object=x",
            f"/p/v3/ademe/etablissements/{SIRET}/certification_rge?limit=2",
            f"/p/v4/insee/sirene/unites_legales/{SIREN}",
            f"/p/v4/insee/sirene/unites_legales/{SIREN}",
            "/p/v4/not/listed",
            "/openapi.json",
            "/docs",
        ):
            await h.get(url)
        await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}", user=None)
        await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}", user="bob")
    async with running([UL], token=OTHER_TOKEN) as h_bad:
        await h_bad.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}")
    statuses = {r.status_code for r in h.responses + h_bad.responses}
    assert {200, 400, 401, 404, 422, 429, 502, 503} <= statuses
    scan_for_token(h.responses, TOKEN)
    scan_for_token(h_bad.responses, OTHER_TOKEN)
    assert TOKEN not in caplog.text
    assert OTHER_TOKEN not in caplog.text


# -- the example app --------------------------------------------------------------------


async def test_example_app_runs_against_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """``examples/fastapi_app.py`` serves its proxy with the emulator when no token is set."""
    for name in ("API_ENTREPRISE_TOKEN", "API_ENTREPRISE_BASE_URL", "API_ENTREPRISE_ENV"):
        monkeypatch.delenv(name, raising=False)
    default_backend().clear()  # the example uses the process-wide governor
    path = ROOT / "examples" / "fastapi_app.py"
    spec = importlib.util.spec_from_file_location("fastapi_app_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app: FastAPI = module.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as browser:
            headers = {"Authorization": "Bearer demo-alice"}
            ok = await browser.get(f"/cases/dossier-42/entreprises/{SIREN}", headers=headers)
            forbidden = await browser.get(f"/cases/dossier-77/entreprises/{SIREN}", headers=headers)
            anonymous = await browser.get(f"/cases/dossier-42/entreprises/{SIREN}")
            fiche = await browser.get(f"/cases/dossier-42/fiches/{SIREN}", headers=headers)
            unknown = await browser.get(
                f"/cases/dossier-42/fiches/{UNKNOWN_SIREN}", headers=headers
            )
    assert 200 == ok.status_code, ok.text
    assert SIREN == ok.json()["data"]["siren"]
    assert "personne_physique_attributs" not in ok.json()["data"]
    assert "ATELIERS MECANIQUES DU VAL DE LOIRE" == fiche.json()["raison_sociale"]
    assert 404 == unknown.status_code
    assert (403, 401) == (forbidden.status_code, anonymous.status_code)
    assert "token" not in json.dumps(ok.json()).lower()


# -- startup, one error shape, OpenAPI ---------------------------------------------------


@pytest.mark.parametrize(
    ("unset", "value", "named"),
    [
        ("API_ENTREPRISE_TOKEN", None, "API_ENTREPRISE_TOKEN"),
        ("API_ENTREPRISE_RECIPIENT", None, "API_ENTREPRISE_RECIPIENT"),
        ("API_ENTREPRISE_CONTEXT", None, "API_ENTREPRISE_CONTEXT"),
        ("API_ENTREPRISE_RECIPIENT", "13002526500014", "recipient"),  # bad checksum
        ("API_ENTREPRISE_ENV", "moon", "environment"),
        ("API_ENTREPRISE_MAX_WAIT", "soon", "API_ENTREPRISE_MAX_WAIT"),
        ("API_ENTREPRISE_MAX_WAIT", "-1", "API_ENTREPRISE_MAX_WAIT"),
        ("API_ENTREPRISE_BASE_URL", "ftp://x", "base_url"),
    ],
)
async def test_startup_fails_on_any_missing_or_invalid_setting(
    monkeypatch: pytest.MonkeyPatch, unset: str, value: str | None, named: str
) -> None:
    """A misconfigured app does not start (instead of answering 500 to every request)."""
    monkeypatch.delenv("API_ENTREPRISE_BASE_URL", raising=False)
    monkeypatch.setenv("API_ENTREPRISE_TOKEN", TOKEN)
    monkeypatch.setenv("API_ENTREPRISE_RECIPIENT", RECIPIENT)
    monkeypatch.setenv("API_ENTREPRISE_CONTEXT", "tests")
    if value is None:
        monkeypatch.delenv(unset)
    else:
        monkeypatch.setenv(unset, value)
    app = FastAPI(lifespan=make_lifespan(governor=Governor(backend=InMemoryBackend())))
    with pytest.raises(RuntimeError, match=f"API Entreprise settings: .*{named}"):
        async with app.router.lifespan_context(app):
            raise AssertionError("started")


async def test_every_error_of_the_app_has_one_shape() -> None:
    """Library errors, HTTPException, unknown routes and validation: {"detail": {error, message}}."""
    async with running([UL]) as h:

        @h.app.get("/typed/{number}")
        async def typed(number: int) -> dict[str, int]:
            return {"number": number}

        @h.app.get("/bug")
        async def bug() -> None:
            raise RuntimeError("a bug of the app")

        answers = {
            "library 404": await h.get(f"/p/v4/insee/sirene/unites_legales/{UNKNOWN_SIREN}"),
            "local 422": await h.get("/p/v4/insee/sirene/unites_legales/12345678X"),
            "browser traceability": await h.get(
                f"/p/v4/insee/sirene/unites_legales/{SIREN}", params={"object": "x"}
            ),
            "auth dependency": await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}", user=None),
            "no route": await h.get("/nowhere"),
            "validation": await h.get("/typed/abc"),
        }
        transport = httpx.ASGITransport(app=h.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as browser:
            answers["bug"] = await browser.get("/bug")
    expected = {
        "library 404": (404, "not_found"),
        "local 422": (422, "invalid_parameter"),
        "browser traceability": (400, "traceability_from_browser"),
        "auth dependency": (401, "unauthorized"),
        "no route": (404, "not_found"),
        "validation": (422, "invalid_parameter"),
        "bug": (500, "internal_error"),
    }
    for name, response in answers.items():
        body = response.json()
        assert ["detail"] == list(body), name
        assert isinstance(body["detail"]["message"], str), name
        assert expected[name] == (response.status_code, body["detail"]["error"]), name
    assert "who are you?" == answers["auth dependency"].json()["detail"]["message"]
    assert ["01003"] == answers["library 404"].json()["detail"]["codes"]
    assert ["path", "number"] == answers["validation"].json()["detail"]["errors"][0]["loc"]


def test_openapi_declares_the_record_and_every_error_body() -> None:
    """Proxy routes declare 200 with the record's (filtered) schema, and 404/422/429/503 bodies."""
    app = FastAPI()
    install_exception_handlers(app)
    fields = ["siren", "personne_morale_attributs.raison_sociale"]
    app.include_router(
        make_proxy_router(
            [ProxyOperation(UL, fields=fields), ETAB],
            tracing=tracing,
            rate_limit=UserRateLimit(calls=2),
        ),
        prefix="/p",
    )
    schema = app.openapi()
    ul = schema["paths"]["/p/v4/insee/sirene/unites_legales/{siren}"]["get"]["responses"]

    def body(status: str) -> dict[str, Any]:
        return ul[status]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]

    data = body("200")["properties"]["data"]
    assert {"siren", "personne_morale_attributs"} == set(data["properties"])
    assert {"type": "string"} == data["properties"]["siren"]
    inner = data["properties"]["personne_morale_attributs"]["properties"]
    assert {"raison_sociale"} == set(inner)
    for status in ("404", "422", "429", "503"):
        detail = body(status)["properties"]["detail"]
        assert {"error", "message"} <= set(detail["required"]), status
    assert "Retry-After" in ul["429"]["headers"]
    assert "Retry-After" in ul["503"]["headers"]
    assert "HTTPValidationError" not in json.dumps(ul)  # FastAPI's 422 replaced by ours
    etab = schema["paths"]["/p/v4/insee/sirene/etablissements/{siret}"]["get"]["responses"]
    full = etab["200"]["content"]["application/json"]["schema"]["properties"]["data"]
    assert "Etablissement" == full["title"]
    assert {"siret", "adresse", "unite_legale"} <= set(full["properties"])


def conforms(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (the JSON Schema subset the proxy declares)."""
    if "anyOf" in schema:
        tries = [conforms(value, option, where) for option in schema["anyOf"]]
        return [] if any(not t for t in tries) else [f"{where}: no option fits {value!r}"]
    if "enum" in schema:
        return [] if value in schema["enum"] else [f"{where}: {value!r} not in enum"]
    kinds = {
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "null": type(None),
        "array": list,
        "object": dict,
    }
    kind = schema.get("type")
    if kind is not None and not isinstance(value, kinds[kind]):
        return [f"{where}: {value!r} is not {kind}"]
    problems: list[str] = []
    if kind == "object":
        missing = [k for k in schema.get("required", ()) if k not in value]
        problems += [f"{where}.{k}: required" for k in missing]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += conforms(value[key], sub, f"{where}.{key}")
    if kind == "array":
        for index, item in enumerate(value):
            problems += conforms(item, schema.get("items", {}), f"{where}[{index}]")
    return problems


async def test_answers_match_the_declared_schemas() -> None:
    """The 200 and error bodies the proxy sends fit what its OpenAPI schema declares."""
    async with running([UL, ETAB], rate_limit=UserRateLimit(calls=4)) as h:
        schema = h.app.openapi()
        answers = [
            (
                "/p/v4/insee/sirene/unites_legales/{siren}",
                await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}"),
            ),
            (
                "/p/v4/insee/sirene/etablissements/{siret}",
                await h.get(f"/p/v4/insee/sirene/etablissements/{SIRET}"),
            ),
            (
                "/p/v4/insee/sirene/unites_legales/{siren}",
                await h.get(f"/p/v4/insee/sirene/unites_legales/{UNKNOWN_SIREN}"),
            ),
            (
                "/p/v4/insee/sirene/unites_legales/{siren}",
                await h.get("/p/v4/insee/sirene/unites_legales/12345678X"),
            ),
        ]
        answers.append(  # the per-user limit: 4 calls, this is the fifth
            (
                "/p/v4/insee/sirene/unites_legales/{siren}",
                await h.get(f"/p/v4/insee/sirene/unites_legales/{SIREN}"),
            )
        )
    assert [200, 200, 404, 422, 429] == [response.status_code for _, response in answers]
    for route, response in answers:
        declared = schema["paths"][route]["get"]["responses"][str(response.status_code)]
        body_schema = declared["content"]["application/json"]["schema"]
        assert [] == conforms(response.json(), body_schema), (route, response.status_code)
        for header in declared.get("headers", {}):
            assert header.lower() in response.headers, (route, header)
