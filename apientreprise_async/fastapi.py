"""FastAPI integration: one shared client per app, error handlers, and a browser-safe proxy.

API Entreprise forbids CORS: a browser calling it directly would expose the
token. Browsers go through the back end instead, and this module makes that
back end short to write::

    app = FastAPI(lifespan=make_lifespan())
    install_exception_handlers(app)
    app.include_router(
        make_proxy_router(["api_entreprise_v4_insee_unites_legales"], tracing=my_tracing),
        prefix="/api-entreprise",
    )

- :func:`make_lifespan` opens one :class:`AsyncClient` at startup (settings
  from ``API_ENTREPRISE_*`` variables) and closes it at shutdown;
  :func:`get_client` (or the ``ApiEntrepriseClient`` annotation) hands it to routes.
- :func:`install_exception_handlers` turns library errors into HTTP answers
  that never carry the token nor, unless asked, the upstream error body; every
  error of the app then has one shape, ``{"detail": {"error": <slug>,
  "message": <text>, ...}}``, FastAPI's own errors included.
- :func:`make_proxy_router` exposes chosen operations to a front end; the
  traceability parameters come from a server-side dependency, never from the browser.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import collections
import datetime as dt
import http
import inspect
import logging
import math
import os
import re
import types
import typing
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

try:
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.middleware.cors import CORSMiddleware
    from starlette.responses import Response
    from starlette.types import ASGIApp
except ImportError as exc:
    raise ImportError(
        "apientreprise_async.fastapi needs FastAPI; install it with "
        "pip install 'apientreprise_async[fastapi]'"
    ) from exc

import anyio
import attrs
import httpx

from ._catalogue import Endpoint, get_endpoint
from ._client import AsyncClient
from ._errors import (
    ApiEntrepriseError,
    ApiError,
    AuthenticationError,
    AuthorizationError,
    ClientError,
    ConflictError,
    InvalidParameterError,
    MaintenanceWindowError,
    MissingParameterError,
    NotFoundError,
    ProviderUnavailableError,
    RateLimitError,
    ServiceUnreachable,
    TokenExpiredError,
    TransportError,
    UnavailableForLegalReasonsError,
    UnexpectedPayloadError,
    ValidationError,
    capped_wait,
)
from ._identifiers import validate_traceability

__all__ = [
    "STATE_KEY",
    "ApiEntrepriseClient",
    "ApiEntrepriseSettings",
    "ProxyOperation",
    "Traceability",
    "UserRateLimit",
    "error_response",
    "get_client",
    "install_exception_handlers",
    "make_lifespan",
    "make_proxy_router",
]

logger = logging.getLogger("apientreprise_async.fastapi")

#: Name of the shared client in the lifespan state and in ``app.state``.
STATE_KEY = "api_entreprise_client"

_TRACE_PARAMS = frozenset({"recipient", "context", "object"})
# Answers built from API Entreprise data hold protected information: no cache may keep them.
_SAFE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
# Retry-After defaults when the library could not tell how long to wait.
_DEFAULT_RETRY_AFTER = {"rate_limited": 60.0, "provider": 30.0, "unreachable": 60.0}


# -- settings and lifespan -------------------------------------------------------------


def _env_float(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() == "none":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{name}: {raw!r} is not a number of seconds (or none)")
    return value


@attrs.frozen
class ApiEntrepriseSettings:
    """What the app's shared client is built from; see :meth:`from_env`.

    ``max_wait`` defaults to 10 s rather than the client's "wait as long as
    needed": a browser should get a quick 503 with ``Retry-After`` instead of
    a request hanging while the governor waits for the next rate window.
    """

    token: str | None = attrs.field(default=None, repr=False)
    environment: str | None = None
    base_url: str | None = None
    recipient: str | None = None
    context: str | None = None
    max_wait: float | None = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiEntrepriseSettings:
        """Read ``API_ENTREPRISE_TOKEN``, ``_ENV``, ``_BASE_URL``, ``_RECIPIENT``,
        ``_CONTEXT`` and ``_MAX_WAIT`` (seconds, or ``none``).

        Called at startup, never at import time.
        """
        env = os.environ if environ is None else environ
        return cls(
            token=env.get("API_ENTREPRISE_TOKEN") or None,
            environment=env.get("API_ENTREPRISE_ENV") or None,
            base_url=env.get("API_ENTREPRISE_BASE_URL") or None,
            recipient=env.get("API_ENTREPRISE_RECIPIENT") or None,
            context=env.get("API_ENTREPRISE_CONTEXT") or None,
            max_wait=_env_float(env, "API_ENTREPRISE_MAX_WAIT", 10.0),
        )

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`AsyncClient` (unset values left to its defaults)."""
        kwargs: dict[str, Any] = {"max_wait": self.max_wait}
        for name in ("token", "environment", "base_url", "recipient", "context"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs


def make_lifespan(
    settings: ApiEntrepriseSettings | None = None, /, **client_kwargs: Any
) -> Callable[[FastAPI], AbstractAsyncContextManager[Mapping[str, Any]]]:
    """A FastAPI lifespan owning one :class:`AsyncClient` for the whole app.

    The client is built at startup from ``settings`` (default: read from the
    environment then) updated with ``client_kwargs`` (``transport=``,
    ``governor=``...), and closed at shutdown. It is put in the lifespan state
    and in ``app.state`` under :data:`STATE_KEY`. Startup fails when a
    wildcard CORS middleware is installed on the app, and when a setting is
    missing or invalid (token, environment, base URL, the ``recipient`` and
    ``context`` every proxied call needs): a misconfigured app stops at once
    rather than answering 500 to every request.

    To combine with your own lifespan::

        @asynccontextmanager
        async def lifespan(app):
            async with make_lifespan()(app) as state:
                yield {**state, "db": ...}
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
        _refuse_wildcard_cors(app)
        client = await _startup_client(settings, client_kwargs)
        async with client:
            setattr(app.state, STATE_KEY, client)
            try:
                yield {STATE_KEY: client}
            finally:
                setattr(app.state, STATE_KEY, None)

    return lifespan


async def _startup_client(
    settings: ApiEntrepriseSettings | None, client_kwargs: Mapping[str, Any]
) -> AsyncClient:
    """The app's client, or a :class:`RuntimeError` naming the setting to fix."""
    try:
        resolved = settings if settings is not None else ApiEntrepriseSettings.from_env()
        client = AsyncClient(**(resolved.client_kwargs() | dict(client_kwargs)))
    except InvalidParameterError as exc:
        raise RuntimeError(f"API Entreprise settings: {_setting_fix(exc)}") from None
    except ValueError as exc:
        raise RuntimeError(f"API Entreprise settings: {exc}") from None
    try:
        # The object is per call (the tracing dependency); the rest must be right now.
        validate_traceability(client.settings.recipient, client.settings.context, "startup")
    except InvalidParameterError as exc:
        await client.aclose()
        raise RuntimeError(f"API Entreprise settings: {_setting_fix(exc)}") from None
    return client


def _setting_fix(exc: InvalidParameterError) -> str:
    name = exc.parameter
    what = f"{name} is missing" if isinstance(exc, MissingParameterError) else str(exc)
    if name == "token":
        what = "no token"
    return f"{what}: set API_ENTREPRISE_{name.upper()} (or ApiEntrepriseSettings({name}=...))"


def get_client(request: Request) -> AsyncClient:
    """FastAPI dependency: the app's shared client, opened by :func:`make_lifespan`.

    Raises:
        RuntimeError: the app was not given ``lifespan=make_lifespan(...)``.
    """
    client = getattr(request.state, STATE_KEY, None) or getattr(request.app.state, STATE_KEY, None)
    if not isinstance(client, AsyncClient):
        raise RuntimeError(
            "no API Entreprise client: create the app with FastAPI(lifespan=make_lifespan())"
        )
    return client


#: Route parameter annotation giving the shared client: ``client: ApiEntrepriseClient``.
ApiEntrepriseClient = Annotated[AsyncClient, Depends(get_client)]


# -- CORS ------------------------------------------------------------------------------


# Origins no deployment lists: a pattern accepting one of them accepts strangers.
# "null" is what sandboxed iframes, data: URLs and some redirects send: any site
# can produce it, so allowing it (credentials or not) is a wildcard.
_STRANGERS = (
    "null",
    "https://attacker.invalid",
    "http://attacker.invalid",
    "https://attacker.invalid:8443",
)
_ANY_CHAR = "\x00"  # an unescaped "." of a pattern
_ANY_TEXT = "\x01"  # ".*" or ".+" of a pattern


def _render(pattern: str) -> str | None:
    """A pattern made of literals and ``.``/``.*``/``.+`` as text with markers; else ``None``."""
    text = pattern.removeprefix("^").removesuffix("$")
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and not text[i + 1].isalnum():
            out.append(text[i + 1])
            i += 2
        elif char == "." and text[i + 1 : i + 2] in ("*", "+"):
            out.append(_ANY_TEXT)
            i += 2
        elif char == ".":
            out.append(_ANY_CHAR)
            i += 1
        elif char in "[](){}*+?|^$\\":
            return None
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _probes(pattern: str, listed: Sequence[str]) -> list[str]:
    """Origins a careless pattern lets in: strangers, and near misses of the intended ones."""
    probes = list(_STRANGERS)
    rendered = _render(pattern)
    intended = [*listed]
    if rendered is not None:
        intended.append(rendered.replace(_ANY_CHAR, ".").replace(_ANY_TEXT, "app"))
        # An unescaped dot: "https://app.example.fr" also lets in "https://appxexample.fr".
        for index, char in enumerate(rendered):
            if char == _ANY_CHAR:
                probe = rendered[:index] + "x" + rendered[index + 1 :]
                probes.append(probe.replace(_ANY_CHAR, ".").replace(_ANY_TEXT, "app"))
        # ".*" inside a label ("https://.*example.fr"): anyone's "attackerexample.fr".
        # A whole leading label ("https://.*\\.example\\.fr") only admits subdomains.
        for index, char in enumerate(rendered):
            if char == _ANY_TEXT and not (
                rendered[index - 1 : index] == "/" and rendered[index + 1 : index + 2] == "."
            ):
                probe = rendered[:index] + "attacker" + rendered[index + 1 :]
                probes.append(probe.replace(_ANY_CHAR, ".").replace(_ANY_TEXT, "app"))
    for origin in intended:
        probes += [origin + ".attacker.invalid", origin + "attacker.invalid"]
    return [probe for probe in probes if probe not in listed]


def _wildcard_cors(app: ASGIApp) -> bool:
    """Tell whether a CORS middleware on ``app`` would let an origin nobody listed read answers."""
    for middleware in getattr(app, "user_middleware", ()):
        cls = getattr(middleware, "cls", None)
        if not (isinstance(cls, type) and issubclass(cls, CORSMiddleware)):
            continue
        kwargs = getattr(middleware, "kwargs", {})
        listed = [str(origin) for origin in kwargs.get("allow_origins", ())]
        if "*" in listed or any(origin.strip().lower() == "null" for origin in listed):
            return True
        regex = kwargs.get("allow_origin_regex")
        if regex:
            try:
                compiled = re.compile(regex)
            except re.error:
                return True  # starlette would fail later; do not start on a guess
            # A pattern accepting an origin nobody would list is as good as a wildcard.
            if any(compiled.fullmatch(probe) for probe in _probes(regex, listed)):
                return True
    return False


def _refuse_wildcard_cors(app: ASGIApp) -> None:
    if _wildcard_cors(app):
        raise RuntimeError(
            "a CORS middleware allows every origin, 'null' (any sandboxed page) or origins "
            "its pattern matches without being listed; API Entreprise data must only reach "
            "your own front end: list its origin, e.g. "
            "allow_origins=['https://app.example.gouv.fr'], or escape the dots of "
            "allow_origin_regex"
        )


# -- errors ----------------------------------------------------------------------------


def _retry_after(seconds: float | None, default: float) -> str:
    # The cap the governor applies to the server's hint: a browser never hears
    # of a longer wait than the library itself would keep.
    value = capped_wait(default if seconds is None else seconds)
    return str(max(1, math.ceil(value)))


@attrs.frozen
class _Answer:
    """An HTTP error answer, before it becomes a response."""

    status: int
    error: str
    detail: str
    retry_after: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        out = dict(_SAFE_HEADERS)
        if headers:
            out.update(headers)
        if self.retry_after is not None:
            out["Retry-After"] = self.retry_after
        body = {"detail": {"error": self.error, "message": self.detail, **self.extra}}
        return JSONResponse(body, self.status, out)


def _server_fault(exc: ApiEntrepriseError, what: str) -> None:
    # The browser only learns that the server is misconfigured; the operator gets the reason.
    logger.error("API Entreprise: %s: %s", what, exc, extra={"error_type": type(exc).__name__})


def error_response(
    exc: ApiEntrepriseError, *, expose_upstream_errors: bool = False
) -> JSONResponse:
    """The HTTP answer for a library error, safe to send to a browser.

    The body follows FastAPI's convention, ``{"detail": {...}}``, with inside
    ``error`` (a fixed slug), ``message`` (a fixed text), ``codes`` (API
    Entreprise's error codes, when it answered) and, for identifier errors,
    ``parameter``. With ``expose_upstream_errors`` an answer from API
    Entreprise adds ``upstream`` (its status, ``errors`` list and request id).
    The token is never part of it: the library never puts it in errors.

    ======================================  ======================================
    Library error                           Answer
    ======================================  ======================================
    invalid identifier (refused locally)    422
    missing or invalid traceability         500, logged (server misconfiguration)
    ``NotFoundError``                       404
    ``UnavailableForLegalReasonsError``     451
    ``ValidationError`` (upstream 422)      422
    ``RateLimitError``, ``ConflictError``   503 with ``Retry-After``
    ``ProviderUnavailableError``            503 with ``Retry-After``
    ``MaintenanceWindowError``              503 with ``Retry-After``
    ``ServiceUnreachable``                  503 with ``Retry-After``, logged
    ``AuthenticationError``, expired token  502, logged
    ``AuthorizationError``, other 4xx       502, logged
    ``ProviderError``, other 5xx            502
    ``TransportError``                      504 on a timeout, else 502
    ``UnexpectedPayloadError``              502 (a lenient client returns the data)
    anything else                           500, logged
    ======================================  ======================================
    """
    answer = _classify(exc)
    if isinstance(exc, ApiError) and exc.errors:
        codes = [str(e["code"]) for e in exc.errors if isinstance(e, dict) and e.get("code")]
        answer = attrs.evolve(answer, extra={**answer.extra, "codes": codes})
    if expose_upstream_errors and isinstance(exc, ApiError) and exc.http_status is not None:
        upstream = {"status": exc.http_status, "errors": exc.errors, "request_id": exc.request_id}
        answer = attrs.evolve(answer, extra={**answer.extra, "upstream": upstream})
    return answer.response()


def _classify(exc: ApiEntrepriseError) -> _Answer:
    if isinstance(exc, InvalidParameterError):
        if exc.parameter in _TRACE_PARAMS or exc.parameter == "token":
            _server_fault(exc, "traceability or token settings are wrong")
            return _MISCONFIGURED
        return _Answer(422, "invalid_parameter", str(exc), extra={"parameter": exc.parameter})
    if isinstance(exc, NotFoundError):
        return _Answer(404, "not_found", "No such entity at API Entreprise.")
    if isinstance(exc, UnavailableForLegalReasonsError):
        return _Answer(451, "not_diffusible", "This entity's data is not diffusible.")
    if isinstance(exc, ValidationError):
        return _Answer(422, "invalid_parameter", "API Entreprise refused a parameter.")
    if isinstance(exc, RateLimitError):
        wait = _retry_after(exc.retry_after, _DEFAULT_RETRY_AFTER["rate_limited"])
        return _Answer(503, "rate_limited", "Too many calls to API Entreprise.", wait)
    if isinstance(exc, ConflictError):
        wait = _retry_after(exc.retry_in, 1.0)
        return _Answer(503, "in_progress", "The same request is in progress.", wait)
    if isinstance(exc, ProviderUnavailableError):
        wait = _retry_after(exc.retry_in, _DEFAULT_RETRY_AFTER["provider"])
        return _Answer(503, "provider_unavailable", "The data provider is unavailable.", wait)
    if isinstance(exc, MaintenanceWindowError):
        wait = _retry_after(exc.ends_in, _DEFAULT_RETRY_AFTER["provider"])
        return _Answer(503, "maintenance", "The data provider is in maintenance.", wait)
    if isinstance(exc, ServiceUnreachable):
        _server_fault(exc, "API Entreprise does not answer")
        wait = _retry_after(None, _DEFAULT_RETRY_AFTER["unreachable"])
        return _Answer(503, "unreachable", "API Entreprise does not answer.", wait)
    if isinstance(exc, AuthenticationError | TokenExpiredError):
        reason = exc.reason if isinstance(exc, AuthenticationError) else "expired"
        _server_fault(exc, f"the token was refused ({reason}); renew API_ENTREPRISE_TOKEN")
        return _REFUSED
    if isinstance(exc, AuthorizationError):
        _server_fault(exc, "the token lacks the privilege for this operation")
        return _REFUSED
    if isinstance(exc, ClientError):
        _server_fault(exc, "API Entreprise refused the request")
        return _Answer(502, "upstream_error", "API Entreprise refused the request.")
    if isinstance(exc, ApiError):  # ProviderError and every other 5xx
        return _Answer(502, "upstream_error", "API Entreprise or its provider failed.")
    if isinstance(exc, UnexpectedPayloadError):  # not JSON, or a strict client's misfit
        return _Answer(502, "upstream_error", "API Entreprise sent an answer we cannot read.")
    if isinstance(exc, TransportError):
        if isinstance(exc.__cause__, httpx.TimeoutException):
            return _Answer(504, "upstream_timeout", "API Entreprise did not answer in time.")
        return _Answer(502, "upstream_error", "API Entreprise gave no usable answer.")
    _server_fault(exc, "unexpected error")
    return _Answer(500, "internal_error", "Internal error.")


_MISCONFIGURED = _Answer(500, "server_misconfigured", "The server is misconfigured.")
_REFUSED = _Answer(502, "upstream_refused", "API Entreprise refused this server's access.")


def install_exception_handlers(
    app: FastAPI, *, expose_upstream_errors: bool = False, http_errors: bool = True
) -> None:
    """Answer every :class:`ApiEntrepriseError` raised in a route with :func:`error_response`.

    With ``http_errors`` (the default), FastAPI's own errors get the same
    shape, so a front end reads one kind of body: an ``HTTPException`` (your
    authentication's 401, an unknown route's 404) answers
    ``{"detail": {"error": <slug of the status>, "message": <its detail>}}``
    with its headers, a request validation error answers 422 with ``error``
    ``invalid_parameter`` and FastAPI's list under ``errors``, and an unexpected
    exception answers 500 ``internal_error`` (the server still logs it).
    """

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiEntrepriseError)
        return error_response(exc, expose_upstream_errors=expose_upstream_errors)

    app.add_exception_handler(ApiEntrepriseError, handler)
    if http_errors:
        app.add_exception_handler(StarletteHTTPException, _http_exception)
        app.add_exception_handler(RequestValidationError, _validation_error)
        # Starlette still re-raises after this answer, so the server logs the traceback.
        app.add_exception_handler(Exception, _internal_error)


def _slug(status: int) -> str:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        return f"http_{status}"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail: Any = exc.detail  # FastAPI allows any JSON value here
    if isinstance(detail, Mapping) and "error" in detail:
        inner = dict(detail)  # already in this shape (raised by hand)
        answer = _Answer(exc.status_code, str(inner.pop("error")), str(inner.pop("message", "")))
        answer = attrs.evolve(answer, extra=inner)
    elif isinstance(detail, str):
        answer = _Answer(exc.status_code, _slug(exc.status_code), detail)
    else:
        phrase = _slug(exc.status_code).replace("_", " ")
        extra = {"info": jsonable_encoder(detail)}
        answer = _Answer(exc.status_code, _slug(exc.status_code), phrase, extra=extra)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return answer.response(exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _Answer(500, "internal_error", "Internal error.").response()


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors())
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ())) or "request"
    message = f"{where}: {first.get('msg', 'invalid')}"
    return _Answer(422, "invalid_parameter", message, extra={"errors": errors}).response()


# -- proxy -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Traceability:
    """The traceability parameters of one proxied call, decided by the server.

    ``recipient`` and ``context`` fall back to the client's defaults
    (``API_ENTREPRISE_RECIPIENT`` / ``API_ENTREPRISE_CONTEXT``) when ``None``.
    """

    object: str
    recipient: str | None = None
    context: str | None = None


def _client_host(request: Request) -> str:
    """Default rate-limit key: the caller's IP address."""
    return request.client.host if request.client else "unknown"


@attrs.frozen
class UserRateLimit:
    """At most ``calls`` proxied calls per ``period`` seconds for each key.

    ``key`` is a FastAPI dependency returning the key, typically the
    authenticated user's id; it defaults to the caller's IP address. The
    window slides: any ``period``-long span holds at most ``calls`` calls.
    """

    calls: int = attrs.field(validator=attrs.validators.ge(1))
    period: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    key: Callable[..., Any] = _client_host


class _SlidingLog:
    """Send times per key; memory is bounded by the calls of the last period."""

    def __init__(self, limit: UserRateLimit) -> None:
        self.calls = limit.calls
        self.period = limit.period
        self._log: dict[str, collections.deque[float]] = {}
        self._next_sweep = -math.inf

    def admit(self, key: str) -> float | None:
        """Record a call for ``key``; return ``None``, or the seconds to wait when refused."""
        now = anyio.current_time()
        if now >= self._next_sweep:
            # Forget idle keys at most once a period, so a crowd of users cannot grow the map.
            self._next_sweep = now + self.period
            for k in [k for k, log in self._log.items() if log[-1] <= now - self.period]:
                del self._log[k]
        log = self._log.setdefault(key, collections.deque())
        while log and log[0] <= now - self.period:
            log.popleft()
        if len(log) >= self.calls:
            return log[0] + self.period - now
        log.append(now)
        return None


def _compile_fields(fields: Sequence[str]) -> dict[str, Any]:
    """Turn dotted paths into a tree; a leaf (``None``) keeps the whole value."""
    tree: dict[str, Any] = {}
    for path in fields:
        parts = path.split(".")
        if not all(parts):
            raise ValueError(f"fields: {path!r} is not a dotted path")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is None:  # an ancestor is already kept whole
                break
            node = child
        else:
            node[parts[-1]] = None
    return tree


def _pick(value: Any, tree: dict[str, Any] | None) -> Any:
    if tree is None:
        return value
    if isinstance(value, list):
        return [_pick(item, tree) for item in value]
    if isinstance(value, dict):
        return {name: _pick(value[name], sub) for name, sub in tree.items() if name in value}
    # A scalar where an object was expected: send nothing rather than something unlisted.
    return None


def _as_tuple(value: Sequence[str] | Callable[[Any], Any] | None) -> Any:
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        raise TypeError("fields: give a sequence of dotted paths, not one string")
    return tuple(value)


def _check_fields(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, tuple):
        _compile_fields(value)  # raises on a malformed path, at startup rather than per call


@attrs.frozen
class ProxyOperation:
    """One operation exposed by :func:`make_proxy_router`.

    Args:
        operation_id: the catalogue's ``x-operationId``.
        fields: what the browser receives from ``data``: dotted paths to keep
            (``("siren", "personne_morale_attributs.raison_sociale")``; lists
            are filtered item by item), or a callable given ``data``. ``None``
            sends all of ``data``.
        path: the route path, default the API's own (``/v3/insee/sirene/unites_legales/{siren}``);
            it must use the same ``{parameters}``.
    """

    operation_id: str
    fields: Sequence[str] | Callable[[Any], Any] | None = attrs.field(
        default=None, converter=_as_tuple, validator=_check_fields
    )
    path: str | None = None

    def selector(self) -> Callable[[Any], Any]:
        """The function applied to each answer's ``data``."""
        fields = self.fields
        if fields is None:
            return lambda data: data
        if callable(fields):
            return fields
        tree = _compile_fields(fields)
        return lambda data: _pick(data, tree)


# -- OpenAPI ---------------------------------------------------------------------------

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "ApiEntrepriseErrorAnswer",
    "required": ["detail"],
    "properties": {
        "detail": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "description": "a fixed slug, e.g. not_found"},
                "message": {"type": "string"},
                "codes": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "API Entreprise's error codes, when it answered",
                },
                "parameter": {"type": "string", "description": "the identifier refused"},
                "upstream": {
                    "type": "object",
                    "description": "API Entreprise's answer (expose_upstream_errors only)",
                },
            },
        }
    },
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    dt.date: {"type": "string", "format": "date"},
    dt.datetime: {"type": "string", "format": "date-time"},
}


def _json_schema(tp: Any, seen: frozenset[type] = frozenset()) -> dict[str, Any]:
    """JSON Schema of a record type, as the proxy sends it (its JSON, not Python objects)."""
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    if tp is None or tp is type(None):
        return {"type": "null"}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [_json_schema(a, seen) for a in args]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (tuple, list, collections.abc.Sequence):
        return {"type": "array", "items": _json_schema(args[0], seen) if args else {}}
    if origin in (dict, collections.abc.Mapping):
        return {"type": "object"}
    if isinstance(tp, type) and attrs.has(tp):
        if tp in seen:  # a record holding itself: stop describing there
            return {"type": "object", "title": tp.__name__}
        hints = typing.get_type_hints(tp)
        properties = {
            field.name: _json_schema(hints.get(field.name, Any), seen | {tp})
            for field in attrs.fields(tp)
            if not field.name.startswith("_") and field.name != "extra"
        }
        return {
            "type": "object",
            "title": tp.__name__,
            "properties": properties,
            "additionalProperties": True,  # a newer API version may add fields
        }
    return {}


def _prune(schema: dict[str, Any], tree: dict[str, Any] | None) -> dict[str, Any]:
    """The part of ``schema`` the ``fields`` tree keeps (as :func:`_pick` does to data)."""
    if tree is None:
        return schema
    if "anyOf" in schema:
        kept = [_prune(s, tree) for s in schema["anyOf"] if s.get("type") != "null"]
        return kept[0] if len(kept) == 1 else {"anyOf": kept}
    if schema.get("type") == "array":
        return {"type": "array", "items": _prune(schema.get("items", {}), tree)}
    properties = schema.get("properties", {})
    return {
        "type": "object",
        "properties": {name: _prune(properties.get(name, {}), sub) for name, sub in tree.items()},
    }


def _proxy_responses(
    operation: ProxyOperation, endpoint: Endpoint
) -> dict[int | str, dict[str, Any]]:
    """What a proxy route answers, for the OpenAPI schema: the data and every error body."""
    data = _json_schema(endpoint.record) if endpoint.record is not None else {}
    if isinstance(operation.fields, tuple):
        data = _prune(data, _compile_fields(operation.fields))
    elif callable(operation.fields):
        data = {}  # whatever the callable makes of the record
    ok = {"type": "object", "required": ["data"], "properties": {"data": data}}
    error = {"application/json": {"schema": _ERROR_SCHEMA}}

    def answer(description: str, **more: Any) -> dict[str, Any]:
        return {"description": description, "content": error, **more}

    return {
        200: {
            "description": "the record's data, filtered by the operation's fields",
            "content": {"application/json": {"schema": ok}},
        },
        400: answer("recipient, context or object sent by the browser"),
        404: answer("no such entity at API Entreprise (error not_found)"),
        422: answer("a malformed identifier, refused before any call (invalid_parameter)"),
        429: answer(
            "too many requests from this user (with a per-user rate limit)", headers=_RETRY_AFTER
        ),
        451: answer("the entity's data is not diffusible"),
        502: answer("API Entreprise refused this server's access, or failed"),
        503: answer(
            "rate limited, provider unavailable, maintenance or API Entreprise silent",
            headers=_RETRY_AFTER,
        ),
        504: answer("API Entreprise did not answer in time"),
    }


_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def _route_path(operation: ProxyOperation, endpoint: Endpoint) -> str:
    path = operation.path or endpoint.path
    expected = {p.name for p in endpoint.path_params}
    if set(_PATH_PARAM.findall(path)) != expected:
        raise ValueError(
            f"{operation.operation_id}: path {path!r} must use exactly the parameters "
            f"{sorted(expected)}"
        )
    return path


def make_proxy_router(
    operations: Sequence[str | ProxyOperation],
    *,
    tracing: Callable[..., Any],
    rate_limit: UserRateLimit | None = None,
    expose_upstream_errors: bool = False,
    tags: Sequence[str] = ("api-entreprise",),
) -> APIRouter:
    """A router exposing only ``operations`` to a browser, as ``GET`` routes.

    Each route calls the operation with the app's shared client
    (:func:`get_client`) and answers ``{"data": ...}``, filtered by the
    operation's ``fields``; errors are answered by :func:`error_response`.

    Args:
        operations: operation ids or :class:`ProxyOperation` entries.
        tracing: a FastAPI dependency returning the call's :class:`Traceability`,
            e.g. from the authenticated user and the case they handle; it may
            depend on your auth dependencies and raise ``HTTPException``.
            ``recipient``, ``context`` or ``object`` in the browser's query are
            refused with 400: the browser never decides them.
        rate_limit: an optional per-user limit, answered with 429 and ``Retry-After``.
        expose_upstream_errors: add API Entreprise's error items to error answers.
        tags: OpenAPI tags of the routes.

    Raises:
        UnknownOperationError: an operation is not in the catalogue.
        ValueError: an operation is listed twice, or a custom path is wrong.
    """
    router = APIRouter(tags=list(tags))
    limiter = _SlidingLog(rate_limit) if rate_limit is not None else None
    key = rate_limit.key if rate_limit is not None else None
    seen: set[str] = set()
    for item in operations:
        operation = item if isinstance(item, ProxyOperation) else ProxyOperation(item)
        endpoint = get_endpoint(operation.operation_id)
        if operation.operation_id in seen:
            raise ValueError(f"{operation.operation_id} is listed twice")
        seen.add(operation.operation_id)
        router.add_api_route(
            _route_path(operation, endpoint),
            _proxy_route(operation, endpoint, tracing, limiter, key, expose_upstream_errors),
            methods=["GET"],
            name=operation.operation_id,
            summary=f"API Entreprise {operation.operation_id}",
            response_model=None,
            response_class=JSONResponse,
            responses=_proxy_responses(operation, endpoint),
        )
    return router


def _proxy_route(
    operation: ProxyOperation,
    endpoint: Endpoint,
    tracing: Callable[..., Any],
    limiter: _SlidingLog | None,
    key: Callable[..., Any] | None,
    expose: bool,
) -> Callable[..., Any]:
    """Build the route function; its signature is made for FastAPI's dependency injection."""
    path_names = [p.name for p in endpoint.path_params]
    query_names = [q.name for q in endpoint.query_params]
    select = operation.selector()

    async def route(
        request: Request,
        *,
        proxy_client: AsyncClient,
        proxy_trace: Any,
        proxy_rate_key: Any = None,
        **path_values: str,
    ) -> Response:
        refused = sorted(_TRACE_PARAMS & set(request.query_params))
        if refused:
            detail = f"{', '.join(refused)}: set by the server, not by the browser."
            return _Answer(400, "traceability_from_browser", detail).response()
        if _wildcard_cors(request.app):
            logger.error("API Entreprise proxy disabled: a CORS middleware allows every origin")
            return _MISCONFIGURED.response()
        if not isinstance(proxy_trace, Traceability):
            logger.error(
                "API Entreprise proxy: the tracing dependency returned %s, not Traceability",
                type(proxy_trace).__name__,
            )
            return _MISCONFIGURED.response()
        if limiter is not None:
            wait = limiter.admit(str(proxy_rate_key))
            if wait is not None:
                retry = _retry_after(wait, 1.0)
                return _Answer(429, "too_many_requests", "Too many requests.", retry).response()
        params: dict[str, Any] = dict(path_values)
        params.update(
            (n, request.query_params[n]) for n in query_names if n in request.query_params
        )
        try:
            answer = await proxy_client.call(
                operation.operation_id,
                recipient=proxy_trace.recipient,
                context=proxy_trace.context,
                object=proxy_trace.object,
                **params,
            )
        except ApiEntrepriseError as exc:
            return error_response(exc, expose_upstream_errors=expose)
        # The raw JSON, not ``answer.data``: typed records are for Python, the browser wants JSON.
        raw = answer.raw if isinstance(answer.raw, dict) else {}
        return JSONResponse({"data": select(raw.get("data"))}, headers=_SAFE_HEADERS)

    kw = inspect.Parameter.KEYWORD_ONLY
    signature = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        inspect.Parameter("proxy_client", kw, annotation=AsyncClient, default=Depends(get_client)),
        inspect.Parameter("proxy_trace", kw, annotation=Any, default=Depends(tracing)),
    ]
    if key is not None:
        signature.append(
            inspect.Parameter("proxy_rate_key", kw, annotation=Any, default=Depends(key))
        )
    for name in path_names:
        if name in {"request", "proxy_client", "proxy_trace", "proxy_rate_key"}:
            raise ValueError(f"{endpoint.operation_id}: path parameter {name!r} is reserved")
        signature.append(inspect.Parameter(name, kw, annotation=str))
    route.__name__ = operation.operation_id
    # FastAPI reads the parameters from the signature: the dependencies and this operation's path.
    setattr(route, "__signature__", inspect.Signature(signature, return_annotation=Response))  # noqa: B010
    return route
